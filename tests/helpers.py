"""Small builders shared by the foundation tests."""

from __future__ import annotations

import numpy as np

from advjax.data import Dataset, DatasetInfo


def blob_images(n_train=256, n_test=128, *, shape=(8, 8, 1), num_classes=4, seed=0) -> Dataset:
    """Separable images: class c has a bright c-th block plus noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, num_classes, n).astype(np.int32)
        x = rng.uniform(0, 0.3, (n, *shape)).astype(np.float32)
        flat = x.reshape(n, -1)
        block = flat.shape[1] // num_classes
        for i, c in enumerate(y):
            flat[i, c * block : (c + 1) * block] += 0.6
        return np.clip(flat.reshape(n, *shape), 0, 1), y

    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)
    info = DatasetInfo(name="blobs", input_shape=shape, num_classes=num_classes)
    return Dataset(info, train_x, train_y, test_x, test_y)


def xla_flags_with_devices(devices: int) -> str:
    """``XLA_FLAGS`` for a subprocess with ``devices`` virtual CPU devices, keeping the
    session's own flags (tests/conftest.py)."""
    import os

    devices_flag = f"--xla_force_host_platform_device_count={devices}"
    return f"{os.environ.get('XLA_FLAGS', '')} {devices_flag}".strip()


def tiny_config(objective: str = "standard", **train):
    """A config of seconds on `blob_images` (the dataset is passed in directly)."""
    from advjax.configlib import load_config

    c = load_config("configs/mnist_standard.py:smoke")
    c.model.name = "mlp"
    c.model.hidden = (16,)
    c.train.objective.name = objective
    c.train.batch_size = 32
    c.train.num_epochs = 2.0
    c.train.val_examples = 64
    c.train.val_attack.name = "none"
    c.train.log_every_steps = 2
    c.checkpoint.every_steps = 4
    c.eval.batch_size = 64
    c.eval.num_examples = 64
    c.eval.sanity_checks = False
    c.train.progress = False
    for k, v in train.items():
        c.train[k] = v
    return c


class CompileCounter:
    """Counts XLA compilations (one per "Finished XLA compilation" log line of JAX).

    Usage: ``with CompileCounter() as c: ...``; then ``c.count`` and ``c.names`` (the
    compiled functions, e.g. ``jit(attack_outcome)``).
    """

    def __enter__(self):
        import logging

        import jax

        self.names: list[str] = []
        counter = self

        class _Handler(logging.Handler):
            def emit(self, record):
                msg = record.getMessage()
                if msg.startswith("Finished XLA compilation of "):
                    counter.names.append(
                        msg[len("Finished XLA compilation of ") :].split(" in ")[0]
                    )

        self._handler = _Handler()
        self._logger = logging.getLogger("jax")
        self._logger.addHandler(self._handler)
        self._ctx = jax.log_compiles()
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        self._logger.removeHandler(self._handler)
        return False

    @property
    def count(self) -> int:
        return len(self.names)


def printed_json(nb, tag: str):
    """The JSON a notebook printed on a line ``"<tag> <json>"`` (first such line)."""
    import json

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith(tag + " "):
                    return json.loads(line[len(tag) + 1 :])
    raise AssertionError(f"notebook printed no {tag} line")


def load_launch_module(name: str):
    """The script ``launch/<name>.py`` imported as a module (launch/ is not a package)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch",
                        f"{name}.py")  # fmt: skip
    spec = importlib.util.spec_from_file_location(f"advjax_launch_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
