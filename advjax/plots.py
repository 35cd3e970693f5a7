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
