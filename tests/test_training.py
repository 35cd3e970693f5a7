"""The train step and loop: closed-form updates, compile-once, EMA, NaN handling, devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import blob_images, tiny_config, xla_flags_with_devices

from advjax import checkpoints, data, losses, models, runs, training
from advjax.objectives import build_objective


def _linear_setup(objective_cfg, lr=0.1):
    ds = blob_images(64, 16)
    module = models.build_model(ml_collections.ConfigDict({"name": "linear"}), ds.info)
    objective = build_objective(ml_collections.ConfigDict(objective_cfg))
    tx = optax.sgd(lr)
    variables = models.init_variables(module, ds.info, jax.random.key(0))
    params = variables.pop("params")
    state = training.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, model_state={}, opt_state=tx.init(params)
    )
    batch = {"x": jnp.asarray(ds.train_x[:32]), "y": jnp.asarray(ds.train_y[:32])}
    return module, objective, tx, state, batch


def test_standard_step_is_one_sgd_step_on_the_cross_entropy():
    module, objective, tx, state, batch = _linear_setup({"name": "standard"}, lr=0.1)
    step = jax.jit(training.make_train_step(module, objective, tx))
    new_state, metrics = step(state, batch, jax.random.key(1))

    def ce(params):
        logits = module.apply({"params": params}, batch["x"])
        return jnp.mean(losses.cross_entropy(logits, batch["y"]))

    @jax.jit
    def sgd_step(params):
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(ce)(params)), ce(params)

    expected, loss = sgd_step(state.params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        new_state.params,
        expected,
    )
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    assert int(new_state.step) == 1


def test_pgd_at_with_zero_eps_equals_standard_training_loss():
    _, standard, _, state, batch = _linear_setup({"name": "standard"})
    module, pgd_at, _, _, _ = _linear_setup(
        {
            "name": "pgd_at",
            "attack": {"name": "pgd", "norm": "linf", "eps": 0.0, "step_size": 0.1, "num_steps": 3},
        }
    )
    forward = training.make_forward(module, {}, jax.random.key(0))

    @jax.jit
    def loss_pair(params, key):
        loss_std, _ = standard.loss_fn(params, forward, batch, key, None)
        loss_adv, _ = pgd_at.loss_fn(params, forward, batch, key, None)
        return loss_std, loss_adv

    loss_std, loss_adv = loss_pair(state.params, jax.random.key(2))
    np.testing.assert_allclose(loss_adv, loss_std, rtol=1e-6)


def test_pgd_at_loss_is_the_loss_at_the_attack_point():
    module, pgd_at, _, state, batch = _linear_setup(
        {
            "name": "pgd_at",
            "attack": {
                "name": "pgd",
                "norm": "linf",
                "eps": 0.1,
                "step_size": 0.05,
                "num_steps": 5,
            },
        }
    )
    forward = training.make_forward(module, {}, jax.random.key(0))

    @jax.jit
    def loss_pair(params, key):
        loss_adv, _ = pgd_at.loss_fn(params, forward, batch, key, None)
        # For a linear model the l_inf worst case of the CE cannot exceed moving every pixel
        # by eps against the margin; and it must exceed the clean loss.
        clean = jnp.mean(losses.cross_entropy(forward.eval(params, batch["x"]), batch["y"]))
        return loss_adv, clean

    loss_adv, clean = loss_pair(state.params, jax.random.key(3))
    assert loss_adv > clean


def test_train_step_compiles_once_across_steps():
    module, objective, tx, state, batch = _linear_setup({"name": "standard"})
    traces = []
    step_fn = training.make_train_step(module, objective, tx)

    def counted(state, batch, key):
        traces.append(1)
        return step_fn(state, batch, key)

    jitted = jax.jit(counted)
    for i in range(4):
        state, _ = jitted(
            state, {k: v + 0.0 * i for k, v in batch.items()} | {"y": batch["y"]}, jax.random.key(0)
        )
    assert len(traces) == 1 and int(state.step) == 4


def test_ema_is_the_exponential_average_of_parameters():
    module, objective, tx, state, batch = _linear_setup({"name": "standard"})
    state = state.replace(ema_params=state.params)
    step = jax.jit(training.make_train_step(module, objective, tx, ema_decay=0.9))
    s1, _ = step(state, batch, jax.random.key(0))
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state.params, s1.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s1.ema_params, expected)


def test_training_with_ema_runs_the_donated_step_and_keeps_the_average(tmp_path):
    # The launcher's step donates the whole state: EMA parameters that alias the
    # parameters at step 0 made XLA refuse the call ("donate the same buffer twice").
    config = tiny_config(num_epochs=1.0)
    config.train.ema_decay = 0.5
    runs.train_and_evaluate(config, str(tmp_path), dataset=blob_images())
    records = [r for r in runs.read_metrics(str(tmp_path)) if "step" in r]
    assert records and max(r["step"] for r in records) > 1
    # The restored model is the average, which lags the last raw parameters.
    avg = runs.load_trained(str(tmp_path)).variables["params"]
    _, target = training.restore_target(config, blob_images().info)
    ckpt = checkpoints.Checkpointer(os.path.join(str(tmp_path), "checkpoints"))
    try:
        state, _ = ckpt.restore(target)
    finally:
        ckpt.close()
    diffs = [
        float(np.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(avg), jax.tree.leaves(state.params), strict=True)
    ]
    assert max(diffs) > 0.0
    jax.tree.map(lambda e, a: np.testing.assert_allclose(e, a), avg, state.ema_params)


def test_training_learns_and_writes_the_record(tmp_path):
    config = tiny_config(num_epochs=6.0)
    config.train.optimizer.learning_rate = 1e-2
    report = runs.train_and_evaluate(config, str(tmp_path), dataset=blob_images())
    assert report["eval"]["clean_accuracy"] > 0.9  # Separable blobs.
    assert {"config.json", "metrics.jsonl", "report.json", "checkpoints"} <= set(
        os.listdir(tmp_path)
    )
    records = runs.read_metrics(str(tmp_path))
    assert any("examples_per_sec" in r for r in records) and any(
        "val_accuracy" in r for r in records
    )
    model = runs.load_trained(str(tmp_path))
    ds = blob_images()
    logits = np.asarray(jax.jit(model.logits_fn)(ds.test_x[:64]))
    acc = np.mean(np.argmax(logits, -1) == ds.test_y[:64])
    assert acc == pytest.approx(report["eval"]["clean_accuracy"], abs=1e-6)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(num_epochs=3.0)
    config.checkpoint.every_steps = 2
    ds = blob_images()
    # Poison one example of the batch at step index 4 (the 5th step): steps 1-4 are
    # finite, so checkpoints 2 and 4 are written, and the 5th update is NaN.
    poisoned = data.batch_indices(
        4, num_examples=ds.num_train, batch_size=32, seed=training.batch_seed(config)
    )[0]
    ds.train_x[poisoned] = np.nan
    with pytest.raises(training.TrainingDivergedError, match="loss became nan at step 5") as err:
        runs.train_and_evaluate(config, str(tmp_path), dataset=ds)
    assert "last good checkpoint (step 4)" in str(err.value)
    ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"))
    assert max(ckpt.all_steps()) == 4
    ckpt.close()
    model = runs.load_trained(str(tmp_path))
    assert model.step == 4
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(model.variables))
    assert not (tmp_path / "report.json").exists()


@pytest.mark.slow
def test_data_parallel_training_matches_one_device(tmp_path):
    """Eight virtual CPU devices give the same parameters as one, within float tolerance."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
        import jax, ml_collections, numpy as np
        assert len(jax.devices()) == 8, jax.devices()
        from helpers import blob_images, tiny_config, xla_flags_with_devices
        from advjax import runs
        out = []
        for n in (8, 1):
            c = tiny_config(num_epochs=2.0, num_devices=n)
            c.model = ml_collections.ConfigDict(dict(name="small_cnn", channels=(4, 8), hidden=16))
            m = runs.train_or_load(c, os.path.join({str(tmp_path)!r}, str(n)),
                                   dataset=blob_images(shape=(28, 28, 1)))
            out.append(jax.tree.leaves(m.variables))
        for a, b in zip(*out):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
        print("OK")
        """
    )
    env = dict(os.environ, XLA_FLAGS=xla_flags_with_devices(8), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_divergence_guard_closed_form_thresholds():
    config = tiny_config()
    config.train.divergence.loss_factor = 100.0
    config.train.divergence.param_norm_factor = 10.0
    config.train.divergence.window = 3
    s = training.setup(config, blob_images())
    params = {"w": jnp.full((4,), 0.5)}  # Norm 1.
    guard = training.DivergenceGuard(s, "/run", params)
    assert guard.initial_norm == pytest.approx(1.0)
    for step, loss in enumerate([1.0, 3.0, 2.0, 199.0], start=1):  # Median 2: limit 200.
        guard.check_metrics(step, {"loss": loss, "param_norm": 9.9})
    with pytest.raises(training.TrainingDivergedError, match="loss 500 at step 5.*median 3"):
        # The window keeps the last 3 losses (3, 2, 199): median 3, limit 300.
        guard.check_metrics(5, {"loss": 500.0, "param_norm": 1.0})
    with pytest.raises(training.TrainingDivergedError, match="parameter norm reached 10.1"):
        guard.check_metrics(6, {"loss": 1.0, "param_norm": 10.1})
    with pytest.raises(training.TrainingDivergedError, match="parameters became non-finite"):
        guard.check_metrics(7, {"loss": 1.0, "param_norm": float("inf")})
    with pytest.raises(training.TrainingDivergedError, match="loss became nan"):
        guard.check_metrics(8, {"loss": float("nan"), "param_norm": 1.0})
    # A state is saved only if its parameters and its probe logits are finite.
    state = training.init_state(s, jax.random.key(0))
    guard.check_state(1, state)
    huge = state.replace(
        params=jax.jit(lambda t: jax.tree.map(lambda p: p + 3e37, t))(state.params)
    )
    with pytest.raises(training.TrainingDivergedError, match="non-finite logits"):
        guard.check_state(2, huge)
    nan = state.replace(
        params=jax.jit(lambda t: jax.tree.map(lambda p: p * np.nan, t))(state.params)
    )
    with pytest.raises(training.TrainingDivergedError, match="parameters of step 3 are not"):
        guard.check_state(3, nan)


@pytest.mark.slow
def test_adam_at_1e6_stops_with_a_message_and_keeps_a_finite_checkpoint(tmp_path):
    from advjax import configlib

    config = configlib.load_config("configs/mnist_fast.py:smoke")
    config.train.optimizer.learning_rate = 1e6
    config.checkpoint.every_steps = 1
    config.train.progress = False
    with pytest.raises(training.TrainingDivergedError, match="diverged") as err:
        runs.train_and_evaluate(config, str(tmp_path))
    assert "last good checkpoint (step" in str(err.value)
    assert not (tmp_path / "report.json").exists()
    model = runs.load_trained(str(tmp_path))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(model.variables))
    x = data.load_dataset(config.data).test_x[:100]
    assert np.isfinite(np.asarray(jax.jit(model.logits_fn)(x))).all()


def _read_events(workdir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every TensorBoard event file in ``workdir`` (TFRecord
    framing: uint64 length, uint32 crc, payload, uint32 crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for name in sorted(os.listdir(workdir)):
        if not name.startswith("events.out.tfevents"):
            continue
        with open(os.path.join(workdir, name), "rb") as f:
            raw = f.read()
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos : pos + 8])
            event = event_pb2.Event.FromString(raw[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_tensorboard_events_next_to_metrics_hold_the_logged_values(tmp_path):
    config = tiny_config(num_epochs=1.0)
    config.train.tensorboard = True
    runs.train_and_evaluate(config, str(tmp_path), dataset=blob_images())
    events = _read_events(str(tmp_path))
    records = runs.read_metrics(str(tmp_path))
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    vals = {r["step"]: r["val_accuracy"] for r in records if "val_accuracy" in r}
    assert losses and vals
    assert set(events["loss"]) == set(losses) and set(events["val_accuracy"]) == set(vals)
    for step, loss in losses.items():
        assert events["loss"][step] == pytest.approx(loss, rel=1e-6)
    for step, acc in vals.items():
        assert events["val_accuracy"][step] == pytest.approx(acc, rel=1e-6)
