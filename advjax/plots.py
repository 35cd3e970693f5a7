"""Small matplotlib helpers shared by every figure advjax writes (PNG, headless)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: str) -> str:
    """Writes ``fig`` to ``path`` (creating folders), closes it and returns the path.

    In a multi-process run only process 0 writes (every process returns the path).
    """
    import jax

    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def line_plot(
    path: str,
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    errors: Mapping[str, Sequence[float]] | None = None,
    logy: bool = False,
) -> str:
    """One line per entry of ``curves`` against ``x``, optional +-error bands."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, ys in curves.items():
        ys = np.asarray(ys, dtype=float)
        ax.plot(x, ys, marker="o", ms=3, label=label)
        if errors and label in errors:
            err = np.asarray(errors[label], dtype=float)
            ax.fill_between(x, ys - err, ys + err, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def image_grid(
    path: str,
    images: np.ndarray,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cmap: str | None = None,
    title: str = "",
    normalize_each: bool = False,
) -> str:
    """Draws ``images`` of shape [rows, cols, H, W(, C)] as a grid.

    Single-channel images are shown in grey (or ``cmap``); with ``normalize_each``
    every image is min-max scaled to [0, 1] on its own (for saliency maps).
    """
    images = np.asarray(images, dtype=float)
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            img = images[r, c]
            if img.ndim == 3 and img.shape[-1] == 1:
                img = img[..., 0]
            if normalize_each:
                lo, hi = img.min(), img.max()
                img = (img - lo) / (hi - lo + 1e-12)
            ax = axes[r, c]
            ax.imshow(
                np.clip(img, 0, 1) if img.ndim == 3 else img,
                cmap=cmap or "gray",
                vmin=None if normalize_each or cmap else 0,
                vmax=None if normalize_each or cmap else 1,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row_labels is not None and c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7)
            if col_labels is not None and r == 0:
                ax.set_title(col_labels[c], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)


def run_summary(path: str, metrics: Sequence[Mapping], eval_section: Mapping) -> str:
    """The figure of a training run: its curves (training-batch adversarial accuracy,
    validation clean and robust accuracy, per step) beside the test accuracy left after
    each evaluation attack (an ensemble's components cumulatively, in their order)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    curves = {
        "training batch, adversarial": ("adv_accuracy", "-"),
        "validation, clean": ("val_accuracy", "o-"),
        "validation, robust": ("val_robust_accuracy", "o-"),
    }
    for label, (key, style) in curves.items():
        points = [(r["step"], r[key]) for r in metrics if r.get(key) is not None]
        if points:
            steps, values = zip(*points, strict=True)
            left.plot(steps, values, style, ms=3, label=label)
    left.set_xlabel("training step")
    left.set_ylabel("accuracy")
    left.set_title("training")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)

    labels, values = ["clean"], [float(eval_section["clean_accuracy"])]
    for name, result in eval_section.get("attacks", {}).items():
        components = result.get("components")
        if components:
            for part, c in components.items():
                labels.append(f"{name}: +{part}")
                values.append(float(c["robust_accuracy_after"]))
        else:
            labels.append(name)
            values.append(float(result["robust_accuracy"]))
    ypos = np.arange(len(labels))
    right.barh(ypos, values, color=["tab:gray"] + ["tab:blue"] * (len(labels) - 1))
    for y, v in zip(ypos, values, strict=True):
        right.text(v, y, f" {100 * v:.1f}%", va="center", fontsize=8)
    right.set_yticks(ypos, labels, fontsize=8)
    right.invert_yaxis()
    right.set_xlim(0, 1.12)
    right.set_xlabel(f"test accuracy ({eval_section.get('num_examples', 'all')} images)")
    right.set_title("accuracy left after each attack")
    return save(fig, path)
