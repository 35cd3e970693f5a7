"""Datasets as in-memory arrays: offline MNIST, IDX folders, TFDS, synthetic sources.

``load_dataset(config.data)`` routes ``data.name`` to a source registered in
`advjax.registry.DATA_SOURCES`; names with a colon ("tfds:cifar10", "idx:/folder")
are routed by their prefix.
"""

from __future__ import annotations

from advjax.data.core import (
    Dataset,
    DatasetInfo,
    DataUnavailableError,
    augment,
    batch_indices,
    finalize,
    steps_per_epoch,
)

__all__ = [
    "Dataset",
    "DatasetInfo",
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
    from advjax.registry import DATA_SOURCES

    loader = DATA_SOURCES.get(source_name(data_config.name), key="data.name")
    return loader(data_config)
