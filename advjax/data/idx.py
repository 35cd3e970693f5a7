"""The MNIST-family IDX format (MNIST, Fashion-MNIST, KMNIST folders).

A folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally gzipped
(Debian's ``dataset-fashion-mnist`` puts them under /usr/share/datasets/fashion-mnist).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from advjax.data.core import Dataset, DatasetInfo, DataUnavailableError, finalize

_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (gzipped or not) into a numpy array, checking its header."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataUnavailableError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise DataUnavailableError(
            f"{path}: header says {tuple(dims)} ({expected} bytes), file has {len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(tuple(dims))


def _find(folder: str, stem: str) -> str:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise DataUnavailableError(
        f"IDX folder {folder!r} has no {stem}[.gz]; it needs the four files "
        f"{', '.join(_FILES.values())} (for Fashion-MNIST: `apt-get install "
        f"dataset-fashion-mnist` puts them under /usr/share/datasets/fashion-mnist)"
    )


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes ``array`` (uint8) as an IDX file; used by tests to build folders."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def load_idx(data_config) -> Dataset:
    """Loads ``idx:<folder>``: images in [0, 1] NHWC with the labels' class count."""
    name = data_config.name
    folder = name.split(":", 1)[1] if ":" in name else data_config.get("path", "")
    if not folder or not os.path.isdir(folder):
        raise DataUnavailableError(
            f"config key 'data.name': IDX folder {folder!r} does not exist; give "
            f"'idx:/path/to/folder' (e.g. idx:/usr/share/datasets/fashion-mnist after "
            f"`apt-get install dataset-fashion-mnist`)"
        )
    arrays = {k: read_idx(_find(folder, stem)) for k, stem in _FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataUnavailableError(
                f"IDX folder {folder!r}: {split} images {x.shape} and labels {y.shape} disagree"
            )
    num_classes = int(max(arrays["train_y"].max(), arrays["test_y"].max())) + 1
    info = DatasetInfo(
        name=name, input_shape=(*arrays["train_x"].shape[1:], 1), num_classes=num_classes
    )
    return finalize(
        info,
        arrays["train_x"][..., None],
        arrays["train_y"],
        arrays["test_x"][..., None],
        arrays["test_y"],
        data_config,
    )
