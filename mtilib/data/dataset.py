"""From cases to training samples and back (DESIGN §2.3).

- :func:`normalisation_scale` / :class:`CaseVolume`: every phase of a case is divided by the same
  robust statistic of the pre-contrast phase, so relative enhancement survives normalisation
  (z-scoring each phase separately would erase exactly what the network must measure).
- :class:`SliceDataset`: whole-field-of-view 2D axial slices (no liver mask needed at inference),
  lesion slices plus a share of lesion-free liver slices, optional liver-ROI crop, augmentation.
  Randomness comes from ``(seed, epoch, index)``, so results do not depend on the number of
  DataLoader workers or on an interrupted-and-resumed run.
- :func:`split_cases`: splits by case, never by slice, stratified by class.
- :func:`aggregate_case` and :func:`stitch_slices`: per-case inference helpers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mtilib.constants import LESION, LIVER


def normalisation_scale(images: np.ndarray) -> float:
    """Robust intensity scale of a case: the median of the pre-contrast phase inside the body.

    ``images (P, H, W, S)``; "inside the body" = voxels above 10 % of the pre phase's 99th
    percentile (air and background fall below). Returns a positive float.
    """
    pre = np.asarray(images[0], dtype=np.float64)
    high = np.percentile(pre, 99)
    if not np.isfinite(high) or high <= 0:
        raise ValueError("pre-contrast phase has no positive signal: cannot normalise this case")
    body = pre[pre > 0.1 * high]
    return float(np.median(body))


@dataclass
class CaseVolume:
    """One case ready for slicing: images already normalised (same scale for all phases).

    ``images (P, H, W, S)`` float32; ``labels (H, W, S)`` uint8 or None; ``class_id`` int or None;
    ``enhancement (P-1,)`` case-level truth or None; ``enhancement_by_slice (S, P-1)`` the truth
    restricted to each slice's lesion tissue, NaN where the lesion does not reach, or None (known
    for phantom cases only); ``times_s (P,)``; ``spacing (3,)`` mm;
    ``scale`` the divisor that was applied; ``lesion_box`` ``((i0, i1), (j0, j1), (k0, k1))``
    inclusive voxel ranges for a case labelled by a box instead of a mask (``labels`` is then None).
    """

    case_id: str
    images: np.ndarray
    times_s: np.ndarray
    spacing: np.ndarray
    labels: np.ndarray | None = None
    class_id: int | None = None
    enhancement: np.ndarray | None = None
    scale: float = 1.0
    affine: np.ndarray | None = None
    lesion_box: tuple | None = None
    enhancement_by_slice: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, case_id, images, times_s, spacing, labels=None, class_id=None,
                    enhancement=None, affine=None, lesion_box=None, enhancement_by_slice=None) -> CaseVolume:
        """Normalise raw images (:func:`normalisation_scale`) and wrap them."""
        images = np.asarray(images, dtype=np.float32)
        scale = normalisation_scale(images)
        return cls(
            case_id=str(case_id),
            images=(images / scale).astype(np.float32),
            times_s=np.asarray(times_s, dtype=np.float32),
            spacing=np.asarray(spacing, dtype=np.float64),
            labels=None if labels is None else np.asarray(labels, dtype=np.uint8),
            class_id=None if class_id is None else int(class_id),
            enhancement=None if enhancement is None else np.asarray(enhancement, dtype=np.float32),
            scale=scale,
            affine=None if affine is None else np.asarray(affine, dtype=np.float64),
            lesion_box=None if lesion_box is None else tuple((int(lo), int(hi)) for lo, hi in lesion_box),
            enhancement_by_slice=(None if enhancement_by_slice is None
                                  else np.asarray(enhancement_by_slice, dtype=np.float32)),
        )

    @classmethod
    def from_case_data(cls, case) -> CaseVolume:
        """From :class:`mtilib.data.io.CaseData` (a case read from disk; a box-labelled case keeps
        its box and has no labels)."""
        return cls.from_arrays(
            case.case_id, case.images, case.phase_times_s, case.spacing, case.labels,
            case.record.get("class"), case.enhancement, case.affine, case.record.get("lesion_box"),
            case.enhancement_by_slice,
        )

    @classmethod
    def from_phantom(cls, case, case_id: str) -> CaseVolume:
        """From a :class:`mtilib.data.phantom.PhantomCase` held in memory (no files written)."""
        return cls.from_arrays(case_id, case.images, case.phase_times_s, case.spacing, case.labels,
                               case.class_id, case.enhancement, case.affine,
                               enhancement_by_slice=case.enhancement_by_slice)

    @property
    def num_slices(self) -> int:
        return self.images.shape[-1]


def split_cases(case_ids: list[str], classes: list[int], val_fraction: float, seed: int):
    """Split by case, stratified by class: ``-> (train_ids, val_ids)``.

    Each class with at least two cases gives ``max(1, round(val_fraction · n))`` cases to
    validation; a class with a single case stays in training. Deterministic for a seed.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls_id in sorted(set(classes)):
        members = sorted(c for c, k in zip(case_ids, classes) if k == cls_id)
        rng.shuffle(members)
        n_val = 0 if val_fraction == 0 or len(members) < 2 else max(1, round(val_fraction * len(members)))
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


def _item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed((seed * 1_000_003 + epoch * 10_007 + index) % (2**63 - 1))
    return gen


def liver_bbox(labels_2d: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """Bounding box ``(r0, r1, c0, c1)`` of liver+lesion on one slice, widened by ``margin`` pixels."""
    rows, cols = np.nonzero(labels_2d >= LIVER)
    h, w = labels_2d.shape
    if rows.size == 0:
        return 0, h, 0, w
    return (max(rows.min() - margin, 0), min(rows.max() + margin + 1, h),
            max(cols.min() - margin, 0), min(cols.max() + margin + 1, w))


def largest_lesion_slice(labels: np.ndarray, lesion: int = LESION) -> int:
    """Index of the axial slice (last axis) of a ``(H, W, S)`` label map with the most lesion
    voxels (0 when there is no lesion): the slice the notebooks show first."""
    return int(np.argmax((np.asarray(labels) == lesion).sum(axis=(0, 1))))


def lesion_box(mask: np.ndarray, margin_fraction: float = 0.5, min_size: int = 12
               ) -> tuple[slice, slice, slice] | None:
    """A square in-plane box around a 3D lesion mask ``(H, W, S)``, and the slices it crosses.

    The side is the lesion's larger in-plane extent widened by ``margin_fraction`` of it on each
    side (some liver around the lesion, as the LLD-MMRI challenge baseline crops), at least
    ``min_size`` pixels, shifted to stay inside the image. ``None`` for an empty mask.
    """
    rows, cols, zs = np.nonzero(mask)
    if rows.size == 0:
        return None
    h, w = mask.shape[:2]
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    side = min(max(int(math.ceil(extent * (1 + 2 * margin_fraction))), min_size), h, w)

    def span(lo, hi, n):
        start = int(round((lo + hi + 1) / 2 - side / 2))
        start = min(max(start, 0), n - side)
        return slice(start, start + side)

    return span(rows.min(), rows.max(), h), span(cols.min(), cols.max(), w), slice(int(zs.min()), int(zs.max()) + 1)


def crop_volume(volume: CaseVolume, box: tuple[slice, slice, slice]) -> CaseVolume:
    """``volume`` cut to ``box`` (rows, columns, slices); intensities keep the case's normalisation
    (a crop must not rescale the lesion by its own median), and truth travels along."""
    r, c, z = box
    images = np.ascontiguousarray(volume.images[:, r, c, z])
    lesion = None
    if volume.lesion_box is not None:  # a box label moves with the crop (and is clipped to it)
        starts = [s.indices(n)[0] for s, n in zip(box, volume.images.shape[1:])]
        lesion = tuple((max(lo - a, 0), min(hi - a, n - 1))
                       for (lo, hi), a, n in zip(volume.lesion_box, starts, images.shape[1:]))
    by_slice = None if volume.enhancement_by_slice is None else volume.enhancement_by_slice[z]
    return replace(volume, images=images, lesion_box=lesion, enhancement_by_slice=by_slice,
                   labels=None if volume.labels is None else np.ascontiguousarray(volume.labels[r, c, z]))


class SliceDataset(Dataset):
    """2D axial slices of :class:`CaseVolume` s.

    Items are dicts of tensors: ``image (P, h, w)`` float32, ``times (P,)`` s, ``label (h, w)``
    int64, ``class_id ()`` int64 (−1 when unknown), ``enhancement (P-1,)`` (zeros when not a lesion
    slice), ``has_lesion ()`` bool (at least ``min_lesion_pixels`` lesion pixels), ``case_index``,
    ``slice_index``, ``seg_valid ()`` bool (the slice has a label map: false for box-labelled
    cases, whose segmentation loss is skipped) and ``pool_mask (h, w)`` float32 (box cases: the
    core of the box on this slice, where TIM pools in training; zeros otherwise).

    A box-labelled case (``labels`` None, ``lesion_box`` set) contributes the slices its box
    crosses as lesion slices (repeated up to ``lesion_slice_floor``), no negatives (without a mask
    there is no telling a lesion-free slice from one with another lesion), and no augmentation or
    ROI crop.

    ``negative_ratio``: lesion-free liver slices per lesion slice (chosen once, by ``seed``).
    ``all_slices``: every slice of every case (inference). ``image_size``: output in-plane size
    (bilinear for images, nearest for labels); ``roi_crop``: crop to the liver bounding box first.
    ``lesion_slice_floor``: each case contributes at least this many lesion-slice items per epoch,
    its lesion slices repeated in turn (0: each slice once). Negatives follow the slices, not the
    repeats.
    """

    def __init__(self, volumes: list[CaseVolume], image_size: int | None = None, negative_ratio: float = 0.5,
                 augment: bool = False, roi_crop: bool = False, roi_margin: int = 4,
                 min_lesion_pixels: int = 4, all_slices: bool = False, seed: int = 0,
                 lesion_slice_floor: int = 0):
        self.volumes = volumes
        self.image_size = image_size
        self.augment = augment
        self.roi_crop = roi_crop
        self.roi_margin = roi_margin
        self.min_lesion_pixels = min_lesion_pixels
        self.seed = seed
        self.epoch = 0
        if roi_crop and image_size is None:
            raise ValueError("roi_crop gives slices of varying size: set image_size too")
        rng = np.random.default_rng(seed)
        items = []
        for ci, vol in enumerate(volumes):
            if not all_slices and vol.labels is None and vol.lesion_box is not None:
                (k0, k1) = vol.lesion_box[2]
                lesion = list(range(k0, k1 + 1))
                repeats = [lesion[i % len(lesion)] for i in range(len(lesion), lesion_slice_floor)]
                items += [(ci, s) for s in sorted(lesion + repeats)]
                continue
            if all_slices or vol.labels is None:
                items += [(ci, s) for s in range(vol.num_slices)]
                continue
            lesion_px = (vol.labels == LESION).sum(axis=(0, 1))
            liver_px = (vol.labels >= LIVER).sum(axis=(0, 1))
            lesion = [s for s in range(vol.num_slices) if lesion_px[s] > 0]
            negatives = [s for s in range(vol.num_slices) if lesion_px[s] == 0 and liver_px[s] > 0]
            n_neg = min(len(negatives), int(math.ceil(negative_ratio * len(lesion))))
            chosen = sorted(rng.choice(negatives, size=n_neg, replace=False).tolist()) if n_neg else []
            # a small lesion crosses one or two slices: repeat them in turn up to the floor, so that
            # it is seen about as often as a large one (each repeat draws its own augmentation)
            repeats = [lesion[i % len(lesion)] for i in range(len(lesion), lesion_slice_floor)] if lesion else []
            items += [(ci, s) for s in sorted(lesion + repeats + chosen)]
        self.items = items

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call once per epoch, like ``DistributedSampler``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _slice(self, vol: CaseVolume, s: int):
        image = torch.from_numpy(np.ascontiguousarray(vol.images[..., s]))
        label = None if vol.labels is None else torch.from_numpy(vol.labels[..., s].astype(np.int64))
        if self.roi_crop and label is not None:
            r0, r1, c0, c1 = liver_bbox(vol.labels[..., s], self.roi_margin)
            image, label = image[:, r0:r1, c0:c1], label[r0:r1, c0:c1]
        return image, label

    def _resize(self, image: torch.Tensor, label: torch.Tensor | None):
        size = self.image_size
        if size is None or tuple(image.shape[-2:]) == (size, size):
            return image, label
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        if label is not None:
            label = F.interpolate(label[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
        return image, label

    def _augment(self, image: torch.Tensor, label: torch.Tensor, gen: torch.Generator):
        """Flips, rotation ±10°, scale 0.9–1.1 (same warp for image and label), intensity ×0.9–1.1
        shared by all phases (a phase-wise scale would fake enhancement)."""
        if torch.rand((), generator=gen) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        if torch.rand((), generator=gen) < 0.5:
            image, label = image.flip(-2), label.flip(-2)
        angle = (torch.rand((), generator=gen).item() * 2 - 1) * math.radians(10)
        scale = 0.9 + 0.2 * torch.rand((), generator=gen).item()
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, (1, 1, *image.shape[-2:]), align_corners=False)
        image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        label = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)[0, 0].long()
        image = image * (0.9 + 0.2 * torch.rand((), generator=gen).item())
        return image, label

    def _box_item(self, vol: CaseVolume, s: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """A box-labelled case's slice: image, the box core on it (float mask), whether the box crosses it."""
        from mtilib.data.io import box_core_plane

        image = torch.from_numpy(np.ascontiguousarray(vol.images[..., s]))
        (k0, k1) = vol.lesion_box[2]
        inside = k0 <= s <= k1
        # the core is the same on every slice the box crosses: only this slice's plane is built
        core = (torch.from_numpy(box_core_plane(image.shape[-2:], vol.lesion_box).astype(np.float32)) if inside
                else torch.zeros(image.shape[-2:]))
        size = self.image_size
        if size is not None and tuple(image.shape[-2:]) != (size, size):
            image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            core = F.interpolate(core[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        return image, core, inside

    def __getitem__(self, index: int) -> dict:
        ci, s = self.items[index]
        vol = self.volumes[ci]
        if vol.labels is None and vol.lesion_box is not None:
            image, pool_mask, has_lesion = self._box_item(vol, s)
            return self._item(vol, image, torch.zeros(image.shape[-2:], dtype=torch.int64), has_lesion, ci, s,
                              seg_valid=False, pool_mask=pool_mask)
        image, label = self._resize(*self._slice(vol, s))
        if self.augment and label is not None:
            image, label = self._augment(image, label, _item_generator(self.seed, self.epoch, index))
        if label is None:
            label = torch.zeros(image.shape[-2:], dtype=torch.int64)
        lesion = label == LESION
        has_lesion = bool(lesion.sum() >= self.min_lesion_pixels) and vol.labels is not None
        return self._item(vol, image, label, has_lesion, ci, s, seg_valid=vol.labels is not None,
                          pool_mask=torch.zeros(image.shape[-2:]))

    def _item(self, vol: CaseVolume, image, label, has_lesion: bool, ci: int, s: int, seg_valid: bool,
              pool_mask: torch.Tensor) -> dict:
        by_slice = None if vol.enhancement_by_slice is None else vol.enhancement_by_slice[s]
        if has_lesion and by_slice is not None and np.all(np.isfinite(by_slice)):
            # The truth of the lesion tissue this slice shows. A lesion is not uniform from slice to
            # slice (a rim-enhancing lesion's end slices are all rim): asked for the whole lesion's
            # value, one slice can only guess at the slices it does not see, and the network learns
            # a shrunk guess. Weighted by lesion area, the slices' values give back the case's.
            enhancement = torch.from_numpy(by_slice.astype(np.float32))
        elif has_lesion and vol.enhancement is not None:
            # Every slice through the lesion carries the lesion's enhancement. Measuring it on the
            # slice's pixels instead would mix in liver signal at the partial-volume rim (a cyst
            # would read +0.2 instead of 0), and evaluation compares against the case's truth.
            enhancement = torch.from_numpy(vol.enhancement.astype(np.float32))
        else:
            enhancement = torch.zeros(image.shape[0] - 1)
        return {
            "image": image.contiguous(),
            "times": torch.from_numpy(vol.times_s.astype(np.float32)),
            "label": label,
            "class_id": torch.tensor(-1 if vol.class_id is None else vol.class_id, dtype=torch.int64),
            "enhancement": enhancement,
            "has_lesion": torch.tensor(has_lesion),
            "case_index": torch.tensor(ci),
            "slice_index": torch.tensor(s),
            "seg_valid": torch.tensor(seg_valid),
            "pool_mask": pool_mask.float(),
        }


def aggregate_case(class_probs: np.ndarray | None, enhancement: np.ndarray | None,
                   lesion_area: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-case class probabilities and enhancement from per-slice predictions.

    ``class_probs (S, C)``, ``enhancement (S, P-1)``, ``lesion_area (S,)`` predicted lesion pixels
    (or probability mass). Slices are weighted by predicted lesion area; when no slice has any,
    all slices count equally (the network then found no lesion, and we say so via the area).
    """
    area = np.asarray(lesion_area, dtype=np.float64)
    weights = area / area.sum() if area.sum() > 0 else np.full(area.shape, 1.0 / max(len(area), 1))
    probs = None
    if class_probs is not None:
        # A weighted sum of float32 softmax rows can land at 1 + 2e-16 (or a hair below 0 after a
        # cast): renormalise so the case's probabilities are probabilities, in [0, 1], sum 1.
        probs = np.clip((weights[:, None] * np.asarray(class_probs, np.float64)).sum(0), 0.0, None)
        probs = np.minimum(probs / probs.sum(), 1.0) if probs.sum() > 0 else np.full(probs.shape, 1 / len(probs))
    enh = None if enhancement is None else (weights[:, None] * enhancement).sum(0)
    return probs, enh


def stitch_slices(slices: list[np.ndarray] | np.ndarray, shape: tuple[int, int] | None = None,
                  order: str = "nearest") -> np.ndarray:
    """Stack per-slice 2D maps ``(h, w)`` into a volume ``(H, W, S)``, resizing to ``shape`` first.

    ``order``: ``"nearest"`` for label maps, ``"bilinear"`` for probabilities.
    """
    stack = torch.as_tensor(np.stack(list(slices), axis=0)).float()  # (S, h, w)
    if shape is not None and tuple(stack.shape[-2:]) != tuple(shape):
        kwargs = {} if order == "nearest" else {"align_corners": False}
        stack = F.interpolate(stack[:, None], size=tuple(shape), mode=order, **kwargs)[:, 0]
    return stack.permute(1, 2, 0).numpy()
