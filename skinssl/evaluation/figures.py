"""Report figures (matplotlib, no display needed): ROC curves, confusion matrices, label-relation
attention and Grad-CAM overlays, each readable on its own (titles, axis names, class names)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from skinssl.evaluation.classification import roc_auc
from skinssl.labels import head


def roc_points(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0)."""
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order].astype(bool)
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # last case of each threshold
    tp = np.cumsum(positive)[last]
    fp = (last + 1) - tp
    return np.r_[0, fp / max(1, (~positive).sum())], np.r_[0, tp / max(1, positive.sum())]


def roc_figure(probs: np.ndarray, target: np.ndarray, head_name: str, title: str = "") -> Figure:
    """One-vs-rest ROC curve of every class of a head, AUC in the legend."""
    known = target >= 0
    probs, target = probs[known], target[known]
    fig = Figure(figsize=(5.2, 5))
    ax = fig.add_subplot()
    for c, name in enumerate(head(head_name).classes):
        pos = target == c
        if 0 < pos.sum() < len(pos):
            fpr, tpr = roc_points(probs[:, c], pos)
            auc = roc_auc(probs[:, c], pos)
            ax.plot(fpr, tpr, lw=1.6, label=f"{name}: AUC {auc:.3f} (n={int(pos.sum())})")
        else:
            ax.plot([], [], " ", label=f"{name}: no AUC ({int(pos.sum())} of {len(pos)} cases)")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title or f"{head_name}: ROC, one class vs rest ({len(target)} cases)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _matrix(
    ax: Axes, matrix: np.ndarray, labels: Sequence[str], fmt: str, vmax: float | None
) -> AxesImage:
    """Heatmap with a value in every cell and the labels on both axes (its image, for a
    colour bar)."""
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    top = matrix.max() if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        light = v < 0.6 * (vmax if vmax is not None else top)
        ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7, c="w" if light else "k")
    return im


def confusion_figure(confusion: np.ndarray, head_name: str) -> Figure:
    """Confusion matrix of a head: counts, coloured by the share of each true class."""
    confusion = np.asarray(confusion)
    classes = head(head_name).classes
    share = confusion / np.maximum(1, confusion.sum(axis=1, keepdims=True))
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, f"{v}\n{100 * share[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                c="w" if share[i, j] > 0.6 else "k")  # fmt: skip
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{head_name}: confusion matrix ({int(confusion.sum())} cases)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return fig


def attention_figure(
    maps: dict[str, tuple[np.ndarray, int]], labels: Sequence[str], title: str
) -> Figure:
    """Label x label attention heatmaps side by side, one per group (name -> (matrix, cases)).

    Rows are the attending (query) label tokens, columns the attended (key) tokens; each row
    sums to 1.
    """
    n = len(maps)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(4.4 * cols + 0.8, 4.2 * rows), layout="constrained")
    vmax = max(float(m.max()) for m, _ in maps.values())
    im = None
    for k, (name, (matrix, cases)) in enumerate(maps.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        im = _matrix(ax, matrix, labels, ".2f", vmax)
        ax.set_title(f"{name} ({cases} cases)", fontsize=10)
        ax.set_xlabel("attended label token (key)")
        ax.set_ylabel("attending label token (query)")
    fig.suptitle(title)
    fig.colorbar(im, ax=fig.axes, fraction=0.03, label="attention weight")
    return fig


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB image [H, W, 3] with a [0, 1] heatmap [H, W] blended in (jet colours); the
    image unchanged for an all-zero map (no positive evidence: nothing to show)."""
    from matplotlib import colormaps

    if not cam.any():
        return image

    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return (255 * ((1 - alpha) * image / 255 + alpha * heat)).clip(0, 255).astype(np.uint8)


def gradcam_figure(panels: list[dict], head_name: str, class_name: str) -> Figure:
    """One row per case: dermoscopic image, its Grad-CAM overlay, clinical image, its overlay.

    Each panel dict has ``derm``/``clinic`` (uint8 RGB) and ``derm_cam``/``clinic_cam`` ([0, 1]
    maps of the same size) and a ``title``.
    """
    fig = Figure(figsize=(10, 2.8 * len(panels) + 0.6))
    columns = ("dermoscopic", "Grad-CAM", "clinical", "Grad-CAM")
    for r, p in enumerate(panels):
        images = (p["derm"], overlay(p["derm"], p["derm_cam"]), p["clinic"],
                  overlay(p["clinic"], p["clinic_cam"]))  # fmt: skip
        for c, img in enumerate(images):
            ax = fig.add_subplot(len(panels), 4, 4 * r + c + 1)
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(p["title"], fontsize=8)
    fig.suptitle(f"Grad-CAM of {head_name} = {class_name} on the last stage of each trunk")
    fig.tight_layout()
    return fig


def to_rgb(fig: Figure) -> np.ndarray:
    """The figure rendered as an RGB uint8 array [H, W, 3] (e.g. for TensorBoard)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path
