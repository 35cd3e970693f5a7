"""The dataset type, subsetting, deterministic batching and augmentation.

Every source returns a `Dataset`: float32 inputs in ``info.bounds`` (images NHWC in
[0, 1]), int32 labels and metadata. Batching is a pure function of (seed, step), so a
resumed run sees exactly the batches an uninterrupted one would; in a multi-process run
each process reads its share of every global batch (seed, step, process).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


class DataUnavailableError(RuntimeError):
    """A dataset is missing and cannot be fetched here; the message says how to get it."""


class DataConfigError(ValueError):
    """A ``config.data`` value that the loaded dataset cannot meet (the message names the
    key), found when the data is read, before any training or evaluation."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What models, attacks and reports need to know about a dataset.

    Attributes:
      name: the data source name ("mnist", "tfds:cifar10", ...).
      input_shape: shape of one input without the batch axis (H, W, C for images).
      num_classes: number of labels (1 for regression targets).
      bounds: the input box [lo, hi] that attacks must respect.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Dataset:
    """In-memory splits (numpy) with their `DatasetInfo`.

    Labels are int32 class indices, or float32 targets for regression sources.
    """

    info: DatasetInfo
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_x.shape[0])


def _as_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return np.asarray(x, dtype=np.float32)


def _as_labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.astype(np.float32) if np.issubdtype(y.dtype, np.floating) else y.astype(np.int32)


def finalize(info, train_x, train_y, test_x, test_y, data_config) -> Dataset:
    """Converts to float32 and applies the subset and validation-split options.

    ``num_val`` training examples (a seeded random draw) are held out as a validation
    split first; the training subset of ``num_train`` is then a seeded random sample of
    the rest (``data.seed``), so small-data runs see a class-balanced-in-expectation
    draw; the test subset is the first ``num_test`` examples, the usual convention for
    "the first 1,000 test images".
    """
    num_train = int(data_config.get("num_train", 0) or 0)
    num_test = int(data_config.get("num_test", 0) or 0)
    num_val = int(data_config.get("num_val", 0) or 0)
    if min(num_train, num_test, num_val) < 0:
        raise DataConfigError(
            f"config keys 'data.num_train'/'data.num_test'/'data.num_val' must be >= 0 "
            f"(0 = all / none); got {num_train}, {num_test}, {num_val}"
        )
    if num_val >= train_x.shape[0]:
        raise DataConfigError(
            f"config key 'data.num_val': {num_val} leaves no training data "
            f"({train_x.shape[0]} training examples)"
        )
    rng = np.random.default_rng(int(data_config.get("seed", 0)))
    perm = rng.permutation(train_x.shape[0])
    val_idx, rest = np.sort(perm[:num_val]), perm[num_val:]
    if num_train and num_train < rest.shape[0]:
        rest = rest[:num_train]
    train_idx = np.sort(rest)
    val_x, val_y = train_x[val_idx], train_y[val_idx]
    if num_val or (num_train and num_train < train_x.shape[0]):
        train_x, train_y = train_x[train_idx], train_y[train_idx]
    if num_test and num_test < test_x.shape[0]:
        test_x, test_y = test_x[:num_test], test_y[:num_test]
    return Dataset(
        info=info,
        train_x=_as_float(train_x),
        train_y=_as_labels(train_y),
        test_x=_as_float(test_x),
        test_y=_as_labels(test_y),
        val_x=_as_float(val_x) if num_val else None,
        val_y=_as_labels(val_y) if num_val else None,
    )


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (the last incomplete batch is dropped)."""
    return max(num_examples // batch_size, 1)


def batch_indices(
    step: int,
    *,
    num_examples: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """Indices of the training batch at global ``step``, or of one process's share of it.

    Each epoch is a fresh permutation drawn from ``(seed, epoch)``, so the batch depends
    only on (seed, step): resuming at any step reproduces the same sequence. With several
    processes, process ``p`` of ``P`` gets rows ``[p B / P, (p + 1) B / P)`` of the global
    batch of ``B = batch_size`` rows, the rows its devices hold on a process-major
    ``data`` mesh; together the processes read the same global batch as one process.
    """
    if batch_size % process_count or not 0 <= process_index < process_count:
        raise ValueError(
            f"batch_indices: a batch of {batch_size} cannot be split into {process_count} "
            f"equal shares (process {process_index})"
        )
    per_epoch = steps_per_epoch(num_examples, batch_size)
    epoch, within = divmod(int(step), per_epoch)
    perm = np.random.default_rng([int(seed), epoch]).permutation(num_examples)
    if num_examples < batch_size:  # Tiny datasets: sample with wrap-around.
        perm = np.resize(perm, batch_size)
    batch = perm[within * batch_size : (within + 1) * batch_size]
    share = batch_size // process_count
    return batch[process_index * share : (process_index + 1) * share]


def augment(key: jax.Array, x: jax.Array, *, crop_padding: int = 0, flip: bool = False):
    """Random crop after zero padding and random horizontal flip (NHWC, per example).

    Args:
      key: PRNG key for this batch.
      x: images [B, H, W, C].
      crop_padding: pixels of padding on each side before cropping back to H x W.
      flip: whether to flip each image left-right with probability 1/2.
    Returns:
      Augmented images with the shape of ``x``.
    """
    if crop_padding <= 0 and not flip:
        return x
    b, h, w, _ = x.shape
    key_crop, key_flip = jax.random.split(key)
    if crop_padding > 0:
        p = crop_padding
        padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = jax.random.randint(key_crop, (b, 2), 0, 2 * p + 1)

        def crop(img, off):
            return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

        x = jax.vmap(crop)(padded, offsets)
    if flip:
        do_flip = jax.random.bernoulli(key_flip, 0.5, (b, 1, 1, 1))
        x = jnp.where(do_flip, x[:, :, ::-1, :], x)
    return x
