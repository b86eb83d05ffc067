"""Per-case inference and evaluation (DESIGN §2.3, §4).

A case is cut into all of its axial slices (no liver mask needed), the network runs on batches of
slices, logits are resized back to the case's in-plane size, slices are stitched into a 3D label
map, and class probabilities and enhancement are aggregated over slices weighted by predicted
lesion area. Optionally only the largest 3D lesion component is kept (one lesion per case).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mtilib.constants import CLASS_NAMES, LESION, PHASES
from mtilib.data.dataset import CaseVolume, aggregate_case
from mtilib.data.io import mask_volume_ml
from mtilib.metrics import CaseMetrics
from mtilib.runtime import autocast


@dataclass
class CasePrediction:
    """Prediction for one case. ``label_map (H, W, S)`` uint8 0/1/2; ``lesion_prob (H, W, S)``;
    ``class_probs (C,)`` and ``enhancement (P-1,)`` or None for networks without those tasks;
    ``slice_lesion_area (S,)`` predicted lesion pixels per slice (after the largest-component
    step: the weights of the per-case aggregation). ``slice_class_probs (S, C)`` and
    ``slice_enhancement (S, P-1)`` are the per-slice outputs before aggregation (None without
    those tasks), for comparing aggregation rules (notebook 07)."""

    case_id: str
    label_map: np.ndarray | None
    lesion_prob: np.ndarray | None
    class_probs: np.ndarray | None
    enhancement: np.ndarray | None
    slice_lesion_area: np.ndarray
    slice_class_probs: np.ndarray | None = None
    slice_enhancement: np.ndarray | None = None

    @property
    def lesion_mask(self) -> np.ndarray | None:
        return None if self.label_map is None else self.label_map == LESION

    @property
    def class_id(self) -> int | None:
        return None if self.class_probs is None else int(np.argmax(self.class_probs))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a binary 3D mask (empty stays empty)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


@contextmanager
def evaluating(model: torch.nn.Module):
    """Put ``model`` in eval mode for the block and give every submodule back the mode it had
    (a training loop that validates between epochs must find its dropout switched on again)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@torch.no_grad()
def predict_case(model: torch.nn.Module, volume: CaseVolume, image_size: int | None = None,
                 device: torch.device | str = "cpu", precision: str = "fp32", batch_size: int = 16,
                 keep_largest_lesion: bool = True, channels_last: bool = False) -> CasePrediction:
    """Run ``model`` (in eval mode; its mode is restored afterwards) on every slice of ``volume``
    and assemble the per-case prediction."""
    with evaluating(model):
        return _predict_case(model, volume, image_size, torch.device(device), precision, batch_size,
                             keep_largest_lesion, channels_last)


def _predict_case(model, volume, image_size, device, precision, batch_size, keep_largest_lesion,
                  channels_last) -> CasePrediction:
    p, h, w, s = volume.images.shape
    images = torch.from_numpy(volume.images).permute(3, 0, 1, 2)  # (S, P, H, W)
    if image_size is not None and (h, w) != (image_size, image_size):
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    times = torch.from_numpy(volume.times_s.astype(np.float32))
    seg, cls, enh = [], [], []
    for start in range(0, s, batch_size):
        x = images[start:start + batch_size].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = times.expand(x.shape[0], -1).to(device)
        with autocast(device, precision):
            out = model(x, t)
        if out.seg_logits is not None:
            logits = out.seg_logits.float()
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            seg.append(torch.softmax(logits, dim=1).cpu())
        if out.class_logits is not None:
            cls.append(torch.softmax(out.class_logits.float(), dim=1).cpu())
        if out.enhancement is not None:
            enh.append(out.enhancement.float().cpu())
    label_map = lesion_prob = None
    if seg:
        probs = torch.cat(seg).numpy()  # (S, K, H, W)
        label_map = probs.argmax(1).transpose(1, 2, 0).astype(np.uint8)  # (H, W, S)
        lesion_prob = probs[:, LESION].transpose(1, 2, 0)
        if keep_largest_lesion:
            lesion = label_map == LESION
            kept = largest_component(lesion)
            label_map[lesion & ~kept] = 1  # dropped lesion islands fall back to liver
        area = (label_map == LESION).sum(axis=(0, 1)).astype(np.float64)
    else:
        area = np.zeros(s)
    slice_class_probs = torch.cat(cls).numpy() if cls else None
    slice_enhancement = torch.cat(enh).numpy() if enh else None
    class_probs, enhancement = aggregate_case(slice_class_probs, slice_enhancement, area)
    return CasePrediction(volume.case_id, label_map, lesion_prob, class_probs, enhancement, area,
                          slice_class_probs, slice_enhancement)


def prediction_report(pred: CasePrediction, spacing, num_classes: int, phase_names=PHASES) -> dict:
    """A JSON-ready summary of one prediction: lesion found and its volume (ml), class
    probabilities by name and the predicted class, enhancement per post-contrast phase. When the
    network segments and finds no lesion, class and enhancement are ``None`` ("not assessed").
    ``mtilib predict`` writes it; notebook 11 tabulates it for many cases."""
    names = CLASS_NAMES if num_classes == len(CLASS_NAMES) else [f"class_{i}" for i in range(num_classes)]
    report: dict = {"case": pred.case_id}
    if pred.label_map is not None:
        lesion = pred.label_map == LESION
        report["lesion_found"] = bool(lesion.any())
        report["lesion_volume_ml"] = mask_volume_ml(lesion, spacing)
        report["lesion_slices"] = [int(s) for s in np.nonzero(pred.slice_lesion_area)[0]]
    no_lesion = report.get("lesion_found") is False
    if no_lesion:
        # The heads always answer, but a class and an enhancement of no lesion read as a diagnosis
        # of nothing: report them as not assessed.
        report["assessment"] = "no lesion found: class and enhancement not assessed"
    elif "lesion_found" in report:
        report["assessment"] = "lesion found"
    if pred.class_probs is not None:
        report["class_probabilities"] = None if no_lesion else {
            n: float(p) for n, p in zip(names, pred.class_probs)}
        report["predicted_class"] = None if no_lesion else names[pred.class_id]
    if pred.enhancement is not None:
        report["enhancement"] = None if no_lesion else {
            n: float(v) for n, v in zip(phase_names[1:], pred.enhancement)}
    return report


def evaluate_cases(model: torch.nn.Module, volumes: list[CaseVolume], image_size: int | None,
                   device="cpu", precision: str = "fp32", class_names=CLASS_NAMES,
                   channels_last: bool = False, batch_size: int = 16):
    """Predict every case and score it with :class:`~mtilib.metrics.CaseMetrics`.

    Returns ``(metrics, predictions)``.
    """
    metrics = CaseMetrics(class_names=class_names)
    predictions = []
    for vol in volumes:
        pred = predict_case(model, vol, image_size, device, precision, batch_size, channels_last=channels_last)
        predictions.append(pred)
        scored_mask = vol.labels is not None and pred.label_map is not None  # a box case has no mask to score
        metrics.add(
            vol.case_id,
            pred_mask=pred.lesion_mask if scored_mask else None,
            true_mask=vol.labels == LESION if scored_mask else None,
            spacing=tuple(vol.spacing),
            pred_enhancement=pred.enhancement,
            true_enhancement=vol.enhancement if pred.enhancement is not None else None,
            class_probs=pred.class_probs,
            true_class=vol.class_id if pred.class_probs is not None else None,
        )
    return metrics, predictions


def validation_score(headline: dict) -> float:
    """One number to pick the best epoch from :func:`~mtilib.metrics.headline_metrics`: the mean
    of the available task scores, each in [0, 1]: lesion Dice, classification accuracy, and
    ``max(0, 1 − MAE / 0.5)`` for enhancement."""
    parts = []
    if headline.get("dice") is not None:
        parts.append(headline["dice"])
    if headline.get("accuracy") is not None:
        parts.append(headline["accuracy"])
    if headline.get("enhancement_mae") is not None:
        parts.append(max(0.0, 1.0 - headline["enhancement_mae"] / 0.5))
    return float(np.mean(parts)) if parts else 0.0


@torch.no_grad()
def lesion_slice_outputs(model: torch.nn.Module, volumes: list[CaseVolume], image_size: int | None = None,
                         device: torch.device | str = "cpu", batch_size: int = 32,
                         min_lesion_pixels: int = 4) -> dict[str, torch.Tensor]:
    """Run ``model`` on every slice that shows a lesion and gather its outputs, one row per slice.

    For looking inside a trained network (notebooks 08 and 09): what the phase Transformer
    attends to, what the heads and the discriminator see. Slices are those
    :class:`~mtilib.data.dataset.SliceDataset` marks ``has_lesion`` (no augmentation, no
    lesion-free slices), resized to ``image_size``. Returns CPU tensors (N = lesion slices):

    * inputs and truth: ``times (N, P)``, ``class_id (N,)``, ``enhancement (N, P-1)`` (the slice's
      training target: its own truth where the data hold it, else the case's),
      ``case_index (N,)`` (into ``volumes``), ``slice_index (N,)``;
    * outputs: ``pred_enhancement (N, P-1)``, ``class_logits (N, C)``, ``class_probs (N, C)``;
    * what the heads and the TDD read: ``descriptors (N, P, d)``, ``context (N, P·d)`` (flattened
      descriptors, the TDD's context token), ``pooled (N, F)``, ``measured_enhancement (N, P-1)``
      (TIM's measurement under s0, which a residual regression head corrects);
    * ``aux`` tensors of shape ``(N, ...)`` that the network returns: ``phase_pool_weights (N, P)``
      and, with the Transformer, ``phase_attention (N, P, P)``.

    ``model`` must do regression and classification (MTI-Net or its multi-task ablations).
    """

    device = torch.device(device)
    with evaluating(model):
        return _lesion_slice_outputs(model, volumes, image_size, device, batch_size, min_lesion_pixels)


def _lesion_slice_outputs(model, volumes, image_size, device, batch_size, min_lesion_pixels):
    from mtilib.data.dataset import SliceDataset

    dataset = SliceDataset(volumes, image_size, negative_ratio=0.0, augment=False,
                           min_lesion_pixels=min_lesion_pixels)
    items = [dataset[i] for i in range(len(dataset))]
    items = [item for item in items if bool(item["has_lesion"])]
    if not items:
        raise ValueError("no slice of these volumes shows a lesion (labels needed)")
    keys = ("times", "class_id", "enhancement", "case_index", "slice_index")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        for k in keys:
            out[k].append(torch.stack([item[k] for item in batch]))
        x = torch.stack([item["image"] for item in batch]).to(device)
        pred = model(x, out["times"][-1].to(device))
        if pred.enhancement is None or pred.class_logits is None:
            raise ValueError("lesion_slice_outputs needs a network with regression and classification")
        rows = {
            "pred_enhancement": pred.enhancement,
            "class_logits": pred.class_logits,
            "class_probs": torch.softmax(pred.class_logits.float(), dim=1),
            "descriptors": pred.aux["descriptors"],
            "context": pred.aux["descriptors"].flatten(1),
            "pooled": pred.aux["pooled"],
            "measured_enhancement": pred.aux["measured_enhancement"],
        }
        for k in ("phase_pool_weights", "phase_attention"):
            if k in pred.aux:
                rows[k] = pred.aux[k]
        for k, v in rows.items():
            out.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}
