"""Spurious-feature image benchmark: objects on class-correlated backgrounds.

A grey object image (MNIST or Fashion-MNIST) is composited in white over a background
that belongs to a *background class* ``b``: a per-class colour (``background='colour'``) or
a per-class stripe texture (``'texture'``). In training ``b = y`` with probability ``rho``
and otherwise a uniformly drawn other class, so the background is a spurious feature
that predicts the label with accuracy ``rho``. A small synthetic stand-in, built by
advjax, for the real-image benchmarks on which Moayeri et al. 2022 measure background
reliance (RIVAL10, ImageNet-9, Waterbirds); its test domains follow ImageNet-9 /
Waterbirds:

* ``same``: ``b = y`` (the spurious correlation holds perfectly),
* ``random``: ``b`` uniform over all classes (no correlation),
* ``flipped``: ``b = (y + 1) mod K`` (always a wrong class's background).

Every image comes with its foreground mask (pixels with any object ink), which the
foreground/background noise metrics of RIVAL10 need.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
import numpy as np

from advjax.data.core import DataConfigError
from advjax.registry import one_of

DOMAINS = ("same", "random", "flipped")
BACKGROUNDS = ("colour", "texture")

# Ten well separated colours (RGB in [0, 1]), none of them white so the object stays visible.
PALETTE = np.array(
    [
        [0.12, 0.47, 0.71],
        [1.00, 0.50, 0.05],
        [0.17, 0.63, 0.17],
        [0.84, 0.15, 0.16],
        [0.58, 0.40, 0.74],
        [0.55, 0.34, 0.29],
        [0.89, 0.47, 0.76],
        [0.50, 0.50, 0.50],
        [0.74, 0.74, 0.13],
        [0.09, 0.75, 0.81],
    ],
    np.float32,
)


def background_classes(
    labels: np.ndarray, *, domain: str, num_classes: int, rho: float, rng: np.random.Generator
) -> np.ndarray:
    """Background class of each example for a domain.

    Args:
      labels: integer labels ``[n]``.
      domain: ``'train'`` (``b = y`` w.p. ``rho``, else a uniform other class), or one of
        ``DOMAINS``.
      num_classes: ``K``.
      rho: training correlation (used only by ``'train'``).
      rng: numpy generator.

    Returns:
      Background classes ``[n]`` int32.
    """
    labels = np.asarray(labels, np.int64)
    n = labels.shape[0]
    if domain == "same":
        return labels.astype(np.int32)
    if domain == "flipped":
        return ((labels + 1) % num_classes).astype(np.int32)
    if domain == "random":
        return rng.integers(0, num_classes, n).astype(np.int32)
    if domain != "train":
        raise ValueError(f"domain must be 'train' or one of {DOMAINS}, got {domain!r}")
    other = (labels + rng.integers(1, num_classes, n)) % num_classes
    keep = rng.random(n) < rho
    return np.where(keep, labels, other).astype(np.int32)


def background_images(
    bg: np.ndarray,
    *,
    height: int,
    width: int,
    num_classes: int,
    background: str,
    rng: np.random.Generator,
    jitter: float = 0.1,
) -> np.ndarray:
    """Background images ``[n, H, W, 3]`` in [0, 1] for background classes ``bg``.

    ``'colour'``: ``PALETTE[b]`` with a per-image brightness jitter of ``+-jitter``.
    ``'texture'``: a sinusoidal stripe pattern whose orientation is ``pi b / K`` with a random
    phase, tinted by ``PALETTE[b]``.
    """
    n = bg.shape[0]
    colour = PALETTE[np.asarray(bg) % len(PALETTE)]
    scale = 1.0 + jitter * rng.uniform(-1.0, 1.0, (n, 1))
    colour = np.clip(colour * scale, 0.0, 1.0).astype(np.float32)
    if background == "colour":
        return np.broadcast_to(colour[:, None, None, :], (n, height, width, 3)).copy()
    if background != "texture":
        raise DataConfigError(
            f"config key 'data.background': got {background!r}; allowed: {BACKGROUNDS}"
        )
    theta = math.pi * np.asarray(bg, np.float32) / num_classes
    phase = rng.uniform(0.0, 2.0 * math.pi, n).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    proj = np.cos(theta)[:, None, None] * cols + np.sin(theta)[:, None, None] * rows
    stripes = 0.5 + 0.5 * np.sin(2.0 * math.pi * proj / 6.0 + phase[:, None, None])
    return (colour[:, None, None, :] * (0.35 + 0.65 * stripes[..., None])).astype(np.float32)


def compose(
    objects: np.ndarray,
    bg: np.ndarray,
    *,
    num_classes: int,
    background: str,
    rng: np.random.Generator,
    jitter: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """White objects alpha-composited over class backgrounds.

    Args:
      objects: grey object images ``[n, H, W]`` or ``[n, H, W, 1]`` in [0, 1] (the ink is
        the alpha channel).
      bg: background classes ``[n]``.
      num_classes: ``K``.
      background: ``'colour'`` or ``'texture'``.
      rng: numpy generator.
      jitter: per-image colour jitter.

    Returns:
      ``(images [n, H, W, 3] float32, masks [n, H, W] bool)``; ``mask`` marks pixels with any
      ink, so outside it the image is pure background.
    """
    alpha = np.asarray(objects, np.float32)
    if alpha.ndim == 4:
        alpha = alpha[..., 0]
    n, h, w = alpha.shape
    back = background_images(
        bg,
        height=h,
        width=w,
        num_classes=num_classes,
        background=background,
        rng=rng,
        jitter=jitter,
    )
    a = alpha[..., None]
    images = a * 1.0 + (1.0 - a) * back
    return images.astype(np.float32), alpha > 0


def make_split(
    objects: np.ndarray,
    labels: np.ndarray,
    *,
    domain: str,
    num_classes: int,
    rho: float,
    background: str,
    seed: int,
    jitter: float = 0.1,
) -> dict[str, np.ndarray]:
    """One domain of the benchmark: ``{"x", "y", "mask", "bg"}`` (deterministic in seed)."""
    rng = np.random.default_rng([int(seed), DOMAINS.index(domain) + 1 if domain in DOMAINS else 0])
    bg = background_classes(labels, domain=domain, num_classes=num_classes, rho=rho, rng=rng)
    x, mask = compose(
        objects, bg, num_classes=num_classes, background=background, rng=rng, jitter=jitter
    )
    return {"x": x, "y": np.asarray(labels, np.int32), "mask": mask, "bg": bg}


def _base_arrays(data_config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Object images and labels of the base dataset, restricted to ``data.classes``."""
    from advjax.data import load_dataset

    base = ml_collections.ConfigDict(
        {"name": data_config.get("base", "mnist"), "num_train": 0, "num_test": 0, "seed": 0}
    )
    if data_config.get("cache_dir", None):
        base.cache_dir = data_config.cache_dir
    if data_config.get("data_dir", None):
        base.data_dir = data_config.data_dir
    ds = load_dataset(base)
    classes = [int(c) for c in (data_config.get("classes", ()) or range(ds.info.num_classes))]
    lut = np.full(max(ds.info.num_classes, max(classes) + 1), -1, np.int32)
    lut[classes] = np.arange(len(classes))
    out = []
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        keep = np.isin(y, classes)
        out += [x[keep], lut[y[keep]]]
    return out[0], out[1], out[2], out[3], len(classes)


@dataclasses.dataclass
class SpuriousBenchmark:
    """The benchmark's `Dataset` plus what the background metrics need.

    Attributes:
      dataset: train split (correlation ``rho``) and the ``test_domain`` test split.
      train_mask: foreground masks of the training images ``[n, H, W]``.
      train_bg: background classes of the training images.
      domains: ``{domain: {"x", "y", "mask", "bg"}}`` for every domain in ``DOMAINS``.
      settings: the generation settings (JSON-ready).
    """

    dataset: Any
    train_mask: np.ndarray
    train_bg: np.ndarray
    domains: dict[str, dict[str, np.ndarray]]
    settings: dict


def load_spurious_benchmark(data_config) -> SpuriousBenchmark:
    """The spurious-background benchmark with its masks and every test domain.

    Config keys: ``base`` ('mnist' or 'tfds:fashion_mnist'), ``classes`` (base labels to
    keep, relabelled 0..K-1 in the given order; empty = all), ``rho`` (training correlation,
    default 0.9), ``background`` ('colour' or 'texture'), ``jitter`` (0.1), ``test_domain``
    ('same', 'random', 'flipped'; default 'random'), ``num_train``, ``num_test`` (0 = all),
    ``seed``.

    The dataset's test split is the ``test_domain``; ``domains`` holds every domain of
    ``DOMAINS`` built from the same test objects.
    """
    from advjax.data import Dataset, DatasetInfo

    rho = float(data_config.get("rho", 0.9))
    background = data_config.get("background", "colour")
    test_domain = data_config.get("test_domain", "random")
    jitter = float(data_config.get("jitter", 0.1))
    seed = int(data_config.get("seed", 0))
    one_of(background, BACKGROUNDS, key="data.background")
    one_of(test_domain, DOMAINS, key="data.test_domain")
    if not 0.0 <= rho <= 1.0:
        raise DataConfigError(f"config key 'data.rho': got {rho}; allowed: [0, 1]")

    train_obj, train_y, test_obj, test_y, k = _base_arrays(data_config)
    if k < 2:
        raise DataConfigError(f"config key 'data.classes': need at least 2 classes, got {k}")
    num_train = int(data_config.get("num_train", 0) or 0)
    num_test = int(data_config.get("num_test", 0) or 0)
    if num_train and num_train < train_obj.shape[0]:
        idx = np.sort(np.random.default_rng(seed).permutation(train_obj.shape[0])[:num_train])
        train_obj, train_y = train_obj[idx], train_y[idx]
    if num_test and num_test < test_obj.shape[0]:
        test_obj, test_y = test_obj[:num_test], test_y[:num_test]

    common = {
        "num_classes": k,
        "rho": rho,
        "background": background,
        "seed": seed,
        "jitter": jitter,
    }
    train = make_split(train_obj, train_y, domain="train", **common)
    domains = {d: make_split(test_obj, test_y, domain=d, **common) for d in DOMAINS}
    h, w = train["x"].shape[1:3]
    dataset = Dataset(
        info=DatasetInfo("spurious", (h, w, 3), k, (0.0, 1.0)),
        train_x=train["x"],
        train_y=train["y"],
        test_x=domains[test_domain]["x"],
        test_y=domains[test_domain]["y"],
    )
    return SpuriousBenchmark(
        dataset=dataset,
        train_mask=train["mask"],
        train_bg=train["bg"],
        domains=domains,
        settings=dict(common, test_domain=test_domain, base=data_config.get("base", "mnist")),
    )


def load_spurious(data_config):
    """The benchmark's `Dataset` (``data.name = 'spurious'``); see `load_spurious_benchmark`."""
    return load_spurious_benchmark(data_config).dataset
