"""A small adversarial game to watch (course notebook 09): the heads against the TDD, on frozen features.

Training the whole network for the hundreds of steps a GAN needs to show its dynamics takes hours
on a CPU. But the adversarial term only reaches the network through the two heads' outputs
(``ê`` and the class probabilities), so the game can be isolated: run the trained network once
(:func:`~mtilib.train.inference.lesion_slice_outputs`), keep what its encoder and TIM give the
heads on every lesion slice (region descriptors, pooled summary), and train fresh copies of the
regression and classification heads (the *generator*) against a discriminator, exactly as
:func:`~mtilib.train.train` does: the same supervised losses, the same instance noise and label
smoothing (``cfg.adversarial``), the same schedule of λ_adv (:func:`adversarial_weight`, with
``steps_per_epoch`` steps making one "epoch") and the very same adversarial term and
discriminator update (``generator_adversarial_term``, ``discriminator_step``). A few hundred
steps take seconds, so D/G dynamics and failure modes can be seen step by step. What the game
leaves out: the adversarial gradient cannot reach the encoder, and the features do not change
(no augmentation, no drift).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from mtilib.models import build_discriminator
from mtilib.runtime import optimizer_kernel
from mtilib.train.config import TrainConfig
from mtilib.train.gan import adversarial_weight, discriminator_step, generator_adversarial_term, smooth_one_hot

#: Keys of :func:`lesion_slice_outputs` that the game needs.
GAME_KEYS = ("descriptors", "pooled", "measured_enhancement", "times", "class_id", "enhancement")


def _reset(module: torch.nn.Module) -> None:
    """Fresh weights: every layer's own initialisation, then the module's (a residual regression
    head zeroes its correction again)."""
    for m in module.modules():
        if hasattr(m, "reset_parameters") and m is not module:
            m.reset_parameters()
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()


def _heads_forward(reg_head, cls_head, rows: dict):
    d, p = rows["descriptors"], rows["pooled"]
    enhancement, _ = reg_head(d, p, rows["measured_enhancement"])
    return enhancement, cls_head(p, d, enhancement)


@torch.no_grad()
def _evaluate(reg_head, cls_head, disc, rows: dict, cfg: TrainConfig) -> dict:
    reg_head.eval()
    cls_head.eval()
    enhancement, logits = _heads_forward(reg_head, cls_head, rows)
    probs = torch.softmax(logits, dim=1)
    out = {
        "eval_enhancement_mae": float((enhancement - rows["enhancement"]).abs().mean()),
        "eval_accuracy": float((logits.argmax(1) == rows["class_id"]).float().mean()),
        "eval_ce": float(F.cross_entropy(logits, rows["class_id"])),
        "eval_confidence": float(probs.max(1).values.mean()),
    }
    if disc is not None:
        disc.eval()
        context = rows["descriptors"].flatten(1)
        real_p = smooth_one_hot(rows["class_id"], probs.shape[1], cfg.adversarial.real_label_smoothing)
        out["eval_score_real"] = float(disc(rows["enhancement"], real_p, rows["times"], context).mean())
        out["eval_score_fake"] = float(disc(enhancement, probs, rows["times"], context).mean())
        disc.train()
    reg_head.train()
    cls_head.train()
    return out


def play_heads_game(model: torch.nn.Module, train_rows: dict, eval_rows: dict, cfg: TrainConfig,
                    steps: int = 300, steps_per_epoch: int = 20, batch_size: int = 32, log_every: int = 10,
                    disc: torch.nn.Module | None = None, d_steps: int = 1, fresh_heads: bool = True,
                    seed: int = 0, threads: int | None = 1) -> list[dict]:
    """Train fresh copies of ``model``'s regression and classification heads against a TDD.

    ``train_rows`` / ``eval_rows``: dicts from :func:`~mtilib.train.inference.lesion_slice_outputs`
    (only :data:`GAME_KEYS` are used). ``cfg``: the loss weights (``cfg.loss``), the adversarial
    settings (``cfg.adversarial``: objective, instance noise, label smoothing, warm-up and ramp in
    epochs of ``steps_per_epoch`` steps), the learning rates (``cfg.optim.lr`` for the heads, a
    constant AdamW; ``cfg.optim.d_lr`` / ``d_betas`` for D) and gradient clipping. ``disc``: the
    discriminator to start from (copied, never changed); ``None`` builds a fresh one from
    ``cfg.model``; with ``cfg.model.tdd = False`` there is no adversary at all. ``d_steps``: D updates
    per G step, each on a fresh minibatch (the training loop does 1; more makes D stronger, the
    "n_critic" knob of many GANs). ``fresh_heads=False`` starts G from ``model``'s trained heads
    instead of re-initialised ones (with ``cfg.optim.lr = 0`` G then stands still and only D learns).

    Returns one record every ``log_every`` steps, averaged over those steps, in the format of the
    training history (so :func:`mtilib.viz.plot_gan_losses` can draw it): ``step``, ``epoch``
    (``step / steps_per_epoch``), ``lambda_adv``, ``loss_reg``, ``loss_cls`` (weighted, as in the
    total loss), ``loss_adv`` (the generator's adversarial loss, also logged while λ_adv is 0),
    ``loss_d``, then ``eval_*`` on ``eval_rows``: ``enhancement_mae``, ``accuracy``, ``ce``,
    ``confidence`` (mean top class probability), and D's mean score on real and fake pairs.

    Everything runs on the CPU. ``threads``: torch threads during the game (restored afterwards);
    its tensors are so small that one thread is fastest, and much faster than several on a busy
    machine. ``None`` leaves the setting alone.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _play(model, train_rows, eval_rows, cfg, steps, steps_per_epoch, batch_size, log_every, disc,
                     d_steps, fresh_heads, seed)
    finally:
        torch.set_num_threads(previous)


def _play(model, train_rows, eval_rows, cfg, steps, steps_per_epoch, batch_size, log_every, disc, d_steps,
          fresh_heads, seed):
    generator = torch.Generator().manual_seed(seed)
    d_generator = torch.Generator().manual_seed(seed + 1)  # D's extra minibatches (d_steps > 1)
    torch.manual_seed(seed)
    train_rows = {k: train_rows[k].cpu() for k in GAME_KEYS}
    eval_rows = {k: eval_rows[k].cpu() for k in GAME_KEYS}
    reg_head, cls_head = copy.deepcopy(model.reg_head).cpu(), copy.deepcopy(model.cls_head).cpu()
    if fresh_heads:
        _reset(reg_head)
        _reset(cls_head)
    reg_head.train()
    cls_head.train()
    if not cfg.model.tdd:
        disc = None
    elif disc is None:
        disc = build_discriminator(cfg.model)
    else:
        disc = copy.deepcopy(disc).cpu()
    params = list(reg_head.parameters()) + list(cls_head.parameters())
    kernel = optimizer_kernel(params[0].device)
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, **kernel)
    d_optimizer = None
    if disc is not None:
        disc.train()
        d_optimizer = torch.optim.Adam(disc.parameters(), lr=cfg.optim.d_lr, betas=tuple(cfg.optim.d_betas), **kernel)
    n = train_rows["class_id"].shape[0]
    batch_size = min(batch_size, n)
    train_g = cfg.optim.lr > 0  # learning rate 0: G stands still, skip its backward pass
    records, sums = [], {}
    for step in range(steps):
        index = torch.randperm(n, generator=generator)[:batch_size]
        batch = {k: v[index] for k, v in train_rows.items()}
        lam = adversarial_weight(cfg, step / steps_per_epoch)
        with torch.set_grad_enabled(train_g):
            enhancement, logits = _heads_forward(reg_head, cls_head, batch)
            parts = {"loss_reg": cfg.loss.reg * F.smooth_l1_loss(enhancement, batch["enhancement"],
                                                                 beta=cfg.loss.smooth_l1_beta),
                     "loss_cls": cfg.loss.cls * F.cross_entropy(logits, batch["class_id"])}
            loss = parts["loss_reg"] + parts["loss_cls"]
            probs = torch.softmax(logits, dim=1)
        context = batch["descriptors"].flatten(1)
        if disc is not None:
            with torch.set_grad_enabled(train_g and lam > 0):  # logged during warm-up too, no graph needed
                parts["loss_adv"] = generator_adversarial_term(cfg, disc, enhancement, probs, batch["times"], context)
            if lam > 0:
                loss = loss + lam * parts["loss_adv"]
        if train_g:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            optimizer.step()
        logged = {k: float(v.detach()) for k, v in parts.items()}
        if disc is not None:
            lesion = torch.arange(batch_size)  # every row of the game is a lesion slice
            fake = (enhancement.detach(), probs.detach(), context)
            d_losses = [discriminator_step(cfg, disc, d_optimizer, batch, lesion, fake)]
            for _ in range(d_steps - 1):  # extra D updates on fresh minibatches (G's outputs without grad)
                index = torch.randperm(n, generator=d_generator)[:batch_size]
                extra = {k: v[index] for k, v in train_rows.items()}
                with torch.no_grad():
                    e_extra, logits_extra = _heads_forward(reg_head, cls_head, extra)
                fake = (e_extra, torch.softmax(logits_extra, dim=1), extra["descriptors"].flatten(1))
                d_losses.append(discriminator_step(cfg, disc, d_optimizer, extra, lesion, fake))
            logged["loss_d"] = float(sum(d_losses)) / len(d_losses)
        for k, v in logged.items():
            sums[k] = sums.get(k, 0.0) + v
        if (step + 1) % log_every == 0 or step == steps - 1:
            count = (step % log_every) + 1
            record = {"step": step + 1, "epoch": (step + 1) / steps_per_epoch, "lambda_adv": lam}
            record.update({k: v / count for k, v in sums.items()})
            record.update(_evaluate(reg_head, cls_head, disc, eval_rows, cfg))
            records.append(record)
            sums = {}
    return records
