"""Saliency maps: identities with known answers (sigma = 0, linear models, completeness)."""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax import saliency


class TinyCNN(nn.Module):
    num_classes: int = 3
    relu: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        act = nn.relu if self.relu else nn.tanh
        # He-scaled weights and random biases keep outputs O(1) and many ReLU kinks in play.
        init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
        bias = nn.initializers.normal(0.5)
        x = act(nn.Conv(4, (3, 3), kernel_init=init, bias_init=bias)(x))
        x = x.reshape((x.shape[0], -1))
        x = act(nn.Dense(8, kernel_init=init, bias_init=bias)(x))
        return nn.Dense(self.num_classes, kernel_init=init)(x)


def _model(seed=0, relu=False, shape=(6, 6, 1)):
    module = TinyCNN(relu=relu)
    variables = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, *shape)))
    return lambda x: module.apply(variables, x, train=False)


@functools.partial(jax.jit, static_argnames=("n", "shape", "seed"))
def _data(n=4, shape=(6, 6, 1), seed=1):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.uniform(kx, (n, *shape)), jax.random.randint(ky, (n,), 0, 3)


def _linear(w):
    """Logits x -> x_flat @ w, so grad_x z_k = w[:, k] everywhere."""
    return lambda x: x.reshape(x.shape[0], -1) @ w


def test_gradient_matches_per_example_autodiff():
    logits_fn = _model()
    x, y = _data()

    @jax.jit
    def maps_and_references(x, y):  # one compiled program for every output
        maps, refs = {}, {}
        for output in saliency.OUTPUTS:
            maps[output] = saliency.gradient(logits_fn, x, y, output=output)

            def single(xi, yi, output=output):
                return saliency.per_example_output(logits_fn(xi[None]), yi[None], output=output)[0]

            refs[output] = jax.vmap(jax.grad(single))(x, y)
        # 'loss' is cross-entropy, the negative of 'log_prob'.
        ce = jax.vmap(
            jax.grad(
                lambda xi, yi: optax.softmax_cross_entropy_with_integer_labels(
                    logits_fn(xi[None]), yi[None]
                )[0]
            )
        )(x, y)
        return maps, refs, ce

    maps, refs, ce = maps_and_references(x, y)
    for output in saliency.OUTPUTS:
        np.testing.assert_allclose(maps[output], refs[output], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps["loss"], ce, atol=1e-6)


def test_gradient_defaults_to_predicted_class():
    logits_fn = _model()
    x, _ = _data()

    @jax.jit
    def default_and_predicted(x):
        pred = jnp.argmax(logits_fn(x), -1)
        return saliency.gradient(logits_fn, x), saliency.gradient(logits_fn, x, pred)

    np.testing.assert_allclose(*default_and_predicted(x))


def test_smoothgrad_sigma_zero_is_the_gradient():
    logits_fn = _model()
    x, y = _data()
    g = saliency.gradient(logits_fn, x, y)
    key = jax.random.PRNGKey(3)
    kw = dict(num_samples=5, sigma=0.0, chunk_size=2)
    np.testing.assert_allclose(saliency.smoothgrad(logits_fn, x, y, key, **kw), g, atol=1e-7)
    np.testing.assert_allclose(
        saliency.smoothgrad(logits_fn, x, y, key, aggregate="squared", **kw), g**2, atol=1e-7
    )
    np.testing.assert_allclose(
        saliency.smoothgrad(logits_fn, x, y, key, aggregate="vargrad", **kw), 0.0, atol=1e-7
    )


@pytest.mark.parametrize("include_clean", [False, True])
def test_smoothgrad_matches_brute_force(include_clean):
    logits_fn = _model(relu=True)
    x, y = _data()
    key = jax.random.PRNGKey(7)
    n, sigma, bounds = 7, 0.3, (0.0, 2.0)
    grad_fn = jax.jit(lambda xs: saliency.gradient(logits_fn, xs, y))
    draws = []
    for j in range(n):
        noise = jax.random.normal(jax.random.fold_in(key, j), x.shape)
        draws.append(grad_fn(jnp.clip(x + sigma * 2.0 * noise, 0, 2)))
    if include_clean:
        draws.append(grad_fn(x))
    draws = np.stack(draws)
    expected = {"mean": draws.mean(0), "squared": (draws**2).mean(0), "vargrad": draws.var(0)}
    for aggregate, ref in expected.items():
        got = saliency.smoothgrad(
            logits_fn,
            x,
            y,
            key,
            num_samples=n,
            sigma=sigma,
            chunk_size=3,
            aggregate=aggregate,
            include_clean=include_clean,
            bounds=bounds,
        )
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_smoothgrad_ignores_chunking():
    logits_fn = _model(relu=True)
    x, y = _data()
    key = jax.random.PRNGKey(5)
    maps = [
        saliency.smoothgrad(logits_fn, x, y, key, num_samples=6, chunk_size=c, aggregate="vargrad")
        for c in (6, 4)
    ]
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-4, atol=1e-7)


def test_smoothgrad_of_a_linear_model_is_its_weights():
    w = jax.random.normal(jax.random.PRNGKey(0), (36, 3))
    x, y = _data()
    sg = jax.jit(
        lambda w, x, y, key: saliency.smoothgrad(_linear(w), x, y, key, num_samples=6, sigma=0.5)
    )(w, x, y, jax.random.PRNGKey(1))
    w, y = jax.device_get((w, y))
    np.testing.assert_allclose(sg, w.T[y].reshape(x.shape), rtol=1e-5)


@pytest.mark.parametrize("rule", saliency.IG_RULES)
def test_quadrature_integrates_polynomials(rule):
    alphas, weights = saliency.quadrature(16, rule)
    assert np.isclose(weights.sum(), 1.0)
    assert alphas.min() >= 0 and alphas.max() <= 1
    # int_0^1 a^2 = 1/3; the trapezoid and midpoint errors are O(1/m^2), Riemann O(1/m).
    tol = {"gauss_legendre": 1e-12, "riemann_middle": 1e-3, "trapezoid": 1e-3}.get(rule, 4e-2)
    assert abs(np.sum(weights * alphas**2) - 1 / 3) < tol
    if rule == "gauss_legendre":  # exact up to degree 2m - 1 = 31
        assert abs(np.sum(weights * alphas**31) - 1 / 32) < 1e-12


def test_integrated_gradients_of_a_linear_model():
    w = jax.random.normal(jax.random.PRNGKey(0), (36, 3))
    x, y = _data()
    baselines = ("zeros", "upper", "mean", 0.25)

    @jax.jit
    def attributions_and_baselines(w, x, y):  # one compiled program for every baseline
        return [
            (
                saliency.integrated_gradients(_linear(w), x, y, baseline=baseline, num_steps=3),
                saliency.make_baseline(baseline, x),
            )
            for baseline in baselines
        ]

    results = jax.device_get(attributions_and_baselines(w, x, y))
    x, w, y = jax.device_get((x, w, y))
    for ig, x0 in results:
        np.testing.assert_allclose(ig, (x - x0) * w.T[y].reshape(x.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["riemann_middle", "trapezoid", "gauss_legendre"])
def test_integrated_gradients_completeness(rule):
    """Sundararajan et al., Proposition 1: attributions sum to f(x) - f(x'), 1% at 64 steps."""
    logits_fn = _model(seed=2)
    x, y = _data(n=6)
    key = jax.random.PRNGKey(4)
    for baseline in ("zeros", "uniform"):
        ig = saliency.integrated_gradients(
            logits_fn, x, y, baseline=baseline, num_steps=64, rule=rule, chunk_size=16, key=key
        )
        x0 = saliency.make_baseline(baseline, x, key=key)
        total, diff = saliency.completeness_gap(logits_fn, x, x0, y, ig)
        assert np.all(np.abs(diff) > 1e-3)  # a non-trivial check
        np.testing.assert_allclose(total, diff, rtol=0.01)


def test_integrated_gradients_completeness_relu():
    """Piecewise-linear paths converge more slowly (kinks); 512 midpoint steps suffice."""
    logits_fn = _model(seed=2, relu=True)
    x, y = _data(n=6)

    @jax.jit
    def gap(x, y):
        ig = saliency.integrated_gradients(
            logits_fn, x, y, num_steps=512, rule="riemann_middle", chunk_size=128
        )
        return saliency.completeness_gap(logits_fn, x, jnp.zeros_like(x), y, ig)

    total, diff = gap(x, y)
    np.testing.assert_allclose(total, diff, atol=0.01 * float(np.max(np.abs(diff))))


def test_integrated_gradients_ignores_chunking():
    logits_fn = _model()
    x, y = _data()
    a, b = jax.jit(
        lambda x, y: [
            saliency.integrated_gradients(logits_fn, x, y, num_steps=20, chunk_size=c)
            for c in (20, 6)
        ]
    )(x, y)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_samplers_compile_once():
    logits_fn = _model()
    sg = jax.jit(lambda x, y, k: saliency.smoothgrad(logits_fn, x, y, k, num_samples=4))
    x, y = _data()
    x2, key2 = x + 0.1, jax.random.PRNGKey(1)
    sg(x, y, jax.random.PRNGKey(0))
    with jax.log_compiles():
        import logging

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("jax").addHandler(handler)
        try:
            sg(x2, y, key2)
        finally:
            logging.getLogger("jax").removeHandler(handler)
    assert not [r for r in records if "Compiling" in r.getMessage()]


def test_cosine_similarity_and_foreground_mass():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
    b = np.array([[0.0, 2.0], [-3.0, -3.0], [1.0, 1.0]], np.float32)
    x = np.zeros((1, 2, 2, 1), np.float32)
    x[0, 0, 0, 0] = 1.0
    s = np.array([3.0, -1.0, 0.5, -0.5], np.float32).reshape(1, 2, 2, 1)
    cosine, mass = jax.jit(
        lambda a, b, s, x: (
            saliency.cosine_similarity(a, b),
            saliency.foreground_mass(s, x, threshold=0.5),
        )
    )(a, b, s, x)
    np.testing.assert_allclose(cosine, [0.0, -1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(mass, [0.6])


def test_map_in_batches_pads_and_keys():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.zeros(10, np.int32)
    out = saliency.map_in_batches(jax.jit(lambda a, b: a * 2), x, y, batch_size=4)
    np.testing.assert_allclose(out, x * 2)


def test_saliency_grid_writes_png(tmp_path):
    logits_fn = _model()
    x, y = _data(n=3)
    maps = jax.jit(
        lambda x, y: {
            "gradient": saliency.gradient(logits_fn, x, y),
            "ig": saliency.integrated_gradients(logits_fn, x, y, num_steps=8),
        }
    )(x, y)
    disp = saliency.display_map(np.asarray(maps["gradient"]))
    assert disp.shape == (3, 6, 6) and disp.min() >= -1 and disp.max() <= 1
    path = saliency.saliency_grid(str(tmp_path / "grid.png"), np.asarray(x), maps)
    assert os.path.getsize(path) > 1000
    import matplotlib.image as mpimg

    assert mpimg.imread(path).ndim == 3
