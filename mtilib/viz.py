"""Plots the notebooks use. Every function returns a matplotlib Figure (or draws into ``ax``)
so that tests can call it headless and notebooks can show it."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from mtilib.constants import CLASS_NAMES, LESION, LIVER, PHASES
from mtilib.metrics import METRIC_TASK
from mtilib.models.mdief import BRANCHES

PHASE_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def _ax(ax, figsize=(5, 4)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _labelled(fig, ax, xlabel: str, ylabel: str, title: str, legend_size: int = 8):
    """Axis labels, title and legend, a tight layout; returns the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    return fig


def draw_phase_slice(images: np.ndarray, labels: np.ndarray | None, phase: int, slice_index: int,
                     show_mask: bool = True, ax=None, vmax: float | None = None, title: str | None = None):
    """One phase of one axial slice with liver (green) and lesion (red) contours.

    ``images (P, H, W, S)``, ``labels (H, W, S)`` or None. The slice is drawn transposed with
    ``origin="lower"``: the first array axis (i) runs left to right and the second (j) upwards, as
    the axes of a plot, the way notebooks 02 and 04 describe it (so a Haar band named for rows
    shows edges of the other orientation on screen). The ipywidgets viewer of notebook 02 calls this
    on every slider move.
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
    return _labelled(fig, ax, "false positive rate", "true positive rate", "one-vs-rest ROC", legend_size=7)


def plot_entropy_weights(weights_per_level: list, branch_names=BRANCHES):
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


def plot_time_curves(t_s, curves: dict, phase_times_s=None, ax=None, ylabel: str = "concentration (mM)",
                     title: str | None = None, mark_peaks: bool = False, phase_names=PHASES):
    """Curves over time (vascular inputs, tissue concentrations, signals) with the phase times marked.

    ``t_s (T,)`` seconds; ``curves`` {label: (T,) values}, one line each; ``phase_times_s``: dotted
    vertical lines labelled with ``phase_names``; ``mark_peaks``: a dot and the time at each
    curve's maximum (the first-pass peak of an input function).
    """
    fig, ax = _ax(ax, (6, 3.6))
    t = np.asarray(t_s, dtype=float)
    for label, values in curves.items():
        values = np.asarray(values, dtype=float)
        (line,) = ax.plot(t, values, label=label)
        if mark_peaks:
            k = int(np.argmax(values))
            ax.plot(t[k], values[k], "o", color=line.get_color(), ms=5)
            ax.annotate(f"{t[k]:.1f} s", (t[k], values[k]), textcoords="offset points", xytext=(5, 3),
                        fontsize=8, color=line.get_color())
    if phase_times_s is not None:
        for p, tp in enumerate(phase_times_s):
            ax.axvline(tp, color="grey", ls=":", lw=1)
            name = phase_names[p] if p < len(phase_names) else f"phase {p}"
            ax.text(tp, 1.0, f" {name}", transform=ax.get_xaxis_transform(), rotation=90, va="top",
                    ha="left", fontsize=7, color="grey")
    ax.set_xlabel("time after injection (s)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_time_intensity(table, y: str = "relative_enhancement", regions=("lesion", "liver"),
                        class_names=CLASS_NAMES, col_wrap: int = 4, height: float = 2.4):
    """Time-intensity curves per lesion class (seaborn facets): one thin line per case and region,
    the class mean per region as a thick line.

    ``table``: tidy DataFrame as from :func:`mtilib.data.signals.signal_table` (columns ``case``,
    ``class_name``, ``region``, ``time_s`` and ``y``). Rows with NaN in ``y`` (empty regions) are
    refused: filter them first, so that nothing is averaged away silently. Returns the Figure.
    """
    import seaborn as sns

    data = table[table["region"].isin(regions)]
    if data[y].isna().any():
        raise ValueError(f"{y} has NaN rows (empty regions?); filter them (e.g. n_voxels > 0) first")
    order = [c for c in class_names if c in set(data["class_name"])]
    palette = dict(zip(regions, sns.color_palette("deep", len(regions))))
    grid = sns.relplot(data=data, x="time_s", y=y, hue="region", hue_order=list(regions), palette=palette,
                       col="class_name", col_order=order, col_wrap=min(col_wrap, len(order)), kind="line",
                       units="case", estimator=None, lw=0.7, alpha=0.45, height=height, aspect=1.15)
    grid.map_dataframe(sns.lineplot, x="time_s", y=y, hue="region", hue_order=list(regions),
                       palette=palette, errorbar=None, lw=2.5, marker="o", legend=False)
    for ax in grid.axes.flat:
        ax.axhline(0, color="grey", lw=0.6)
    grid.set_titles("{col_name}")
    grid.set_axis_labels("time after injection (s)", y.replace("_", " "))
    return grid.figure


def show_maps(maps: dict, slice_index: int, labels: np.ndarray | None = None, units: dict | None = None,
              cmap: str = "magma"):
    """Parameter maps ``{name: (H, W, S)}`` of one slice side by side, each with its colour bar and
    the lesion contour (white) when ``labels`` are given. ``units`` {name: unit} for the bar labels.
    """
    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(2.9 * n, 2.9))
    for ax, (name, volume) in zip(np.atleast_1d(axes), maps.items()):
        image = np.asarray(volume)[:, :, slice_index].T
        shown = ax.imshow(image, cmap=cmap, origin="lower")
        if labels is not None:
            lesion = (labels[:, :, slice_index] == LESION).T.astype(float)
            if lesion.any() and not lesion.all():
                ax.contour(lesion, levels=[0.5], colors="white", linewidths=0.8, origin="lower")
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
        if units and name in units:
            bar.set_label(units[name], fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def show_phase_grid(images, labels, slice_indices, row_titles, phases=(1, 2, 3), show_mask: bool = True,
                    cell_size: float = 2.3):
    """A grid of cases (rows) by phases (columns), e.g. one typical case per lesion class.

    ``images``: sequence of (P, H, W, S) arrays; ``labels``: sequence of (H, W, S) or None;
    ``slice_indices``: the slice drawn for each row; ``phases``: phase indices as columns. Each row
    has its own grey scale, shared by its phases, so that each row shows its case's enhancement.
    """
    rows, cols = len(images), len(phases)
    if not (len(slice_indices) == len(row_titles) == rows) or (labels is not None and len(labels) != rows):
        raise ValueError("images, labels, slice_indices and row_titles need one entry per row")
    fig, axes = plt.subplots(rows, cols, figsize=(cell_size * cols, cell_size * rows), squeeze=False)
    for r in range(rows):
        vmax = float(np.percentile(images[r], 99.5))
        lab = None if labels is None else labels[r]
        for c, p in enumerate(phases):
            name = PHASES[p] if p < len(PHASES) else f"phase {p}"
            draw_phase_slice(images[r], lab, p, slice_indices[r], show_mask, ax=axes[r, c], vmax=vmax)
            axes[r, c].set_title(name if r == 0 else "")
        axes[r, 0].text(-0.06, 0.5, row_titles[r], transform=axes[r, 0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Spectra, wavelet bands and MdIEF branch weights (course notebook 04)
# --------------------------------------------------------------------------------------------

BRANCH_NAMES = BRANCHES  # MdIEF's branches, in the order of its weights


def _as_array(x) -> np.ndarray:
    """A float numpy array from a numpy array or a torch tensor (any device, with or without grad)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def centred_log_spectrum(image) -> np.ndarray:
    """``log10(1 + |FFT2(image)|)`` with the zero frequency moved to the centre (``fftshift``).

    ``(H, W) -> (H, W)``. The log is needed because the zero-frequency term (the image mean times
    the number of pixels) is orders of magnitude larger than the rest of the spectrum.
    """
    return np.log10(1.0 + np.abs(np.fft.fftshift(np.fft.fft2(_as_array(image)))))


def radial_power(image, n_bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum: the mean of ``|FFT2(image)|²`` in rings of radial frequency.

    ``(H, W) -> (ring centres (n_bins,), mean power (n_bins,))``; frequencies in cycles/pixel, from
    0 to the corner of the spectrum (0.5·√2). A ring with no FFT sample is NaN, never zero.
    """
    x = _as_array(image)
    power = np.abs(np.fft.fft2(x)) ** 2
    radius = np.hypot(np.fft.fftfreq(x.shape[0])[:, None], np.fft.fftfreq(x.shape[1])[None, :])
    edges = np.linspace(0.0, radius.max() * (1 + 1e-9), n_bins + 1)
    ring = np.clip(np.digitize(radius.ravel(), edges) - 1, 0, n_bins - 1)
    counts = np.bincount(ring, minlength=n_bins)
    sums = np.bincount(ring, weights=power.ravel(), minlength=n_bins)
    mean = np.full(n_bins, np.nan)
    mean[counts > 0] = sums[counts > 0] / counts[counts > 0]
    return 0.5 * (edges[:-1] + edges[1:]), mean


def _draw_map(ax, image, title: str, signed: bool, cmap: str | None):
    image = _as_array(image)
    if signed:
        limit = float(np.abs(image).max()) or 1.0
        shown = ax.imshow(image.T, cmap=cmap or "RdBu_r", vmin=-limit, vmax=limit, origin="lower")
    else:
        shown = ax.imshow(image.T, cmap=cmap or "gray", origin="lower")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return shown


def show_map_grid(maps, titles=None, ncols: int | None = None, signed=False, cmap: str | None = None,
                  suptitle: str | None = None, cell_size: float = 2.4, colorbar: bool = False):
    """2D maps (phase images, filtered images, wavelet bands, feature maps) in a grid, each on its
    own colour scale.

    ``maps``: a sequence of ``(H, W)`` arrays or tensors, or a dict ``{title: map}``. Drawn like
    :func:`draw_phase_slice` (array transposed, ``origin="lower"``): the *first* array axis runs
    left to right. ``signed=True`` uses a diverging colour map centred on 0, for maps whose sign
    matters (high-pass images, wavelet details); a sequence of booleans sets it per map.
    """
    if isinstance(maps, dict):
        titles, maps = list(maps), list(maps.values())
    maps = list(maps)
    titles = list(titles) if titles is not None else [""] * len(maps)
    if len(titles) != len(maps):
        raise ValueError(f"{len(maps)} maps but {len(titles)} titles")
    flags = [bool(signed)] * len(maps) if np.ndim(signed) == 0 else [bool(f) for f in signed]
    if len(flags) != len(maps):
        raise ValueError(f"{len(maps)} maps but {len(flags)} 'signed' flags")
    ncols = ncols or len(maps)
    nrows = -(-len(maps) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_size * ncols, cell_size * nrows), squeeze=False)
    for ax in axes.flat[len(maps):]:
        ax.set_axis_off()
    for ax, image, title, flag in zip(axes.flat, maps, titles, flags):
        shown = _draw_map(ax, image, title, flag, cmap)
        if colorbar:
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_spectra(images, titles=None, suptitle: str | None = None, cell_size: float = 2.6):
    """Maps (top row, each on its own grey scale) and their centred log-magnitude spectra (bottom
    row, :func:`centred_log_spectrum`, one shared colour scale so that spectra can be compared).

    Spectra are drawn in the same orientation as the maps: the horizontal axis is the frequency
    along the first array axis, in cycles/pixel (±0.5 is the Nyquist limit), zero at the centre.
    """
    images = [_as_array(x) for x in images]
    titles = list(titles) if titles is not None else [""] * len(images)
    spectra = [centred_log_spectrum(image) for image in images]
    top = max(float(s.max()) for s in spectra) or 1.0
    fig, axes = plt.subplots(2, len(images), figsize=(cell_size * len(images), 2 * cell_size + 0.3),
                             squeeze=False)
    for k, (image, spectrum, title) in enumerate(zip(images, spectra, titles)):
        _draw_map(axes[0, k], image, title, signed=False, cmap=None)
        f0 = np.fft.fftshift(np.fft.fftfreq(image.shape[0]))
        f1 = np.fft.fftshift(np.fft.fftfreq(image.shape[1]))
        d0, d1 = 1.0 / image.shape[0], 1.0 / image.shape[1]
        ax = axes[1, k]
        ax.imshow(spectrum.T, cmap="viridis", origin="lower", vmin=0.0, vmax=top,
                  extent=(f0[0] - d0 / 2, f0[-1] + d0 / 2, f1[0] - d1 / 2, f1[-1] + d1 / 2))
        ax.set_xlabel("cycles/pixel", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title("log10(1 + |FFT|)", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_highpass_response(sigmas, image=None, size: int = 64, ax=None):
    """The Gaussian high-pass response ``1 − exp(−f²/2σ²)`` against radial frequency ``f`` for each
    σ (from :func:`mtilib.models.blocks.gaussian_highpass_response` on a ``size``² FFT grid), over
    the radially averaged power spectrum of ``image`` (grey, log scale, right axis) when given.
    """
    from mtilib.models.blocks import gaussian_highpass_response

    fig, ax = _ax(ax, (6.5, 3.6))
    if image is not None:
        size = _as_array(image).shape[0]
        centres, power = radial_power(image)
        twin = ax.twinx()
        twin.fill_between(centres, power, color="grey", alpha=0.25, step="mid")
        twin.set_yscale("log")
        twin.set_ylabel("image power |FFT|² (log)", color="grey")
        twin.tick_params(axis="y", colors="grey")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    freq = np.fft.fftfreq(size)
    radius = np.hypot(freq[:, None], freq[None, :]).ravel()
    order = np.argsort(radius)
    for sigma in sigmas:
        response = gaussian_highpass_response(size, size, float(sigma)).numpy().ravel()
        ax.plot(radius[order], response[order], lw=2, label=f"σ = {sigma:g}")
    ax.axvline(0.5, color="black", ls=":", lw=0.8)
    ax.set_xlim(0, radius.max())
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("radial spatial frequency f (cycles/pixel); dotted: Nyquist 0.5")
    ax.set_ylabel("high-pass response (kept fraction of amplitude)")
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    return fig


def plot_branch_entropies(entropy, weights, branch_names=BRANCH_NAMES):
    """One MdIEF level, one sample: the spectral entropy of every branch per channel (left) and the
    resulting branch weights per channel, stacked (right). ``entropy``, ``weights``: ``(3, C)``."""
    entropy, weights = _as_array(entropy), _as_array(weights)
    if entropy.shape != weights.shape or entropy.ndim != 2:
        raise ValueError(f"entropy and weights must both be (branches, channels), got {entropy.shape}, {weights.shape}")
    channels = np.arange(entropy.shape[1])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for b, name in enumerate(branch_names):
        left.plot(channels, entropy[b], marker="o", ms=3, lw=1, color=PHASE_COLOURS[b], label=name)
    left.set_xlabel("channel")
    left.set_ylabel("spectral entropy H")
    left.set_title("entropy per branch and channel (lower = more concentrated)")
    left.legend(fontsize=8)
    bottom = np.zeros(entropy.shape[1])
    for b, name in enumerate(branch_names):
        right.bar(channels, weights[b], bottom=bottom, color=PHASE_COLOURS[b], label=name, width=0.9)
        bottom += weights[b]
    right.axhline(1 / 3, color="white", ls=":", lw=1)
    right.axhline(2 / 3, color="white", ls=":", lw=1)
    right.set_xlabel("channel")
    right.set_ylabel("branch weight (stacked, sums to 1)")
    right.set_title("weights softmax(−H/τ) per channel")
    right.set_ylim(0, 1)
    fig.tight_layout()
    return fig


def plot_temperature_sweep(temperatures, mean_weights, current: float | None = None, branch_names=BRANCH_NAMES,
                           ax=None):
    """Mean branch weight against the temperature τ (log axis). ``mean_weights (T, 3)``; ``current``
    marks the module's own τ. Small τ: the lowest-entropy branch takes all; large τ: 1/3 each."""
    fig, ax = _ax(ax, (6, 3.6))
    temperatures, mean_weights = np.asarray(temperatures, dtype=float), _as_array(mean_weights)
    for b, name in enumerate(branch_names):
        ax.plot(temperatures, mean_weights[:, b], marker="o", color=PHASE_COLOURS[b], label=name)
    ax.axhline(1 / 3, color="grey", ls=":", lw=1, label="uniform (1/3)")
    if current is not None:
        ax.axvline(current, color="black", ls="--", lw=0.8, label=f"this module's τ = {current:.3g}")
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    return _labelled(fig, ax, "temperature τ", "mean branch weight", "softmax(−H/τ): τ sharpens or flattens the choice")


# --- notebooks 05-07: segmentation overlays, slice votes, enhancement scatter, curve panels -------------


def _crop_box(shape, masks, size: int) -> tuple[slice, slice]:
    """A ``size``-pixel square window inside ``shape``, centred on the first non-empty mask (else on the image)."""
    centre = np.array(shape, dtype=float) / 2
    for mask in masks:
        if mask is not None and mask.any():
            centre = np.argwhere(mask).mean(axis=0)
            break
    box = []
    for c, n in zip(centre, shape):
        width = min(size, n)
        start = int(np.clip(round(c - width / 2), 0, n - width))
        box.append(slice(start, start + width))
    return tuple(box)


def overlay_grid(images, true_masks=None, pred_masks=None, titles=None, ncols: int = 4, cell_size: float = 2.6,
                 suptitle: str | None = None, crop: int | None = None):
    """Several :func:`overlay` panels in a grid: 2D images with the true (green, solid) and the
    predicted (magenta, dashed) lesion contours.

    ``images``: a sequence of ``(H, W)`` arrays or tensors; ``true_masks``/``pred_masks``: sequences
    of the same length of ``(H, W)`` binary masks (an entry, or the whole argument, may be None);
    ``titles``: one string per panel. ``crop``: show only a ``crop × crop`` window centred on the
    true mask (or, if that is empty, the predicted one), for small lesions. Unused cells of the last
    row are blank.
    """
    images = [_as_array(x) for x in images]
    n = len(images)
    if n == 0:
        raise ValueError("overlay_grid needs at least one image")

    def _per_panel(values, name):
        values = [None] * n if values is None else list(values)
        if len(values) != n:
            raise ValueError(f"{n} images but {len(values)} {name}")
        return values

    trues = [None if m is None else np.asarray(m, dtype=bool) for m in _per_panel(true_masks, "true masks")]
    preds = [None if m is None else np.asarray(m, dtype=bool) for m in _per_panel(pred_masks, "predicted masks")]
    titles = [t or "" for t in _per_panel(titles, "titles")]
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_size * ncols, cell_size * nrows + 0.2), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    for ax, image, t, p, title in zip(axes.flat, images, trues, preds, titles):
        if crop is not None:
            box = _crop_box(image.shape, (t, p), crop)
            image, t, p = image[box], None if t is None else t[box], None if p is None else p[box]
        overlay(image, t, p, ax=ax, title=title)
        ax.title.set_fontsize(8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_slice_votes(slice_probs, lesion_area, class_names=CLASS_NAMES, true_class: int | None = None,
                     title: str | None = None):
    """How the slices of one case vote for its class.

    Top: predicted lesion area per slice (the weights of
    :func:`mtilib.data.dataset.aggregate_case`). Bottom: every slice's class probabilities
    (classes × slices heatmap) with the slice's top class marked by a dot. Slices without predicted
    lesion are hatched: area weighting gives them no vote. ``true_class`` outlines its row.
    ``slice_probs (S, C)``, ``lesion_area (S,)``.
    """
    from matplotlib.patches import Rectangle

    probs, area = _as_array(slice_probs), _as_array(lesion_area)
    if probs.ndim != 2 or area.shape != (probs.shape[0],):
        raise ValueError(f"slice_probs must be (S, C) and lesion_area (S,), got {probs.shape} and {area.shape}")
    n_slices, n_classes = probs.shape
    names = list(class_names)[:n_classes]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(5.0, 0.45 * n_slices + 2.5), 5.2), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 2.2]})
    slices = np.arange(n_slices)
    top.bar(slices, area, color="#d62728")
    top.set_ylabel("lesion pixels")
    top.set_title(title or "per-slice predictions")
    bottom.imshow(probs.T, aspect="auto", cmap="Blues", vmin=0, vmax=1, origin="upper",
                  extent=(-0.5, n_slices - 0.5, n_classes - 0.5, -0.5))
    bottom.scatter(slices, probs.argmax(1), color="black", s=12, zorder=3, label="slice's top class")
    for s in np.flatnonzero(area <= 0):
        bottom.add_patch(Rectangle((s - 0.5, -0.5), 1, n_classes, fill=False, hatch="///", edgecolor="grey",
                                   lw=0))
    if true_class is not None:
        bottom.add_patch(Rectangle((-0.5, true_class - 0.5), n_slices, 1, fill=False, edgecolor="#2ca02c", lw=2,
                                   label=f"true class: {names[true_class]}"))
    bottom.set_yticks(range(n_classes), names)
    bottom.set_xticks(slices)
    bottom.set_xlabel("slice (hatched: no predicted lesion, no vote)")
    bottom.legend(fontsize=7, loc="upper right", framealpha=0.9)
    fig.tight_layout()
    return fig


def plot_enhancement_scatter(pred, true, classes=None, phase_names=PHASES[1:], class_names=CLASS_NAMES):
    """Predicted against true relative enhancement, one panel per post-contrast phase, with the
    identity line and the phase's MAE and Pearson r in its title. ``pred``/``true (N, P-1)``;
    ``classes (N,)`` colours the points by class when given."""
    pred, true = _as_array(pred), _as_array(true)
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[1] != len(phase_names):
        raise ValueError(f"pred and true must both be (N, {len(phase_names)}), got {pred.shape} and {true.shape}")
    classes = None if classes is None else np.asarray(classes)
    fig, axes = plt.subplots(1, len(phase_names), figsize=(3.3 * len(phase_names), 3.4), squeeze=False)
    low = float(min(pred.min(), true.min()))
    high = float(max(pred.max(), true.max()))
    pad = 0.05 * (high - low or 1.0)
    for j, (ax, name) in enumerate(zip(axes[0], phase_names)):
        if classes is None:
            ax.scatter(true[:, j], pred[:, j], s=18, color=PHASE_COLOURS[0])
        else:
            for k in sorted(set(classes.tolist())):
                sel = classes == k
                ax.scatter(true[sel, j], pred[sel, j], s=18, color=plt.cm.tab10(k % 10), label=class_names[k])
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", ls=":", lw=1)
        mae = float(np.abs(pred[:, j] - true[:, j]).mean())
        r = np.corrcoef(true[:, j], pred[:, j])[0, 1] if len(true) > 1 and np.ptp(true[:, j]) and np.ptp(pred[:, j]) \
            else float("nan")
        ax.set_title(f"{name}: MAE {mae:.2f}, r {r:.2f}", fontsize=9)
        ax.set_xlabel("true RE")
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - pad, high + pad)
        ax.set_aspect("equal")
    axes[0, 0].set_ylabel("predicted RE")
    if classes is not None:
        axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_curve_panels(x, panels: dict, xlabel: str, suptitle: str | None = None, logy=False, cell_size=3.4):
    """Small multiples: one panel per entry of ``panels``, sharing the x values ``x``.

    ``panels``: ``{panel title: values (len(x),)}`` for one line, or ``{panel title: {label: values}}``
    for several lines with a legend. ``logy``: a log y axis (a bool, or one per panel). For
    quantities on different scales (two loss terms, a loss and a metric) plotted against the
    same x (a shift, a training step).
    """
    x = np.asarray(x, dtype=float)
    titles = list(panels)
    if not titles:
        raise ValueError("plot_curve_panels needs at least one panel")
    logs = [bool(logy)] * len(titles) if np.ndim(logy) == 0 else [bool(v) for v in logy]
    if len(logs) != len(titles):
        raise ValueError(f"{len(titles)} panels but {len(logs)} logy flags")
    fig, axes = plt.subplots(1, len(titles), figsize=(cell_size * len(titles) + 0.4, 3.2), squeeze=False)
    for ax, title, log in zip(axes[0], titles, logs):
        lines = panels[title]
        lines = lines if isinstance(lines, dict) else {None: lines}
        for k, (label, values) in enumerate(lines.items()):
            values = _as_array(values)
            if values.shape != x.shape:
                raise ValueError(f"panel {title!r}, line {label!r}: {values.shape} values for {x.shape} x values")
            ax.plot(x, values, marker="o" if len(x) <= 20 else None, ms=4, color=PHASE_COLOURS[k % 6],
                    label=label)
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        if any(label is not None for label in lines):
            ax.legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# The phase Transformer and the adversarial game (course notebooks 08 and 09)
# --------------------------------------------------------------------------------------------

def plot_time_encoding(times_s, features, codes=None, phase_times_s=None, phase_names=PHASES):
    """The time encoding against acquisition time.

    Left: the sinusoidal features ``(T, 2F)`` (first half sines, second half cosines, as
    :class:`~mtilib.models.blocks.TimeEncoding` concatenates them) for the times ``(T,)``, one
    line per feature, coloured from the shortest period to the longest. Right (when ``codes``
    ``(T, D)``, the projected encodings, are given): the cosine similarity of the codes of every
    pair of times. Dotted lines mark ``phase_times_s``.
    """
    times, features = _as_array(times_s), _as_array(features)
    if features.ndim != 2 or features.shape[0] != times.shape[0] or features.shape[1] % 2:
        raise ValueError(f"features must be (T, 2F) for {times.shape[0]} times, got {features.shape}")
    n_freq = features.shape[1] // 2
    ncols = 1 if codes is None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 3.8), squeeze=False)
    left = axes[0, 0]
    colours = plt.cm.viridis(np.linspace(0, 0.9, n_freq))
    for k in range(n_freq):
        left.plot(times, features[:, k], color=colours[k], lw=1.2)
        left.plot(times, features[:, n_freq + k], color=colours[k], lw=1.0, ls="--")
    left.set_xlabel("time after injection (s)")
    left.set_ylabel("feature value")
    left.set_title(f"{n_freq} sines (solid) and cosines (dashed),\nshort periods (dark) to long (light)")
    marks = [] if phase_times_s is None else list(zip(_as_array(phase_times_s), phase_names))
    for t, name in marks:
        left.axvline(t, color="grey", ls=":", lw=1)
        left.text(t, 1.08, name, ha="center", fontsize=7, color="grey")
    left.set_ylim(-1.15, 1.2)
    if codes is not None:
        codes = _as_array(codes)
        unit = codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)
        similarity = unit @ unit.T
        right = axes[0, 1]
        extent = (times[0], times[-1], times[0], times[-1])
        shown = right.imshow(similarity, origin="lower", extent=extent, cmap="magma", vmin=-1, vmax=1)
        for t, _ in marks:
            right.axvline(t, color="white", ls=":", lw=0.8)
            right.axhline(t, color="white", ls=":", lw=0.8)
        right.set_xlabel("time (s)")
        right.set_ylabel("time (s)")
        right.set_title("cosine similarity of the projected codes")
        fig.colorbar(shown, ax=right, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_phase_attention(attention: dict, pool_weights: dict | None = None, phase_names=PHASES,
                         suptitle: str | None = None):
    """Phase-to-phase attention per group (e.g. per lesion class) and the pooling weights.

    ``attention``: ``{name: (P, P)}`` (rows: the phase that asks, columns: the phase it reads;
    each row sums to 1), drawn as one heat map per name. ``pool_weights``: ``{name: (P,)}``, drawn
    as one line per name in a last panel, with the uniform weight 1/P dotted.
    """
    names = list(attention)
    if not names:
        raise ValueError("attention is empty")
    n_extra = 0 if pool_weights is None else 1
    ncols = min(4, len(names) + n_extra)
    nrows = int(np.ceil((len(names) + n_extra) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols, 2.8 * nrows), squeeze=False)
    flat = axes.ravel()
    p = _as_array(attention[names[0]]).shape[0]
    labels = [phase_names[i] if i < len(phase_names) else str(i) for i in range(p)]
    for ax, name in zip(flat, names):
        a = _as_array(attention[name])
        ax.imshow(a, cmap="Blues", vmin=0, vmax=max(0.5, float(a.max())))
        for i in range(p):
            for j in range(p):
                ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if a[i, j] > 0.35 else "black")
        ax.set_xticks(range(p), [s[:3] for s in labels], fontsize=7)
        ax.set_yticks(range(p), [s[:3] for s in labels], fontsize=7)
        ax.set_title(name, fontsize=9)
    if pool_weights is not None:
        ax = flat[len(names)]
        for k, (name, w) in enumerate(pool_weights.items()):
            ax.plot(range(p), _as_array(w), marker="o", ms=3, color=plt.cm.tab10(k % 10), label=name)
        ax.axhline(1 / p, color="grey", ls=":", lw=1)
        ax.set_xticks(range(p), [s[:3] for s in labels], fontsize=7)
        ax.set_title("pooling weights", fontsize=9)
        ax.legend(fontsize=6)
    for ax in flat[len(names) + n_extra:]:
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def gan_loss_terms(scores, kind: str = "lsgan") -> dict:
    """Per-sample terms of a GAN objective as functions of the discriminator's score ``s``:
    ``{"D, real sample": ..., "D, fake sample": ..., "G (fake sample)": ...}`` (arrays like
    ``scores``), each evaluated with :func:`mtilib.losses.discriminator_loss` /
    :func:`mtilib.losses.generator_adversarial_loss` on one sample while the other half of D's
    loss sits at its minimum."""
    import torch

    from mtilib.losses import discriminator_loss, generator_adversarial_loss

    s = torch.as_tensor(_as_array(scores), dtype=torch.float64).reshape(-1, 1)
    best_real, best_fake = {"lsgan": (1.0, 0.0), "bce": (60.0, -60.0), "hinge": (1.0, -1.0)}.get(kind, (1.0, 0.0))
    real = torch.full((1,), best_real, dtype=torch.float64)
    fake = torch.full((1,), best_fake, dtype=torch.float64)
    terms = {"D, real sample": [discriminator_loss(v, fake, kind) for v in s],
             "D, fake sample": [discriminator_loss(real, v, kind) for v in s],
             "G (fake sample)": [generator_adversarial_loss(v, kind) for v in s]}
    shape = np.shape(scores)
    return {k: np.array([float(x) for x in v]).reshape(shape) for k, v in terms.items()}


def plot_gan_objectives(kinds=("lsgan", "bce", "hinge"), scores=None):
    """One panel per GAN objective: D's loss on a real and on a fake sample, and G's loss, against
    the score D gives (:func:`gan_loss_terms`)."""
    scores = np.linspace(-2.5, 2.5, 201) if scores is None else _as_array(scores)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4), squeeze=False)
    styles = {"D, real sample": ("#2ca02c", "-"), "D, fake sample": ("#d62728", "-"),
              "G (fake sample)": ("#1f77b4", "--")}
    for ax, kind in zip(axes[0], kinds):
        for name, values in gan_loss_terms(scores, kind).items():
            colour, ls = styles[name]
            ax.plot(scores, values, color=colour, ls=ls, label=name)
        ax.set_ylim(-0.2 if kind != "hinge" else -2.7, 4)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel("score D gives (unbounded)")
        ax.set_title(kind)
    axes[0, 0].set_ylabel("loss")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_runs(runs: dict, keys, x: str = "step", titles: dict | None = None, reference: dict | None = None):
    """Compare runs: one panel per key of their history records, one line per run.

    ``runs``: ``{run name: [record, ...]}`` (records are dicts holding ``x`` and the keys, like
    the training history or :func:`mtilib.train.adversarial.play_heads_game`'s). ``titles``:
    ``{key: panel title}``. ``reference``: ``{key: value}`` drawn as a dotted line.
    """
    keys = list(keys)
    ncols = min(3, len(keys))
    nrows = int(np.ceil(len(keys) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.1 * nrows), squeeze=False)
    flat = axes.ravel()
    for ax, key in zip(flat, keys):
        for k, (name, records) in enumerate(runs.items()):
            xs = [r[x] for r in records if key in r]
            ys = [r[key] for r in records if key in r]
            ax.plot(xs, ys, color=plt.cm.tab10(k % 10), lw=1.4, label=name)
        if reference and key in reference:
            ax.axhline(reference[key], color="grey", ls=":", lw=1)
        ax.set_title((titles or {}).get(key, key), fontsize=9)
        ax.set_xlabel(x)
    for ax in flat[len(keys):]:
        ax.set_axis_off()
    flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_score_distributions(scores: dict, ax=None, bins: int = 30, title: str = "discriminator scores"):
    """Histograms of D's scores, one per group (``{name: (N,)}``), on shared bins."""
    fig, ax = _ax(ax, (6, 3.5))
    arrays = {k: _as_array(v).ravel() for k, v in scores.items()}
    values = np.concatenate(list(arrays.values()))
    edges = np.linspace(values.min(), values.max() + 1e-9, bins + 1)
    for k, (name, v) in enumerate(arrays.items()):
        ax.hist(v, bins=edges, alpha=0.5, color=plt.cm.tab10(k % 10), label=f"{name} (mean {v.mean():.2f})")
    ax.set_xlabel("score")
    ax.set_ylabel("slices")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_results(rows, keys=(("dice", "Dice ↑"), ("enhancement_mae", "enh. MAE ↓"), ("accuracy", "accuracy ↑")),
                 reference: str = "mtinet"):
    """The results table as bars: one panel per metric, mean ± std over seeds per network.

    ``rows``: the ``rows`` of ``docs/results.json`` (each ``{"network": name, key: [mean, std], ...}``;
    a network without a task has ``[None, None]`` and is left out of that panel; a task listed in
    the row's ``failed`` (collapsed outputs) gets no bar either, only its name under "failed").
    ``reference``'s mean is drawn as a dotted line so that each bar reads as better or worse than it.
    """
    keys = list(keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], keys):
        task = METRIC_TASK[key]
        has_task = [r for r in rows if r[key][0] is not None]
        shown = [r for r in has_task if task not in r.get("failed", {})]
        failed = [r["network"] for r in has_task if task in r.get("failed", {})]
        names = [r["network"] for r in shown]
        means = np.array([r[key][0] for r in shown])
        stds = np.array([r[key][1] for r in shown])
        colours = ["#c44e52" if n == reference else "#4c72b0" for n in names]
        ax.barh(np.arange(len(shown)), means, xerr=stds, color=colours, alpha=0.85, capsize=3)
        ax.set_yticks(np.arange(len(shown)), names, fontsize=8)
        ax.invert_yaxis()
        ref = [r[key][0] for r in shown if r["network"] == reference]
        if ref:
            ax.axvline(ref[0], color="grey", ls=":", lw=1)
        if len(shown):
            ax.set_xlim(0.0, float((means + stds).max()) * 1.03)  # bars from zero: lengths compare honestly
        if failed:
            ax.set_xlabel("failed (constant output): " + ", ".join(failed), fontsize=7, color="#c44e52")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_robustness(entries, rows=None, keys=(("dice", "Dice"), ("enhancement_mae", "abs. enhancement error"),
                                               ("accuracy", "accuracy"))):
    """Change of each network's pooled test mean under each acquisition shift, with its 95 %
    bootstrap interval: one panel per metric, one row per network, one colour per shift; the
    dotted line is no change.

    ``entries``: ``docs/results.json``'s ``robustness`` (each ``{"network", "shift", key:
    {"change", "low", "high", ...}}``). ``rows`` (its ``rows``) leaves out tasks that failed.
    """
    failed = {(r["network"], t) for r in rows or () for t in r.get("failed", {})}
    shifts = list(dict.fromkeys(e["shift"] for e in entries))
    colours = plt.get_cmap("tab10")(np.arange(len(shifts)) % 10)
    keys = list(keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 0.5 + 0.32 * len(entries) / max(len(shifts), 1)
                                                    + 1.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], keys):
        kept = [e for e in entries if key in e and "failed" not in e[key]
                and (e["network"], METRIC_TASK[key]) not in failed]
        networks = list(dict.fromkeys(e["network"] for e in kept))
        for i, shift in enumerate(shifts):
            mine = [e for e in kept if e["shift"] == shift]
            y = np.array([networks.index(e["network"]) for e in mine]) + (i - (len(shifts) - 1) / 2) * 0.18
            change = np.array([e[key]["change"] for e in mine])
            err = np.array([[e[key]["change"] - e[key]["low"], e[key]["high"] - e[key]["change"]] for e in mine]).T
            ax.errorbar(change, y, xerr=err.reshape(2, -1), fmt="o", ms=3, lw=1, color=colours[i],
                        label=shift if ax is axes[0][0] else None)
        ax.axvline(0.0, color="grey", ls=":", lw=1)
        ax.set_yticks(np.arange(len(networks)), networks, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{title}: change under shift", fontsize=10)
    fig.legend(loc="lower center", ncol=min(len(shifts), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


# --- time to accuracy (docs/benchmarks.md) ----------------------------------------------------------

def _history_records(history) -> list[dict]:
    """:func:`load_history`, also accepting the JSON string a checkpoint stores (``state["history"]``)."""
    if isinstance(history, str) and history.lstrip().startswith("["):
        return json.loads(history)
    return load_history(history)


def training_minutes(history) -> list[float]:
    """Wall-clock minutes since the start of training at the end of each epoch of ``history``.

    ``elapsed_s`` of a record when present (training, validation and checkpoints); older records
    lack it and count ``train_seconds`` plus ``val_seconds`` (when recorded) after the last known time.
    """
    minutes, seconds = [], 0.0
    for record in _history_records(history):
        if record.get("elapsed_s") is not None:
            seconds = float(record["elapsed_s"])
        else:
            seconds += float(record.get("train_seconds") or 0.0) + float(record.get("val_seconds") or 0.0)
        minutes.append(seconds / 60)
    return minutes


def meets_target(value, op: str, target: float) -> bool:
    """``value op target`` for ``op`` ``">="`` or ``"<="``; ``False`` for a missing value (``None``)."""
    if op not in (">=", "<="):
        raise ValueError(f"op must be '>=' or '<=', not {op!r}")
    return value is not None and bool(value >= target if op == ">=" else value <= target)


def minutes_to_targets(history, targets: dict) -> dict[str, float | None]:
    """For each ``{metric: (op, value)}`` of ``targets`` (e.g. ``mtilib.metrics.COURSE_TARGETS``),
    the minute (:func:`training_minutes`) of the first epoch whose validation ``val_<metric>`` met
    it (``op`` ``">="`` or ``"<="``); ``None`` when no epoch did."""
    records = _history_records(history)
    minutes = training_minutes(records)
    out: dict[str, float | None] = {}
    for metric, (op, target) in targets.items():
        out[metric] = next((m for m, r in zip(minutes, records) if meets_target(r.get(f"val_{metric}"), op, target)),
                           None)
    return out


_METRIC_LABELS = {"dice": "Dice", "enhancement_mae": "enhancement MAE", "hd95_mm": "HD95 (mm)",
                  "assd_mm": "ASSD (mm)", "auc": "AUC", "macro_f1": "macro-F1"}


def plot_time_to_accuracy(history, targets: dict, path: str | Path | None = None, dpi: int = 90):
    """One small panel per target metric: the validation value after each epoch against minutes of
    training, the target as a dashed line and its first crossing as a dotted one. Saved as PNG to
    ``path`` when given (about 40 KB at the default ``dpi``). Drawn on an Agg canvas, outside pyplot,
    so that it works headless and leaves no open figure behind."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = _history_records(history)
    minutes = training_minutes(records)
    reached = minutes_to_targets(records, targets)
    fig = Figure(figsize=(3.2 * len(targets), 2.7))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(targets), squeeze=False)[0]
    for ax, (metric, (op, target)) in zip(axes, targets.items()):
        values = [np.nan if r.get(f"val_{metric}") is None else r[f"val_{metric}"] for r in records]
        ax.plot(minutes, values, marker=".", color="#4c72b0", lw=1.2)
        ax.axhline(target, color="#c44e52", ls="--", lw=1, label=f"target {'≥' if op == '>=' else '≤'} {target:g}")
        if reached[metric] is not None:
            ax.axvline(reached[metric], color="grey", ls=":", lw=1, label=f"met at {reached[metric]:.1f} min")
        name = _METRIC_LABELS.get(metric, metric.replace("_", " "))
        ax.set_title(f"validation {name} {'↑' if op == '>=' else '↓'}", fontsize=9)
        ax.set_xlabel("minutes of training", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig


# --- the MTI-Net block diagram (notebooks 00 and 04-10) --------------------------------------------------

#: The blocks of the diagram: name -> (x, y, width, height, label), in the diagram's own units.
MTINET_BLOCKS: dict[str, tuple[float, float, float, float, str]] = {
    "inputs": (0.0, 2.3, 1.9, 1.4, "4 phases\npre · arterial ·\nvenous · delayed\n+ their times"),
    "encoder": (2.6, 2.3, 1.9, 1.4, "shared encoder\n(each phase\nseparately)"),
    "mdief": (5.3, 4.4, 2.3, 1.3, "MdIEF\nfuses the phases\nat each skip level"),
    "transformer": (5.3, 0.3, 2.3, 1.3, "phase Transformer\n(bottleneck,\ntime-aware)"),
    "decoder": (8.4, 2.3, 1.7, 1.4, "decoder"),
    "mask": (11.0, 4.4, 2.5, 1.3, "lesion mask\n(segmentation)"),
    "tim": (11.0, 2.3, 2.5, 1.4, "TIM\npooling under s0 ·\nFiLM · consistency"),
    "heads": (11.0, 0.3, 2.5, 1.3, "heads\nenhancement ê ·\nclass"),
    "tdd": (14.3, 0.3, 2.6, 1.3, "TDD, the adversary:\ndo ê and class\nagree?"),
}

#: Arrows of the diagram: (from, to, label, style) with style "-" (data), "<->" (both ways) or "--" (adversarial).
MTINET_ARROWS = (
    ("inputs", "encoder", "", "-"),
    ("encoder", "mdief", "skips", "-"),
    ("encoder", "transformer", "bottleneck", "-"),
    ("mdief", "decoder", "", "-"),
    ("transformer", "decoder", "", "-"),
    ("decoder", "mask", "", "-"),
    ("decoder", "tim", "s0", "-"),
    ("tim", "heads", "", "<->"),
    ("transformer", "heads", "pooled summary", "-"),
    ("heads", "tdd", "", "--"),
)

#: What each course notebook highlights in the diagram.
NOTEBOOK_PARTS: dict[str, tuple[str, ...]] = {
    "04": ("mdief",), "05": ("encoder", "decoder", "mask"), "06": ("tim", "heads"), "07": ("heads",),
    "08": ("transformer",), "09": ("tdd",), "10": tuple(MTINET_BLOCKS),
}


def _anchor(box, towards):
    """The point where the straight line from the centre of ``box`` to ``towards`` leaves the box."""
    x, y, w, h = box[:4]
    cx, cy = x + w / 2, y + h / 2
    dx, dy = towards[0] - cx, towards[1] - cy
    scale = min((w / 2) / abs(dx) if dx else np.inf, (h / 2) / abs(dy) if dy else np.inf)
    return cx + dx * scale, cy + dy * scale


def draw_mtinet(highlight=None, ax=None, title: str | None = None):
    """MTI-Net's block diagram: phases → shared encoder → MdIEF on the skips and the phase
    Transformer at the bottleneck → decoder → lesion mask and the preliminary mask s0 → TIM ↔ heads
    → TDD. ``highlight``: a block name of :data:`MTINET_BLOCKS`, a tuple of them, or a notebook
    number of :data:`NOTEBOOK_PARTS` (``"06"``); those blocks are coloured, the others grey.
    Returns the figure."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    if highlight is None:
        lit = set(MTINET_BLOCKS)
    elif isinstance(highlight, str) and highlight in NOTEBOOK_PARTS:
        lit = set(NOTEBOOK_PARTS[highlight])
    else:
        lit = {highlight} if isinstance(highlight, str) else set(highlight)
    unknown = lit - set(MTINET_BLOCKS)
    if unknown:
        raise ValueError(f"unknown block(s) {sorted(unknown)}; choose from {list(MTINET_BLOCKS)} "
                         f"or a notebook number of {list(NOTEBOOK_PARTS)}")
    fig, ax = _ax(ax, figsize=(12.0, 4.0))
    for name, (x, y, w, h, label) in MTINET_BLOCKS.items():
        on = name in lit
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05,rounding_size=0.15",
                                    facecolor="#dbe6f4" if on else "#f2f2f2", edgecolor="#4c72b0" if on else "#b0b0b0",
                                    linewidth=2.0 if on else 1.0, gid=f"block:{name}:{'on' if on else 'off'}"))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=8.5,
                color="#1a1a1a" if on else "#8a8a8a", fontweight="bold" if on else "normal")
    for start, end, label, style in MTINET_ARROWS:
        a, b = MTINET_BLOCKS[start], MTINET_BLOCKS[end]
        ca = (a[0] + a[2] / 2, a[1] + a[3] / 2)
        cb = (b[0] + b[2] / 2, b[1] + b[3] / 2)
        p, q = _anchor(a, cb), _anchor(b, ca)
        on = start in lit and end in lit
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle="<|-|>" if style == "<->" else "-|>", mutation_scale=12,
                                     linestyle="--" if style == "--" else "-", linewidth=1.4,
                                     color="#4c72b0" if on else "#9a9a9a", shrinkA=2, shrinkB=2))
        if label:
            ax.text((p[0] + q[0]) / 2, (p[1] + q[1]) / 2 + 0.12, label, ha="center", va="bottom", fontsize=7.5,
                    color="#4c72b0" if on else "#8a8a8a", style="italic")
    ax.set_xlim(-0.2, 17.1)
    ax.set_ylim(0.0, 6.0)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- frames of the interactive explorers (mtilib.widgets wraps them in sliders) ----------------------------

def slice_curve(images: np.ndarray, mask: np.ndarray | None, slice_index: int) -> np.ndarray | None:
    """Mean signal per phase under ``mask`` on one slice: ``images (P, H, W, S)``, ``mask (H, W, S)``
    -> ``(P,)``; None when the mask has no voxel on that slice (a time–intensity curve of an ROI)."""
    if mask is None:
        return None
    region = np.asarray(mask, dtype=bool)[:, :, slice_index]
    if not region.any():
        return None
    return np.array([float(images[p, :, :, slice_index][region].mean()) for p in range(images.shape[0])])


def _lesion_mask_of(prediction) -> np.ndarray | None:
    """A predicted lesion mask from a label map ``(H, W, S)``, a boolean mask or a CasePrediction."""
    if prediction is None:
        return None
    if hasattr(prediction, "lesion_mask"):
        return prediction.lesion_mask
    prediction = np.asarray(prediction)
    return prediction if prediction.dtype == bool else prediction == LESION


def draw_viewer_frame(images: np.ndarray, labels: np.ndarray | None, phase: int, slice_index: int,
                      prediction=None, times_s=None, show_mask: bool = True, vmax: float | None = None,
                      title: str | None = None):
    """One frame of the phase × slice viewer: the slice in one phase with the liver and lesion
    contours (and the predicted lesion, magenta dashed), beside the time–intensity curves of the
    lesion, the liver and the predicted lesion *on that slice* (the current phase marked).

    ``images (P, H, W, S)``; ``labels (H, W, S)`` or None; ``prediction``: a label map, a boolean
    lesion mask or a :class:`~mtilib.train.inference.CasePrediction`; ``times_s (P,)``: the phase
    times (default: the phase index). Returns the figure."""
    fig, (ax_image, ax_curve) = plt.subplots(1, 2, figsize=(8.6, 3.7), gridspec_kw={"width_ratios": [1, 1.2]})
    draw_phase_slice(images, labels, phase, slice_index, show_mask, ax=ax_image, vmax=vmax, title=title)
    predicted = _lesion_mask_of(prediction)
    if show_mask and predicted is not None:
        region = predicted[:, :, slice_index].T.astype(float)
        if region.any() and not region.all():
            ax_image.contour(region, levels=[0.5], colors="#e377c2", linestyles="dashed", linewidths=1.2,
                             origin="lower")
    times = np.arange(images.shape[0]) if times_s is None else np.asarray(times_s, dtype=float)
    curves = {"lesion (truth)": (labels == LESION if labels is not None else None, "#d62728", "-"),
              "liver": (labels == LIVER if labels is not None else None, "#2ca02c", "-"),
              "lesion (predicted)": (predicted, "#e377c2", "--")}
    for name, (mask, colour, style) in curves.items():
        curve = slice_curve(images, mask, slice_index)
        if curve is not None:
            ax_curve.plot(times, curve, style, marker="o", color=colour, label=name)
    ax_curve.axvline(times[phase], color="grey", ls=":", lw=1)
    ax_curve.set_xlabel("time after injection (s)" if times_s is not None else "phase")
    ax_curve.set_ylabel("mean signal on this slice")
    ax_curve.set_title("time–intensity curves", fontsize=10)
    if ax_curve.lines:
        ax_curve.legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw_tofts_curve(t_s, cp_art, cp_pv, params: dict, reference: dict | None = None, phase_times_s=None):
    """The tissue concentration of the dual-input extended Tofts model for ``params``
    (``ktrans_per_min``, ``ve``, ``vp``, ``fa``), beside a ``reference`` tissue (dashed), with the
    phase times marked: the frame of the Tofts explorer of notebook 01."""
    from mtilib.data.physics import extended_tofts_dual_input

    curves = {"this tissue": extended_tofts_dual_input(t_s, cp_art, cp_pv, **params)}
    if reference is not None:
        curves["reference"] = extended_tofts_dual_input(t_s, cp_art, cp_pv, **reference)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    plot_time_curves(t_s, curves, phase_times_s, ax=ax,
                     title=", ".join(f"{k.replace('_per_min', '')} = {v:.2f}" for k, v in params.items()))
    if reference is not None:
        ax.lines[1].set_linestyle("--")
    fig.tight_layout()
    return fig


def entropy_softmax(entropies, tau: float) -> np.ndarray:
    """MdIEF's branch weights ``softmax_b(−H_b / τ)`` for entropies ``H_b`` (numpy, for display)."""
    logits = -np.asarray(entropies, dtype=float) / float(tau)
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def draw_temperature_weights(entropies: dict, tau: float):
    """Bars of MdIEF's branch weights for the entropies ``{branch: H}`` at temperature ``tau``."""
    weights = entropy_softmax(list(entropies.values()), tau)
    fig, ax = plt.subplots(figsize=(5.2, 2.8))
    bars = ax.bar([f"{b}\nH = {h:.3f}" for b, h in entropies.items()], weights, color=PHASE_COLOURS[:len(weights)])
    for bar, w in zip(bars, weights):
        ax.text(bar.get_x() + bar.get_width() / 2, w + 0.02, f"{w:.2f}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("weight")
    ax.set_title(f"τ = {tau:g}", fontsize=10)
    fig.tight_layout()
    return fig


def draw_highpass_frame(image, sigma: float):
    """A 2D image, its Gaussian high-pass at ``sigma`` (cycles/pixel) and the share of the image's
    energy the high-pass keeps: the frame of the σ explorer of notebook 04."""
    import torch

    from mtilib.models.blocks import gaussian_highpass

    image = np.asarray(image, dtype=np.float32)
    high = gaussian_highpass(torch.from_numpy(image), float(sigma)).numpy()
    kept = float((high ** 2).sum() / max((image ** 2).sum(), 1e-12))
    fig, axes = plt.subplots(1, 2, figsize=(6.6, 3.2))
    axes[0].imshow(image.T, cmap="gray", origin="lower")
    axes[0].set_title("image", fontsize=10)
    limit = float(np.abs(high).max()) or 1.0
    axes[1].imshow(high.T, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
    axes[1].set_title(f"high-pass σ = {sigma:g}: keeps {kept:.1%} of the energy", fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_dice_vs_size(table, size: str = "lesion_diameter_mm", metric: str = "dice", group: str = "class_name"):
    """Per-case ``metric`` against lesion ``size`` (a per-case table such as ``CaseMetrics.table()``),
    one colour per ``group``; missed lesions (metric 0) drawn as crosses. Returns the figure."""
    import pandas as pd

    frame = pd.DataFrame(table)
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    groups = list(dict.fromkeys(frame[group])) if group in frame else [None]
    colours = plt.get_cmap("tab10")(np.arange(len(groups)) % 10)
    for colour, name in zip(colours, groups):
        rows = frame if name is None else frame[frame[group] == name]
        hit = rows[rows[metric] > 0]
        ax.scatter(hit[size], hit[metric], color=colour, s=28, label=name)
        missed = rows[rows[metric] <= 0]
        if len(missed):
            ax.scatter(missed[size], missed[metric], color=colour, marker="x", s=40)
    ax.set_xlabel(size.replace("_mm", " (mm)").replace("_", " "))
    ax.set_ylabel(metric)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"{metric} per case against lesion size (x: missed)", fontsize=10)
    if groups != [None]:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_conditions(frame, lower_is_better=("enhancement MAE",)):
    """A table of conditions (rows) × metrics (columns) as bars, one panel per metric (the arrow in
    the title says which way is better): the protocol comparison of notebook 08."""
    import pandas as pd

    frame = pd.DataFrame(frame)
    fig, axes = plt.subplots(1, len(frame.columns), figsize=(3.6 * len(frame.columns), 3.0), squeeze=False)
    for ax, column in zip(axes[0], frame.columns):
        ax.barh(np.arange(len(frame)), frame[column].to_numpy(dtype=float), color=PHASE_COLOURS[:len(frame)])
        ax.set_yticks(np.arange(len(frame)), [str(i) for i in frame.index], fontsize=8)
        ax.invert_yaxis()
        for k, value in enumerate(frame[column].to_numpy(dtype=float)):
            ax.text(value, k, f" {value:.3f}", va="center", fontsize=8)
        ax.set_xlim(0, float(frame[column].max()) * 1.3 or 1.0)
        ax.set_title(f"{column} {'↓' if column in lower_is_better else '↑'}", fontsize=10)
    fig.tight_layout()
    return fig
