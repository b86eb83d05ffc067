"""Losses (DESIGN §3): ``L = L_seg + λ_reg·SmoothL1 + λ_cls·CE + λ_tim·L_tim + λ_adv·L_adv``.

Batches are dicts: ``image (B, P, H, W)``, ``times (B, P)`` s, ``label (B, H, W)`` int64 with 0/1/2,
``class_id (B,)`` int64, ``enhancement (B, P-1)``, ``has_lesion (B,)`` bool. Enhancement and class
exist per *case* but are only visible on slices that show the lesion, so their losses are masked
to lesion slices (``has_lesion``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from mtilib.constants import LESION
from mtilib.data.enhancement import relative_enhancement


@dataclass
class LossWeights:
    """λ's of the total loss; defaults 1, 1, 0.5, 0.1, 0.01 (DESIGN §3.8) (seg, reg, cls, tim, adv)."""

    seg: float = 1.0
    reg: float = 1.0
    cls: float = 0.5
    tim: float = 0.1
    adv: float = 0.01
    prelim: float = 0.5  # deep supervision of TIM's preliminary lesion map s0 (inside L_seg)
    tim_second_order: float = 1.0  # relative weight of the covariance term inside L_tim
    smooth_l1_beta: float = 0.1
    label_smoothing: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph (so DDP sees every parameter used)."""
    return like.sum() * 0.0


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, include_background: bool = False,
                   eps: float = 1e-5) -> torch.Tensor:
    """1 − mean over classes of the batch-pooled soft Dice. ``logits (B, K, H, W)``, ``labels (B, H, W)``.

    Pooling over the whole batch (not per image) keeps the loss defined on slices without lesion.
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(labels.long(), probs.shape[1]).permute(0, 3, 1, 2).float()
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * intersection + eps) / (denominator + eps)).mean()


def dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor, class_weights=None) -> torch.Tensor:
    """Soft Dice (foreground classes) + cross-entropy. ``(B, K, H, W), (B, H, W) -> scalar``."""
    return soft_dice_loss(logits, labels) + F.cross_entropy(logits.float(), labels.long(), weight=class_weights)


def binary_dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Dice + BCE for one-channel logits ``(B, 1, H, W)`` against a binary ``(B, H, W)`` target."""
    logits = logits.float()[:, 0]
    target = target.float()
    probs = torch.sigmoid(logits)
    dice = 1 - (2 * (probs * target).sum() + eps) / (probs.sum() + target.sum() + eps)
    return dice + F.binary_cross_entropy_with_logits(logits, target)


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, beta: float = 0.1):
    """SmoothL1 averaged over the samples where ``mask`` is true; 0 (graph kept) when none are.

    ``pred, target (B, D)``, ``mask (B,)`` bool. Equal to ``smooth_l1_loss(pred[mask], target[mask])``
    but computed with the mask as weights: no boolean indexing, so no device-to-host sync on a GPU.
    """
    weight = mask.to(torch.float32)
    target = torch.where(mask[:, None], target.float(), pred.detach().float())  # masked-out rows: loss 0
    per_sample = F.smooth_l1_loss(pred.float(), target, beta=beta, reduction="none").mean(-1)
    return (per_sample * weight).sum() / weight.sum().clamp_min(1.0)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                         class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0):
    """Cross-entropy over the samples where ``mask`` is true, with optional class weights and label
    smoothing; 0 (graph kept) when none are.

    ``logits (B, C)``, ``target (B,)`` (any value where masked out, e.g. −1), ``mask (B,)`` bool.
    Equal to PyTorch's weighted mean over ``logits[mask]`` (sum of per-sample losses over the sum of
    the targets' class weights), computed without boolean indexing (no host sync on a GPU).
    """
    weight = mask.to(torch.float32)
    safe_target = torch.where(mask, target.long(), torch.zeros_like(target, dtype=torch.long))
    per_sample = F.cross_entropy(logits.float(), safe_target, weight=class_weights, reduction="none",
                                 label_smoothing=label_smoothing)
    denominator = weight if class_weights is None else weight * class_weights[safe_target]
    return (per_sample * weight).sum() / denominator.sum().clamp_min(1e-12)


def pixel_enhancement(images: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """Pixel-wise relative enhancement ``(S_p − S_pre) / S_pre`` for p ≥ 1.

    ``(B, P, H, W) -> (B, P-1, H, W)``. ``S_pre`` is floored at ``floor`` (images are normalised so
    that tissue sits near 1) to keep air pixels from exploding the ratio.
    """
    pre = images[:, :1].clamp_min(floor)
    return (images[:, 1:] - pre) / pre


def weighted_covariance(values: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Covariance of D pixel features under spatial weights. ``(B, D, H, W), (B, H, W) -> (B, D, D)``.

    Weights must be non-negative. A weight of exactly 0 (a lesion probability that underflowed)
    passes a zero gradient: the derivative of ``sqrt(w)`` at 0 is infinite, and the training loss
    once turned a whole step's gradients into NaN through it.
    """
    w = weights.unsqueeze(1)
    total = w.sum((-2, -1), keepdim=True) + eps
    mean = (values * w).sum((-2, -1), keepdim=True) / total
    # the root of the positive weights only: the same values and, where w > 0, the same gradients
    # bit for bit as w.sqrt(); where w == 0 the root is 0 and its gradient 0 instead of inf · 0
    positive = w > 0
    root = torch.where(positive, w, torch.ones_like(w)).sqrt() * positive
    centred = (values - mean) * root
    flat = centred.flatten(2)
    return flat @ flat.transpose(1, 2) / total.flatten(1).unsqueeze(-1)


def tim_consistency_loss(images: torch.Tensor, lesion_prob: torch.Tensor, true_lesion: torch.Tensor,
                         pred_enhancement: torch.Tensor, mask: torch.Tensor, beta: float = 0.1,
                         second_order_weight: float = 1.0, second_mask: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """TIM's higher-order consistency between segmentation and regression (DESIGN §3.5c).

    First order: the regressed ``ê`` agrees with the enhancement *measured from the input phases
    under the predicted soft mask* (:func:`relative_enhancement`). Second order: the covariance of
    pixel-wise enhancement under the predicted mask matches the one under the true mask (Frobenius
    distance). Both over lesion slices (``mask``). Returns ``(first, second_order_weight·second)``.

    ``images (B, P, H, W)``, ``lesion_prob``/``true_lesion (B, H, W)``, ``pred_enhancement (B, P-1)``.
    ``second_mask`` (default ``mask``): the rows of the second-order term, which needs the true
    mask (box-labelled slices take part in the first order only).
    """
    if not bool(mask.any()):
        zero = _zero(pred_enhancement) + _zero(lesion_prob)
        return zero, zero
    second_mask = mask if second_mask is None else second_mask
    measured = relative_enhancement(images[mask].float(), lesion_prob[mask].float(), phase_axis=1)
    first = F.smooth_l1_loss(pred_enhancement[mask].float(), measured, beta=beta)
    if not bool(second_mask.any()):
        return first, _zero(lesion_prob)
    pix = pixel_enhancement(images[second_mask].float())
    cov_pred = weighted_covariance(pix, lesion_prob[second_mask].float())
    cov_true = weighted_covariance(pix, true_lesion[second_mask].float())
    second = (cov_pred - cov_true).pow(2).sum((-2, -1)).mean()
    return first, second_order_weight * second


# --- adversarial objectives (scores are unbounded reals) ------------------------------------------

GAN_KINDS = ("lsgan", "bce", "hinge")


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str = "lsgan") -> torch.Tensor:
    """Loss of D for scores on real and fake samples."""
    if kind == "lsgan":
        return 0.5 * ((real - 1).pow(2).mean() + fake.pow(2).mean())
    if kind == "bce":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ValueError(f"unknown GAN objective {kind!r}; choose from {GAN_KINDS}")


def generator_adversarial_loss(fake: torch.Tensor, kind: str = "lsgan") -> torch.Tensor:
    """Loss of G (the network) for D's scores on its outputs: make them look real."""
    if kind == "lsgan":
        return 0.5 * (fake - 1).pow(2).mean()
    if kind == "bce":
        return F.softplus(-fake).mean()
    if kind == "hinge":
        return -fake.mean()
    raise ValueError(f"unknown GAN objective {kind!r}; choose from {GAN_KINDS}")


def multitask_loss(out, batch: dict, weights: LossWeights, class_weights: torch.Tensor | None = None):
    """The supervised part of the total loss (no adversarial term; the trainer adds it).

    ``out``: an :class:`~mtilib.models.MTIOutput`; tasks it lacks contribute nothing.
    Returns ``(total, parts)`` with ``parts`` as detached 0-d tensors for logging.
    """
    lesion_slices = batch["has_lesion"].bool()
    # box-labelled slices have no label map: the segmentation terms see only the others
    # (``seg_index``, indices of the rows with a mask, built on the host by the trainer; absent or
    # None when every row has one)
    seg_index = batch.get("seg_index")
    parts: dict[str, torch.Tensor] = {}
    if out.seg_logits is not None:
        if seg_index is None:
            seg_logits, labels = out.seg_logits, batch["label"]
            prelim = out.aux.get("prelim_logits")
        else:
            seg_logits, labels = out.seg_logits[seg_index], batch["label"][seg_index]
            prelim = out.aux["prelim_logits"][seg_index] if "prelim_logits" in out.aux else None
        if labels.shape[0] == 0:  # no row with a mask: no segmentation loss (graph kept)
            parts["seg"] = _zero(out.seg_logits)
            if prelim is not None:
                parts["prelim"] = _zero(out.aux["prelim_logits"])
        else:
            parts["seg"] = weights.seg * dice_ce_loss(seg_logits, labels)
            if prelim is not None:
                parts["prelim"] = weights.seg * weights.prelim * binary_dice_bce_loss(prelim, labels == LESION)
    if out.enhancement is not None:
        parts["reg"] = weights.reg * masked_smooth_l1(
            out.enhancement, batch["enhancement"], lesion_slices, weights.smooth_l1_beta
        )
    if out.class_logits is not None:
        parts["cls"] = weights.cls * masked_cross_entropy(
            out.class_logits, batch["class_id"], lesion_slices, class_weights, weights.label_smoothing
        )
    if "prelim_logits" in out.aux and out.enhancement is not None and weights.tim > 0:
        lesion_prob = torch.softmax(out.seg_logits.float(), dim=1)[:, LESION]
        with_mask = lesion_slices if "seg_valid" not in batch else lesion_slices & batch["seg_valid"].bool()
        first, second = tim_consistency_loss(
            batch["image"], lesion_prob, batch["label"] == LESION, out.enhancement, lesion_slices,
            weights.smooth_l1_beta, weights.tim_second_order, second_mask=with_mask,
        )
        parts["tim"] = weights.tim * (first + second)
    total = sum(parts.values())
    # Detached tensors, not floats: the trainer sums them on the device and reads them at log points.
    return total, {k: v.detach() for k, v in parts.items()}
