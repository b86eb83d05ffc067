"""The adversarial multi-task training loop (DESIGN §4). Read it top to bottom:

config -> distributed set-up -> data -> model, discriminator, optimisers -> resume -> for each
epoch: train (network step, then discriminator step), validate per case, checkpoint, history.

The same function runs on a laptop CPU, a GPU, or several processes under ``torchrun``
(DistributedDataParallel; NCCL on GPUs, Gloo on CPU). Only rank 0 logs and writes files.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from mtilib.data.dataset import CaseVolume, SliceDataset, split_cases
from mtilib.data.io import load_case, read_dataset
from mtilib.losses import multitask_loss
from mtilib.metrics import headline_metrics
from mtilib.models import build_discriminator, build_model
from mtilib.runtime import (
    autocast,
    gather_rng_states,
    optimizer_kernel,
    restore_rng_states,
    seed_everything,
    select_device,
    versions,
)
from mtilib.train.checkpoint import load_checkpoint, load_state_dict_checked, save_checkpoint
from mtilib.train.config import TrainConfig
from mtilib.train.ema import WeightAverage
from mtilib.train.fastpath import choose_fast_paths
from mtilib.train.gan import adversarial_weight, discriminator_step, generator_adversarial_term
from mtilib.train.guards import clip_or_drop_gradients
from mtilib.train.inference import evaluate_cases, validation_score

#: Seed offset per epoch when a run is resumed with another number of processes (a prime well
#: above any rank count, so that (rank, epoch) pairs never share a seed).
RESEED_STRIDE = 1_000_003


@dataclass
class RunResult:
    """What :func:`train` returns: where things are and the last/best validation summaries."""

    out_dir: Path
    best_score: float
    best_epoch: int
    history: list[dict]
    last_summary: dict


# --- distributed ------------------------------------------------------------------------------------

def init_distributed(device_spec: str) -> tuple[int, int, torch.device]:
    """Under torchrun (``RANK``/``WORLD_SIZE`` set) join the process group; else a single process.

    Returns ``(rank, world_size, device)``. GPUs use NCCL with one device per local rank; CPUs
    use Gloo. More processes than GPUs on a node (e.g. a 2-process check on a one-GPU machine) share
    the GPUs round-robin over Gloo, since NCCL refuses two ranks on one device.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, select_device(device_spec)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = select_device(device_spec)
    backend = "gloo"
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        gpus = torch.cuda.device_count()
        device = torch.device("cuda", local_rank % gpus)
        torch.cuda.set_device(device)
        backend = "nccl" if local_world <= gpus else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return rank, world, device


# --- data ---------------------------------------------------------------------------------------------

def load_volumes(data_root: str | Path, split: str = "train") -> list[CaseVolume]:
    """Read (and validate) every case of a split as normalised :class:`CaseVolume` s."""
    index = read_dataset(data_root)
    return [CaseVolume.from_case_data(load_case(index, r["case"])) for r in index.records if r["split"] == split]


def split_train_val(volumes: list[CaseVolume], cfg: TrainConfig):
    ids = [v.case_id for v in volumes]
    classes = [v.class_id for v in volumes]
    train_ids, val_ids = split_cases(ids, classes, cfg.data.val_fraction, cfg.seed)
    by_id = {v.case_id: v for v in volumes}
    return [by_id[i] for i in train_ids], [by_id[i] for i in val_ids]


def class_weight_tensor(volumes: list[CaseVolume], num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights ``N / (K n_c)`` from the cases' classes (N cases, K classes
    present, n_c cases of class c; 0 for an absent class): averaged over the cases a weight is 1,
    and every class present carries the same total weight N / K."""
    counts = np.bincount([v.class_id for v in volumes], minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / (counts > 0).sum(), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


# --- schedules ------------------------------------------------------------------------------------------

def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """Linear warm-up then cosine decay to ``min_lr_ratio``, as a function of the step."""
    warmup = max(1, int(cfg.optim.warmup_epochs * steps_per_epoch))
    total = max(warmup + 1, cfg.optim.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / (total - warmup))
        return cfg.optim.min_lr_ratio + (1 - cfg.optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# --- the loop ------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, data_root: str | Path, out_dir: str | Path, resume: bool = False,
          progress: bool | None = None, log=print, stop_after_epochs: int | None = None,
          train_volumes: list[CaseVolume] | None = None, val_volumes: list[CaseVolume] | None = None
          ) -> RunResult:
    """Train ``cfg`` on the training split of ``data_root``; write checkpoints and history to ``out_dir``.

    ``resume``: continue from ``out_dir/last.pt`` (exactly: weights, optimisers, schedule, RNG).
    ``stop_after_epochs``: return after this many epochs *of this call* (for demonstrations of
    resume; the schedule still follows ``cfg.optim.epochs``). ``train_volumes``/``val_volumes``
    bypass reading ``data_root`` (notebooks pass prepared cases).
    """
    out_dir = Path(out_dir)
    rank, world, device = init_distributed(cfg.device)
    is_main = rank == 0
    say = log if is_main else (lambda *a, **k: None)
    # Each rank draws its own dropout masks and instance noise (nanoGPT's seed offset); DDP
    # broadcasts rank 0's initial weights, so the models still start identical.
    seed_everything(cfg.seed + rank, cfg.deterministic)
    if progress is None:
        progress = sys.stderr.isatty()

    # data
    if train_volumes is None:
        train_volumes, val_volumes = split_train_val(load_volumes(data_root, "train"), cfg)
    val_volumes = val_volumes or []
    train_set = SliceDataset(
        train_volumes, cfg.data.image_size, cfg.data.negative_ratio, augment=cfg.data.augment,
        roi_crop=cfg.data.roi_crop, min_lesion_pixels=cfg.data.min_lesion_pixels, seed=cfg.seed,
        lesion_slice_floor=cfg.data.lesion_slice_floor,
    )
    if cfg.optim.batch_size % world:
        raise ValueError(f"batch_size {cfg.optim.batch_size} is not divisible by {world} processes")
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=world > 1)
    loader = DataLoader(
        train_set, batch_size=cfg.optim.batch_size // world, sampler=sampler, drop_last=False,
        num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0,
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = max(1, len(loader))

    # precision and memory format: explicit settings are used as given; "auto" is decided by a
    # short measurement on this machine (cached), never by CPU flags
    fast = choose_fast_paths(cfg.model, device, cfg.precision, cfg.channels_last, cfg.data.image_size,
                             cfg.optim.batch_size // world)
    precision, channels_last = fast.precision, fast.channels_last
    # recorded in every checkpoint: `auto` is a measurement, so the config alone does not say
    fast_path = {"precision": precision, "channels_last": bool(channels_last), "reason": fast.reason}

    # model, discriminator, optimisers
    model = build_model(cfg.model).to(device)
    disc = build_discriminator(cfg.model)
    if disc is not None:
        disc = disc.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    kernel = optimizer_kernel(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                  **kernel)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch))
    d_optimizer = (
        torch.optim.Adam(disc.parameters(), lr=cfg.optim.d_lr, betas=tuple(cfg.optim.d_betas), **kernel)
        if disc is not None else None
    )
    # the averaged weights are what validation scores and the checkpoints keep as "model"
    ema = WeightAverage(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    class_weights = class_weight_tensor(train_volumes, cfg.model.num_classes).to(device) \
        if cfg.data.class_weights else None

    start_epoch, best_score, best_epoch, history = 0, -math.inf, -1, []
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    trainables = Trainables(model, disc, optimizer, d_optimizer, scheduler, ema)
    if resume and last_path.exists():
        start_epoch, best_score, best_epoch, history = trainables.restore(last_path, cfg, rank, world, device, say)
        say(f"[train] resumed from {last_path} after epoch {start_epoch}/{cfg.optim.epochs}")
    elif resume:
        say(f"[train] no {last_path} yet: starting from scratch")
    if cfg.init_checkpoint and start_epoch == 0:
        _init_from(cfg, model, disc)
        if ema is not None:  # the average starts from the loaded weights, not the random ones
            ema.module.load_state_dict(model.state_dict())
        say(f"[train] starting from the weights of {cfg.init_checkpoint}")

    g_model, g_disc = model, disc
    if world > 1:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        g_model = DDP(model, **ddp_kwargs)
        if disc is not None:
            g_disc = DDP(disc, **ddp_kwargs)
    if cfg.compile:
        g_model = torch.compile(g_model)

    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        # history.jsonl describes this run: rewritten from the checkpoint on resume (a kill between
        # the checkpoint and the history line loses nothing), started afresh otherwise (never a
        # mix of two runs; the command line refuses to replace a run without --force)
        with open(out_dir / "history.jsonl", "w") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in history)
        cfg.to_yaml(out_dir / "config.yaml")
        (out_dir / "versions.json").write_text(json.dumps(versions(), indent=2))
        say(f"[train] {cfg.name}: {len(train_set)} slices from {len(train_volumes)} cases, "
            f"{len(val_volumes)} validation cases; device {device}, {precision}, "
            f"channels_last={channels_last} ({fast.reason}), {world} process(es)")

    last_summary: dict = {}
    epochs_this_call = 0
    # wall clock of this run (training, validation and checkpoints), carried over on resume
    elapsed_before = history[-1].get("elapsed_s", 0.0) if history else 0.0
    run_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.optim.epochs):
        if _patience_exhausted(cfg, epoch, best_epoch, bool(val_volumes)):
            say(f"[train] early stop: no better validation score for {cfg.optim.patience} epochs "
                f"(best epoch {best_epoch})")
            break
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        model.train()
        if disc is not None:
            disc.train()
        # Losses are summed on the device and read once per epoch (and at log points): a float()
        # per step would make the CPU wait for the GPU every step.
        sums: dict[str, torch.Tensor] = {}
        n_batches, n_samples, t0 = 0, 0, time.perf_counter()
        dropped = torch.zeros((), dtype=torch.int64, device=device)  # steps whose gradients were not finite
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", disable=not (progress and is_main),
                   leave=False)
        lam_adv = adversarial_weight(cfg, epoch)
        for step_in_epoch, batch in enumerate(bar):
            # which slices show a lesion, decided on the host before the copy (no sync later)
            lesion_index = batch["has_lesion"].nonzero().flatten()
            any_lesion = lesion_index.numel() > 0
            lesion_index = lesion_index.to(device, non_blocking=True)
            # rows with a label map, also decided on the host; box-labelled rows (no mask) are
            # left out of the segmentation loss, and TIM pools inside their box
            seg_index = batch["seg_valid"].nonzero().flatten()
            boxed = seg_index.numel() < batch["seg_valid"].numel()
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            batch["seg_index"] = seg_index.to(device, non_blocking=True) if boxed else None
            x = batch["image"]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lam_adv = adversarial_weight(cfg, epoch + step_in_epoch / steps_per_epoch)

            # network (generator) step
            with autocast(device, precision):
                out = g_model(x, batch["times"], pool_mask=batch["pool_mask"][:, None] if boxed else None)
            loss, parts = multitask_loss(out, batch, cfg.loss, class_weights)
            fake = None
            if disc is not None:
                fake_probs = torch.softmax(out.class_logits.float(), dim=1)
                context = out.aux["descriptors"].flatten(1).float()
                fake = (out.enhancement, fake_probs, context)
                if lam_adv > 0 and any_lesion:
                    adv = generator_adversarial_term(cfg, disc, *(t[lesion_index] for t in (
                        out.enhancement, fake_probs, batch["times"], context)))
                    loss = loss + lam_adv * adv
                    parts["adv"] = adv.detach()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # a non-finite gradient (one NaN or overflow in the batch) is dropped, not applied:
            # applied, it would reach every weight and end the run (counted, read once per epoch)
            finite = clip_or_drop_gradients(model.parameters(), cfg.optim.grad_clip)
            if finite is not None:
                dropped = dropped + (~finite).to(torch.int64)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)

            # discriminator step: real (true e, smoothed one-hot) vs fake (ê, softmax), on lesion slices
            if disc is not None:
                parts["d"] = discriminator_step(cfg, g_disc, d_optimizer, batch, lesion_index, fake)

            parts["total"] = loss.detach()
            for key, value in parts.items():
                sums[key] = sums[key] + value if key in sums else value.clone()
            n_batches += 1
            n_samples += x.shape[0] * world
            if progress and is_main and (step_in_epoch + 1) % 10 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if cfg.log_every and (step_in_epoch + 1) % cfg.log_every == 0:
                say(f"  step {step_in_epoch + 1}/{steps_per_epoch} loss {float(loss.detach()):.4f}")
        train_seconds = time.perf_counter() - t0

        # validation per case, on rank 0 (every rank holds the same weights)
        record = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "train_seconds": train_seconds,
                  "samples_per_s": n_samples / max(train_seconds, 1e-9), "lambda_adv": lam_adv}
        record.update({f"loss_{k}": float(v) / max(n_batches, 1) for k, v in sums.items()})
        record["dropped_steps"] = int(dropped)
        if record["dropped_steps"]:
            say(f"[train] epoch {epoch + 1}: {record['dropped_steps']} of {n_batches} steps had non-finite "
                "gradients and were dropped (the weights stay finite; the epoch's mean losses include them)")
        if is_main and val_volumes:
            t_val = time.perf_counter()
            scored = model if ema is None else ema.module
            metrics, _ = evaluate_cases(scored, val_volumes, cfg.data.image_size, device, precision,
                                        channels_last=channels_last)
            last_summary = metrics.summary()
            headline = headline_metrics(last_summary)
            record.update({f"val_{k}": v for k, v in headline.items() if k != "n_cases"})
            record["val_score"] = validation_score(headline)
            record["val_seconds"] = time.perf_counter() - t_val
        record["elapsed_s"] = elapsed_before + time.perf_counter() - run_start
        history.append(record)

        rng_states = gather_rng_states(world, device)  # every rank takes part; rank 0 saves them
        if is_main:
            score = record.get("val_score", -record["loss_total"])
            improved = score > best_score
            if improved:
                best_score, best_epoch = score, epoch + 1
            state = trainables.state(cfg, epoch, best_score, best_epoch, history, rng_states, last_summary,
                                     fast_path)
            save_checkpoint(last_path, state)
            if improved:
                save_checkpoint(best_path, state)
            with open(out_dir / "history.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            say(_epoch_line(record, cfg.optim.epochs, improved))
        if world > 1:
            # only rank 0 validates: every rank needs its best epoch for the early stop
            shared = [best_epoch]
            dist.broadcast_object_list(shared, src=0)
            best_epoch = shared[0]
        epochs_this_call += 1
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            break

    if world > 1 and dist.is_initialized():
        dist.barrier()
    return RunResult(out_dir, best_score, best_epoch, history, last_summary)


@dataclass
class Trainables:
    """What a checkpoint saves and a resume restores, as one save/restore pair."""

    model: torch.nn.Module
    disc: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    d_optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: WeightAverage | None = None

    def state(self, cfg: TrainConfig, epoch: int, best_score: float, best_epoch: int, history: list[dict],
              rng_states: dict, val_summary: dict, fast_path: dict | None = None) -> dict:
        """The checkpoint of ``epoch`` (0-based): tensors and plain values only (``weights_only``).
        With weight averaging, ``model`` holds the averaged weights (what inference loads) and
        ``train_model`` the raw ones the optimiser steps (what a resume continues from).
        ``fast_path``: the precision and memory format the run trained in, and why (``auto`` is
        decided by a measurement on the machine, so the config alone does not say)."""
        averaging = {} if self.ema is None else {
            "train_model": self.model.state_dict(), "ema_updates": self.ema.updates}
        return {
            "config": cfg.to_dict(),
            "model": (self.model if self.ema is None else self.ema.module).state_dict(),
            **averaging,
            "discriminator": self.disc.state_dict() if self.disc is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict() if self.d_optimizer is not None else None,
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "best_score": best_score,
            "best_epoch": best_epoch,
            "rng": rng_states,
            "history": json.dumps(history),
            "versions": versions(),
            "val_summary": json.dumps(val_summary),
            **({} if fast_path is None else {"fast_path": fast_path}),
        }

    def restore(self, path: Path, cfg: TrainConfig, rank: int, world: int, device: torch.device, say
                ) -> tuple[int, float, int, list[dict]]:
        """Load :meth:`state` from ``path`` -> ``(next epoch, best score, best epoch, history)``."""
        # Load to the CPU: RNG states must stay CPU byte tensors, and load_state_dict /
        # Optimizer.load_state_dict copy the rest to wherever the parameters live.
        state = load_checkpoint(path, map_location="cpu")
        saved_cfg = TrainConfig.from_dict(state["config"])
        if saved_cfg.model.to_dict() != cfg.model.to_dict():
            raise ValueError(f"{path}: was trained with another model config; cannot resume")
        if self.ema is not None:
            if "train_model" not in state:
                raise ValueError(f"{path}: was trained without weight averaging (optim.ema_decay); "
                                 f"cannot resume with it")
            load_state_dict_checked(self.model, state["train_model"], path, "network")
            self.ema.load_state_dict({"updates": state["ema_updates"], "module": state["model"]})
        else:
            if "train_model" in state:
                raise ValueError(f"{path}: was trained with weight averaging (optim.ema_decay); "
                                 f"cannot resume without it")
            load_state_dict_checked(self.model, state["model"], path, "network")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.disc is not None:
            load_state_dict_checked(self.disc, state["discriminator"], path, "discriminator")
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        if not restore_rng_states(state["rng"], rank, world, device):
            say(f"[train] {path} was written by another number of processes: random streams "
                f"reseeded, so the continuation is not bit-identical")
            # a fresh stream per (rank, epoch), apart from the streams of a run started anew
            seed_everything(cfg.seed + rank + RESEED_STRIDE * (state["epoch"] + 1), cfg.deterministic)
        return state["epoch"] + 1, state["best_score"], state["best_epoch"], json.loads(state["history"])


def _patience_exhausted(cfg: TrainConfig, epoch: int, best_epoch: int, validates: bool) -> bool:
    """Early stopping: before 0-based ``epoch``, have ``patience`` epochs passed since the best one?"""
    patience = cfg.optim.patience
    return bool(patience and validates and best_epoch > 0 and epoch - best_epoch >= patience)


def _init_from(cfg: TrainConfig, model, disc) -> None:
    """Fine-tuning: load network (and discriminator, when both have one) weights, not the optimiser."""
    path = cfg.init_checkpoint
    state = load_checkpoint(path)
    saved = TrainConfig.from_dict(state["config"]).model
    if saved.architecture() != cfg.model.architecture():
        raise ValueError(f"{path}: was trained with another model config; cannot start from it")
    load_state_dict_checked(model, state["model"], path, "network")
    if disc is not None and state.get("discriminator") is not None:
        load_state_dict_checked(disc, state["discriminator"], path, "discriminator")


def _epoch_line(record: dict, epochs: int, improved: bool) -> str:
    parts = [f"[train] epoch {record['epoch']}/{epochs}", f"loss {record['loss_total']:.4f}"]
    for key, label in (("val_dice", "dice"), ("val_enhancement_mae", "enh MAE"),
                       ("val_accuracy", "acc"), ("val_score", "score")):
        if key in record and record[key] is not None:
            parts.append(f"{label} {record[key]:.3f}")
    parts.append(f"{record['samples_per_s']:.1f} samples/s")
    return " | ".join(parts) + (" *best*" if improved else "")
