"""Datasets as in-memory arrays: offline MNIST, IDX folders, TFDS, synthetic sources.

``load_dataset(config.data)`` routes ``data.name`` to a source registered in
`DATA_SOURCES`; names with a colon ("tfds:cifar10", "idx:/folder")
are routed by their prefix.
"""

from __future__ import annotations

from advjax.data.core import (
    DataConfigError,
    Dataset,
    DatasetInfo,
    DataUnavailableError,
    augment,
    batch_indices,
    finalize,
    steps_per_epoch,
)
from advjax.registry import Registry

__all__ = [
    "Dataset",
    "DatasetInfo",
    "DataConfigError",
    "DataUnavailableError",
    "augment",
    "batch_indices",
    "finalize",
    "load_dataset",
    "source_name",
    "steps_per_epoch",
]


def source_name(name: str) -> str:
    """The registry entry that serves ``data.name``."""
    return name.split(":", 1)[0] if ":" in name else name


def load_dataset(data_config) -> Dataset:
    """Loads the dataset that ``data_config.name`` selects (see module docstring)."""
    loader = DATA_SOURCES.get(source_name(data_config.name), key="data.name")
    return loader(data_config)


# Data sources: a builder(config.data) -> advjax.data.Dataset. Prefixed names
# ("tfds:cifar10", "idx:/path") are routed by the prefix before the colon.
DATA_SOURCES = Registry(
    "dataset",
    {
        "mnist": "advjax.data.mnist:load_mnist",
        "tfds": "advjax.data.tfds_source:load_tfds",
        "idx": "advjax.data.idx:load_idx",
        "synthetic": "advjax.data.synthetic:load_synthetic",
        "tsipras_toy": "advjax.data.synthetic:load_tsipras_toy",
        "spurious": "advjax.data.spurious:load_spurious",
        "moayeri_regression": "advjax.data.synthetic:load_moayeri_regression",
    },
)
