"""TensorFlow-Datasets image classification through ``tfds.data_source``.

Random access without TensorFlow. Downloads are off unless ``data.download`` is set:
on a machine without internet, a real TFDS download retries for a long time instead
of failing, so absent data fails at once with instructions instead.
"""

from __future__ import annotations

import numpy as np

from advjax.data.core import Dataset, DatasetInfo, DataUnavailableError, finalize


def _read_split(source, image_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    images, labels = [], []

    def one_by_one(idx):
        return [source[i] for i in idx]

    getitems = getattr(source, "__getitems__", None) or one_by_one
    for start in range(0, n, 1024):
        idx = list(range(start, min(start + 1024, n)))
        try:
            records = getitems(idx)
        except TypeError:  # tfds.testing.mock_data's source has no working batch read.
            getitems = one_by_one
            records = getitems(idx)
        images.extend(np.asarray(r[image_key]) for r in records)
        labels.extend(int(r[label_key]) for r in records)
    x = np.stack(images)
    if x.ndim == 3:
        x = x[..., None]
    return x, np.asarray(labels, dtype=np.int32)


def load_tfds(data_config) -> Dataset:
    """Loads ``tfds:<name>`` (e.g. tfds:cifar10) from ``data.data_dir``."""
    import tensorflow_datasets as tfds

    name = data_config.name.split(":", 1)[1]
    data_dir = data_config.get("data_dir") or None
    download = bool(data_config.get("download", False))
    splits = {}
    try:
        for split in ("train", "test"):
            splits[split] = tfds.data_source(
                name, split=split, data_dir=data_dir, download=download
            )
        builder = tfds.builder(name, data_dir=data_dir)
        features = builder.info.features
    except Exception as err:  # noqa: BLE001 - tfds raises many types for "not prepared".
        raise DataUnavailableError(
            f"TFDS dataset {name!r} is not prepared in "
            f"data_dir={data_dir or '~/tensorflow_datasets'} "
            f"and downloads are off ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            f"Prepare it on a machine with internet (`tfds build {name} "
            f"--file_format=array_record`), copy the folder here and set "
            f"--config.data.data_dir, or set --config.data.download=True where downloads work."
        ) from err
    image_key = data_config.get("image_key", "image")
    label_key = data_config.get("label_key", "label")
    train_x, train_y = _read_split(splits["train"], image_key, label_key)
    test_x, test_y = _read_split(splits["test"], image_key, label_key)
    num_classes = int(features[label_key].num_classes)
    if train_x.dtype != np.uint8:
        raise DataUnavailableError(f"TFDS {name!r}: expected uint8 images, got {train_x.dtype}")
    info = DatasetInfo(
        name=data_config.name, input_shape=tuple(train_x.shape[1:]), num_classes=num_classes
    )
    return finalize(info, train_x, train_y, test_x, test_y, data_config)
