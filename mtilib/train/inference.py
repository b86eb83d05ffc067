"""Per-case inference and evaluation (SPEC §2.3, §4).

A case is cut into all of its axial slices (no liver mask needed), the network runs on batches of
slices, logits are resized back to the case's in-plane size, slices are stitched into a 3D label
map, and class probabilities and enhancement are aggregated over slices weighted by predicted
lesion area. Optionally only the largest 3D lesion component is kept (one lesion per case).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mtilib.constants import CLASS_NAMES, LESION
from mtilib.data.dataset import CaseVolume, aggregate_case
from mtilib.metrics import CaseMetrics
from mtilib.runtime import autocast


@dataclass
class CasePrediction:
    """Prediction for one case. ``label_map (H, W, S)`` uint8 0/1/2; ``lesion_prob (H, W, S)``;
    ``class_probs (C,)`` and ``enhancement (P-1,)`` or None for networks without those tasks;
    ``slice_lesion_area (S,)`` predicted lesion pixels per slice."""

    case_id: str
    label_map: np.ndarray | None
    lesion_prob: np.ndarray | None
    class_probs: np.ndarray | None
    enhancement: np.ndarray | None
    slice_lesion_area: np.ndarray

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


@torch.no_grad()
def predict_case(model: torch.nn.Module, volume: CaseVolume, image_size: int | None = None,
                 device: torch.device | str = "cpu", precision: str = "fp32", batch_size: int = 16,
                 keep_largest_lesion: bool = True, channels_last: bool = False) -> CasePrediction:
    """Run ``model`` on every slice of ``volume`` and assemble the per-case prediction."""
    device = torch.device(device)
    model.eval()
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
    class_probs, enhancement = aggregate_case(
        torch.cat(cls).numpy() if cls else None, torch.cat(enh).numpy() if enh else None, area
    )
    return CasePrediction(volume.case_id, label_map, lesion_prob, class_probs, enhancement, area)


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
        metrics.add(
            vol.case_id,
            pred_mask=pred.lesion_mask,
            true_mask=None if vol.labels is None or pred.label_map is None else vol.labels == LESION,
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
