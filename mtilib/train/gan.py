"""The adversarial game between the network (G) and the task-driven discriminator (TDD, D).

One module for what the training loop (:func:`mtilib.train.loop.train`) and the heads-vs-TDD game
of notebook 09 (:mod:`mtilib.train.adversarial`) share: the λ_adv schedule, the smoothed real labels,
instance noise, G's adversarial term and D's update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtilib.losses import discriminator_loss, generator_adversarial_loss
from mtilib.train.config import TrainConfig
from mtilib.train.guards import clip_or_drop_gradients


def adversarial_weight(cfg: TrainConfig, epoch_progress: float) -> float:
    """λ_adv at a point of training (in epochs): 0 during warm-up, then a linear ramp."""
    adv = cfg.adversarial
    if epoch_progress < adv.warmup_epochs:
        return 0.0
    ramp = 1.0 if adv.ramp_epochs <= 0 else min(1.0, (epoch_progress - adv.warmup_epochs) / adv.ramp_epochs)
    return cfg.loss.adv * ramp


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    onehot = F.one_hot(labels, num_classes).float()
    return onehot * (1 - smoothing) + smoothing / num_classes


def _noisy_score(disc, enhancement, probs, times, context, noise: float) -> torch.Tensor:
    """D's score of (enhancement, probs) pairs with instance noise added to both (noise drawn for
    the enhancement first, then for the probabilities)."""
    return disc(enhancement + noise * torch.randn_like(enhancement), probs + noise * torch.randn_like(probs),
                times, context)


def generator_adversarial_term(cfg: TrainConfig, disc, enhancement, probs, times, context) -> torch.Tensor:
    """G's adversarial loss: the frozen D scores G's (ê, p) pairs with instance noise added
    (``cfg.adversarial.instance_noise``); ``cfg.adversarial.kind`` picks the objective. The
    gradient reaches G through ``enhancement`` and ``probs``, never D's weights."""
    disc.requires_grad_(False)
    try:
        score = _noisy_score(disc, enhancement, probs, times, context, cfg.adversarial.instance_noise)
    finally:
        disc.requires_grad_(True)
    return generator_adversarial_loss(score, cfg.adversarial.kind)


def discriminator_step(cfg, g_disc, d_optimizer, batch, lesion_index, fake) -> torch.Tensor:
    """One update of D on (real, fake) pairs of the batch's lesion slices; returns D's loss (detached).

    ``lesion_index (L,)``: the batch rows that show a lesion (integer indices, so that selecting
    them needs no device-to-host sync). A batch without lesion slices still runs D on all its
    samples with a zero-weighted loss: under DDP every process must take part in the same gradient
    all-reduce, or the others wait forever.
    """
    any_lesion = lesion_index.numel() > 0
    use = lesion_index if any_lesion else torch.arange(batch["times"].shape[0], device=batch["times"].device)
    enhancement, probs, context = (t.detach()[use] for t in fake)
    times = batch["times"][use]
    noise = cfg.adversarial.instance_noise
    real_p = smooth_one_hot(batch["class_id"][use].clamp_min(0), probs.shape[1], cfg.adversarial.real_label_smoothing)
    score_real = _noisy_score(g_disc, batch["enhancement"][use], real_p, times, context, noise)
    score_fake = _noisy_score(g_disc, enhancement, probs, times, context, noise)
    d_loss = discriminator_loss(score_real, score_fake, cfg.adversarial.kind)
    if not any_lesion:
        d_loss = d_loss * 0.0
    d_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    # as for the network: a non-finite gradient is dropped, so D's weights stay finite
    clip_or_drop_gradients(g_disc.parameters(), 0.0)
    d_optimizer.step()
    return d_loss.detach()
