"""Interpretation regularisation (Noack et al.): loss identities, second-order gradients,
target processing and the objective's per-example target arrays."""

from __future__ import annotations

import functools
import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from advjax.objectives import Forward, Objective
from advjax.objectives import interpretation as ir

SHAPE = (5, 5, 1)


class TinyNet(nn.Module):
    num_classes: int = 3
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        kw = dict(param_dtype=self.dtype, dtype=self.dtype)
        x = nn.tanh(nn.Conv(3, (3, 3), **kw)(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.tanh(nn.Dense(6, **kw)(x))
        return nn.Dense(self.num_classes, **kw)(x)


def _apply(params, x):
    return TinyNet(dtype=x.dtype).apply({"params": params}, x)


FORWARD = Forward(train=lambda p, x: (_apply(p, x), {}), eval=_apply)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _params_and_batch(dtype, n, seed):
    module = TinyNet(dtype=dtype)
    params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, *SHAPE), dtype))["params"]
    kx, ky, kt = jax.random.split(jax.random.PRNGKey(seed + 1), 3)
    batch = {
        "x": jax.random.uniform(kx, (n, *SHAPE), dtype),
        "y": jax.random.randint(ky, (n,), 0, 3),
        "target": jax.random.normal(kt, (n, *SHAPE), dtype),
    }
    return params, batch


def _setup(dtype=jnp.float32, n=4, seed=0):
    params, batch = _params_and_batch(dtype, n, seed)
    return params, FORWARD, _apply, batch


# ir.ir_loss compiled once per variant and shape (the lambdas are traced).
ir_loss = jax.jit(ir.ir_loss, static_argnums=1, static_argnames="variant")


@functools.partial(jax.jit, static_argnums=0)
def _own_gradients(apply, params, x, y):
    """grad_x z_y(x) example by example, independently of the batched implementation."""

    def logit(xi, yi):
        return apply(params, xi[None])[0, yi]

    return jax.vmap(jax.grad(logit))(x, y)


def test_lambda_cs_zero_is_ce_plus_gradient_frobenius_norm():
    params, forward, apply, batch = _setup()
    loss, aux = ir_loss(params, forward, batch, None, lambda_cs=0.0, lambda_gm=0.7)

    @jax.jit
    def reference(params, x, y):
        g = _own_gradients(apply, params, x, y)
        ce = optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y)
        per_example_sq = jnp.sum(g.reshape(len(g), -1) ** 2, axis=1)
        gm = jnp.sqrt(jnp.sum(per_example_sq))  # sqrt(sum_b ||g_b||^2): the whole batch's norm
        return ce, per_example_sq, gm

    ce, per_example_sq, gm = reference(params, batch["x"], batch["y"])
    np.testing.assert_allclose(loss, jnp.mean(ce) + 0.7 * gm, rtol=1e-6)
    np.testing.assert_allclose(aux["metrics"]["gm"], gm, rtol=1e-6)
    np.testing.assert_allclose(aux["metrics"]["ce"], jnp.mean(ce), rtol=1e-6)
    np.testing.assert_allclose(
        aux["metrics"]["input_grad_norm"], jnp.mean(jnp.sqrt(per_example_sq))
    )


def test_cosine_term_vanishes_for_own_gradients():
    params, forward, apply, batch = _setup()
    g = _own_gradients(apply, params, batch["x"], batch["y"])
    scale = jnp.array([1.0, 2.0, 0.5, 10.0]).reshape(-1, 1, 1, 1)  # cosine ignores scale
    for target, expected in ((g * scale, 0.0), (-3.0 * g, 2.0)):
        _, aux = ir_loss(
            params, forward, batch | {"target": target}, None, lambda_cs=1.0, lambda_gm=0.0
        )
        np.testing.assert_allclose(aux["metrics"]["cs"], expected, atol=1e-6)
        np.testing.assert_allclose(aux["metrics"]["cos_target"], 1.0 - expected, atol=1e-6)


def test_full_loss_and_norm_match_variant():
    params, forward, apply, batch = _setup()

    @jax.jit
    def reference(params, x, y, t):
        g = _own_gradients(apply, params, x, y)
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y))
        cos = jnp.sum((g * t).reshape(4, -1), 1) / (
            jnp.linalg.norm(g.reshape(4, -1), axis=1) * jnp.linalg.norm(t.reshape(4, -1), axis=1)
        )
        gm = jnp.linalg.norm(g.ravel())
        match = jnp.linalg.norm((jnp.abs(g) - t).ravel())
        return ce + 3.0 * (1 - jnp.mean(cos)) + 0.15 * gm, ce + 2.0 * match + 0.1 * gm, match

    want_cosine, want_norm_match, match = reference(params, batch["x"], batch["y"], batch["target"])
    loss, _ = ir_loss(params, forward, batch, None, lambda_cs=3.0, lambda_gm=0.15)
    np.testing.assert_allclose(loss, want_cosine, rtol=1e-5)
    loss, aux = ir_loss(
        params, forward, batch, None, variant="norm_match", lambda_match=2.0, lambda_gm=0.1
    )
    np.testing.assert_allclose(loss, want_norm_match, rtol=1e-5)
    np.testing.assert_allclose(aux["metrics"]["match"], match, rtol=1e-5)


@pytest.mark.parametrize("variant", ir.VARIANTS)
def test_second_order_gradient_matches_finite_differences(variant):
    with jax.enable_x64(True):
        params, forward, _, batch = _setup(dtype=jnp.float64)

        def loss(p):
            return ir.ir_loss(
                p, forward, batch, None, lambda_cs=3.0, lambda_gm=0.5, variant=variant
            )[0]

        @jax.jit
        def derivatives(params):
            leaves, treedef = jax.tree.flatten(params)
            keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
            direction = treedef.unflatten(
                [
                    jax.random.normal(k, v.shape, jnp.float64)
                    for k, v in zip(keys, leaves, strict=True)
                ]
            )
            grad = jax.grad(loss)(params)
            analytic = sum(
                jnp.vdot(a, b)
                for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(direction), strict=True)
            )
            first_order = jax.grad(
                lambda p: (
                    loss(p)
                    - ir.ir_loss(
                        p, forward, batch, None, lambda_cs=0.0, lambda_gm=0.0, variant="cosine"
                    )[0]
                )
            )(params)
            return direction, analytic, first_order

        direction, analytic, first_order = derivatives(params)
        h = 1e-5
        shifted = jax.jit(lambda s: loss(jax.tree.map(lambda p, d: p + s * d, params, direction)))
        fd = (shifted(h) - shifted(-h)) / (2 * h)
        np.testing.assert_allclose(analytic, fd, rtol=1e-6)
        # The regulariser must reach the parameters through the input gradient: a loss
        # that treats g as a constant has a different parameter gradient.
        assert max(float(np.max(np.abs(v))) for v in jax.tree.leaves(first_order)) > 1e-3


def test_gradient_norm_is_finite_at_a_zero_gradient():
    v = jnp.zeros((3, 2))
    safe_norm = jax.jit(ir.safe_norm)
    assert float(safe_norm(v)) == 0.0
    assert np.all(np.isfinite(jax.jit(jax.grad(ir.safe_norm))(v)))
    np.testing.assert_allclose(safe_norm(jnp.array([3.0, 4.0])), 5.0)


def test_threshold_targets_keeps_only_the_tails():
    t = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 20.0, -12.0, 2.0]], np.float32)
    mu, sd = t.mean(), t.std()
    out = ir.threshold_targets(t, num_std=1.0)
    expected = np.where((t > mu + sd) | (t < mu - sd), t, 0.0)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, [[0, 0, 0, 0, 0, 20.0, -12.0, 0]])
    # Each map is thresholded with its own statistics.
    two = np.concatenate([t, 100 * t])
    np.testing.assert_array_equal(ir.threshold_targets(two, num_std=1.0)[1], 100 * out[0])


def test_permute_targets_moves_values_only_within_a_map():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(6, 4, 4, 1)).astype(np.float32)
    out = ir.permute_targets(t, fraction=0.25, seed=3)
    for a, b in zip(t, out, strict=True):
        np.testing.assert_array_equal(np.sort(a.ravel()), np.sort(b.ravel()))
        assert np.sum(a != b) <= 4  # int(16 * 0.25) entries take part
    assert np.any(out != t)
    np.testing.assert_array_equal(out, ir.permute_targets(t, fraction=0.25, seed=3))
    np.testing.assert_array_equal(ir.permute_targets(t, fraction=0.0, seed=3), t)


def test_compute_targets_of_a_linear_teacher_are_its_weights():
    w = np.random.default_rng(1).normal(size=(25, 3)).astype(np.float32)
    x = np.random.default_rng(2).uniform(size=(7, *SHAPE)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0], np.int32)
    teacher = lambda xs: xs.reshape(xs.shape[0], -1) @ w  # noqa: E731
    expected = w.T[y].reshape(x.shape)
    for method in ir.TARGET_METHODS:
        t = ir.compute_targets(teacher, x, y, method=method, num_samples=4, batch_size=3)
        np.testing.assert_allclose(t, expected, rtol=1e-5)


def test_build_interpretation_targets_from_file(tmp_path):
    params, forward, _, batch = _setup()
    x = np.asarray(batch["x"])
    y = np.asarray(batch["y"], np.int32)
    raw = np.asarray(batch["target"])
    path = str(tmp_path / "targets.npz")
    ir.save_targets(path, raw, fingerprint=ir.data_fingerprint(x, y), settings={"method": "t"})
    config = ml_collections.ConfigDict(
        dict(
            name="interpretation",
            lambda_cs=2.0,
            lambda_gm=0.3,
            targets=dict(path=path, threshold_std=1.0),
        )
    )
    objective = ir.build_interpretation(config)
    assert isinstance(objective, Objective)
    dataset = types.SimpleNamespace(
        train_x=x, train_y=y, info=types.SimpleNamespace(bounds=(0.0, 1.0))
    )
    arrays = objective.extra_train_arrays(dataset)
    np.testing.assert_array_equal(arrays["target"], ir.threshold_targets(raw, num_std=1.0))
    got, _ = jax.jit(objective.loss_fn, static_argnums=1)(
        params, forward, batch, jax.random.PRNGKey(0), None
    )
    want, _ = ir_loss(params, forward, batch, None, lambda_cs=2.0, lambda_gm=0.3)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Targets cached for other training data are refused.
    other = types.SimpleNamespace(train_x=x + 0.5, train_y=y, info=dataset.info)
    with pytest.raises(ValueError, match="different training data"):
        objective.extra_train_arrays(other)


def test_build_interpretation_validates_config():
    with pytest.raises(ValueError, match="train.objective.variant"):
        ir.build_interpretation(ml_collections.ConfigDict(dict(name="interpretation", variant="x")))
    with pytest.raises(ValueError, match="unknown keys"):
        ir.build_interpretation(
            ml_collections.ConfigDict(dict(name="interpretation", targets=dict(sigmaa=0.1)))
        )
    objective = ir.build_interpretation(ml_collections.ConfigDict(dict(name="interpretation")))
    dataset = types.SimpleNamespace(
        train_x=np.zeros((2, *SHAPE), np.float32),
        train_y=np.zeros(2, np.int32),
        info=types.SimpleNamespace(bounds=(0.0, 1.0)),
    )
    with pytest.raises(ValueError, match="teacher_workdir"):
        objective.extra_train_arrays(dataset)


@pytest.mark.slow
def test_notebook_runs_and_checks_hold(run_notebook):
    nb = run_notebook("interpretability.ipynb")
    lines = [
        line
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        for line in out.get("text", "").splitlines()
        if line.startswith("NOTEBOOK_CHECKS ")
    ]
    assert len(lines) == 1
    checks = json.loads(lines[0].removeprefix("NOTEBOOK_CHECKS "))
    assert checks["smoothgrad_sigma0_max_abs_diff"] < 1e-6
    assert checks["ig_completeness_max_rel_error"] < 0.01
    assert abs(checks["cos_term_own_gradients"]) < 1e-6
    assert checks["lambda_cs0_gap"] < 1e-5
    assert checks["num_models"] == 2
    assert checks["robust_le_clean"]
