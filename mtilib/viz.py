"""Plots the notebooks use. Every function returns a matplotlib Figure (or draws into ``ax``)
so that tests can call it headless and notebooks can show it."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from mtilib.constants import CLASS_NAMES, LESION, LIVER, PHASES

PHASE_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def _ax(ax, figsize=(5, 4)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def draw_phase_slice(images: np.ndarray, labels: np.ndarray | None, phase: int, slice_index: int,
                     show_mask: bool = True, ax=None, vmax: float | None = None, title: str | None = None):
    """One phase of one axial slice with liver (green) and lesion (red) contours.

    ``images (P, H, W, S)``, ``labels (H, W, S)`` or None. Rows of the array are drawn as image rows
    (``origin="lower"`` so the first NIfTI axis runs upwards as in radiological viewers of this
    phantom). The ipywidgets viewer of notebook 01 calls this on every slider move.
    """
    fig, ax = _ax(ax)
    n_phases, _, _, n_slices = images.shape
    if not 0 <= phase < n_phases or not 0 <= slice_index < n_slices:
        raise IndexError(f"phase {phase} / slice {slice_index} outside ({n_phases} phases, {n_slices} slices)")
    image = images[phase, :, :, slice_index]
    vmax = vmax if vmax is not None else float(np.percentile(images, 99.5))
    ax.imshow(image.T, cmap="gray", vmin=0, vmax=vmax, origin="lower")
    if show_mask and labels is not None:
        lab = labels[:, :, slice_index].T
        for value, colour in ((LIVER, "#2ca02c"), (LESION, "#d62728")):
            region = (lab >= value).astype(float) if value == LIVER else (lab == value).astype(float)
            if region.any() and not region.all():
                ax.contour(region, levels=[0.5], colors=colour, linewidths=1.0, origin="lower")
    name = PHASES[phase] if phase < len(PHASES) else f"phase {phase}"
    ax.set_title(title or f"{name}, slice {slice_index}")
    ax.set_axis_off()
    return fig


def show_phases(images: np.ndarray, labels: np.ndarray | None, slice_index: int, times_s=None,
                show_mask: bool = True, suptitle: str | None = None):
    """All phases of one slice side by side, on a shared intensity scale (so enhancement shows)."""
    n = images.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(2.8 * n, 3))
    vmax = float(np.percentile(images, 99.5))
    for p, ax in enumerate(np.atleast_1d(axes)):
        name = PHASES[p] if p < len(PHASES) else f"phase {p}"
        title = f"{name}" + (f" ({times_s[p]:.0f} s)" if times_s is not None else "")
        draw_phase_slice(images, labels, p, slice_index, show_mask, ax=ax, vmax=vmax, title=title)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def overlay(image: np.ndarray, true_mask: np.ndarray | None = None, pred_mask: np.ndarray | None = None,
            ax=None, title: str = ""):
    """A 2D image with the true (green) and predicted (magenta, dashed) lesion contours."""
    fig, ax = _ax(ax)
    ax.imshow(image.T, cmap="gray", origin="lower")
    for mask, colour, style in ((true_mask, "#2ca02c", "solid"), (pred_mask, "#e377c2", "dashed")):
        if mask is not None and mask.any() and not mask.all():
            ax.contour(mask.T.astype(float), levels=[0.5], colors=colour, linestyles=style, origin="lower")
    ax.set_title(title)
    ax.set_axis_off()
    return fig


def load_history(history) -> list[dict]:
    """A history as a list of per-epoch dicts, from a list, a run folder or a ``history.jsonl``."""
    if isinstance(history, (str, Path)):
        path = Path(history)
        if path.is_dir():
            path = path / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list(history)


def plot_history(history, metrics=("val_dice", "val_enhancement_mae", "val_accuracy")):
    """Training losses (left) and validation metrics (right) per epoch."""
    records = load_history(history)
    epochs = [r["epoch"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    loss_keys = sorted({k for r in records for k in r if k.startswith("loss_") and k not in ("loss_d",)})
    for key in loss_keys:
        left.plot(epochs, [r.get(key, np.nan) for r in records], marker=".", label=key[5:])
    left.set_xlabel("epoch")
    left.set_ylabel("loss (weighted)")
    left.set_yscale("log")
    left.legend(fontsize=8, ncol=2)
    left.set_title("training losses")
    for key in metrics:
        values = [r.get(key) for r in records]
        if any(v is not None for v in values):
            right.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=key[4:])
    right.set_xlabel("epoch")
    right.set_title("validation (per case)")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_gan_losses(history):
    """Discriminator and adversarial (generator) losses and λ_adv per epoch: the D/G dynamics."""
    records = load_history(history)
    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [r.get("loss_d", np.nan) for r in records], marker="o", label="D loss")
    ax.plot(epochs, [r.get("loss_adv", np.nan) for r in records], marker="s", label="G adversarial loss")
    ax.axhline(0.25, color="grey", ls=":", lw=1, label="LSGAN equilibrium (D outputs 0.5)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    twin = ax.twinx()
    twin.plot(epochs, [r.get("lambda_adv", 0.0) for r in records], color="black", alpha=0.4, label="λ_adv")
    twin.set_ylabel("λ_adv")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def plot_confusion(confusion, class_names=CLASS_NAMES, ax=None, normalise: bool = True):
    """Confusion matrix heatmap (rows true, columns predicted), row-normalised by default."""
    import seaborn as sns

    fig, ax = _ax(ax, (5.5, 4.5))
    cm = np.asarray(confusion, dtype=float)
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalise else cm
    sns.heatmap(shown, annot=cm.astype(int), fmt="d", cmap="Blues", cbar=False, ax=ax,
                xticklabels=class_names, yticklabels=class_names, vmin=0, vmax=1 if normalise else None)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (colour: row fraction)" if normalise else ""))
    fig.tight_layout()
    return fig


def plot_enhancement_curves(pred: np.ndarray, true: np.ndarray, classes: np.ndarray, times_s=None,
                            class_names=CLASS_NAMES):
    """Per-class mean enhancement over the post-contrast phases, true (solid) vs predicted (dashed).

    ``pred``/``true (N, P-1)``, ``classes (N,)``.
    """
    pred, true, classes = np.asarray(pred), np.asarray(true), np.asarray(classes)
    x = np.asarray(times_s[1:] if times_s is not None else np.arange(1, pred.shape[1] + 1), dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k in sorted(set(classes.tolist())):
        sel = classes == k
        colour = plt.cm.tab10(k % 10)
        ax.plot(x, true[sel].mean(0), color=colour, marker="o", label=f"{class_names[k]} (n={sel.sum()})")
        ax.plot(x, pred[sel].mean(0), color=colour, marker="x", ls="--")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("time after injection (s)" if times_s is not None else "post-contrast phase")
    ax.set_ylabel("relative enhancement")
    ax.set_title("enhancement per class: true (solid) vs predicted (dashed)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_roc(y_true: np.ndarray, probs: np.ndarray, class_names=CLASS_NAMES, ax=None):
    """One-vs-rest ROC curve of every class present in ``y_true``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _ax(ax, (5, 4.5))
    y_true = np.asarray(y_true)
    for k in sorted(set(y_true.tolist())):
        positive = (y_true == k).astype(int)
        if positive.all():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, k])
        ax.plot(fpr, tpr, label=f"{class_names[k]} (AUC {roc_auc_score(positive, probs[:, k]):.2f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("one-vs-rest ROC")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_entropy_weights(weights_per_level: list, branch_names=("spatial", "frequency", "wavelet")):
    """Mean MdIEF branch weight per skip level (bars) from ``aux["entropy_weights"]``."""
    levels = len(weights_per_level)
    means = np.array([np.asarray(w, dtype=float).mean(axis=(0, 2)) for w in weights_per_level])  # (L, 3)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.25
    for b, name in enumerate(branch_names):
        ax.bar(np.arange(levels) + (b - 1) * width, means[:, b], width, label=name)
    ax.axhline(1 / 3, color="grey", ls=":", lw=1, label="uniform")
    ax.set_xticks(range(levels), [f"level {i + 1}" for i in range(levels)])
    ax.set_ylabel("mean branch weight")
    ax.set_title("MdIEF: which domain wins, per skip level")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
