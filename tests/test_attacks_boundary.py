"""APGD-B (`advjax.attacks.boundary`): closed forms, the probe identity, block starts."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import build_attack, fold_in_each
from advjax.attacks.apgd import _apgd_run
from advjax.attacks.boundary import apgd_boundary, block_start

EPS = 0.3


def _linear(w, b):
    def logits_fn(x):
        return x.reshape(x.shape[0], -1) @ w + b

    return logits_fn


def _linear_problem(n=24, shape=(6, 6, 1), classes=10, seed=0):
    r = np.random.default_rng(seed)
    d = int(np.prod(shape))
    w = jnp.asarray(r.normal(0, 1, (d, classes)) / np.sqrt(d), jnp.float32)
    b = jnp.zeros((classes,), jnp.float32)
    x = jnp.asarray(r.uniform(0, 1, (n, *shape)), jnp.float32)
    f = _linear(w, b)
    y = jnp.argmax(f(x), axis=1)  # every point starts correctly classified
    return f, w, x, y


def _worst_margin(w, x, y, eps):
    """Closed form: the lowest ``z_y - z_k`` over the l_inf ball and the box [0, 1].

    For a linear model the minimum of ``a . delta`` over ``max(-eps, -x) <= delta <=
    min(eps, 1 - x)`` takes each coordinate at the end its coefficient's sign picks.
    """
    w, x, y = np.asarray(w, np.float64), np.asarray(x, np.float64), np.asarray(y)
    flat = x.reshape(x.shape[0], -1)
    lo, hi = np.maximum(-eps, -flat), np.minimum(eps, 1 - flat)
    z = flat @ w
    worst = np.full(len(y), np.inf)
    for i in range(len(y)):
        for k in range(w.shape[1]):
            if k == y[i]:
                continue
            a = w[:, y[i]] - w[:, k]
            m = z[i, y[i]] - z[i, k] + np.sum(np.minimum(a * lo[i], a * hi[i]))
            worst[i] = min(worst[i], m)
    return worst


def test_block_start_is_constant_on_a_grid_of_squares():
    x = jnp.zeros((28, 28, 1))
    for seed in range(20):
        delta = np.asarray(block_start(jax.random.key(seed), x, jnp.float32(EPS)))
        assert set(np.unique(delta).astype(float).round(6)) <= {-EPS, 0.0, EPS}
        # Brute force: some side in 2..7 and offset in 0..6 has every square constant.
        fits = []
        for side, oi, oj in itertools.product(range(2, 8), range(7), range(7)):
            rows, cols = (np.arange(28) + oi) // side, (np.arange(28) + oj) // side
            cells = {}
            for i, j in itertools.product(range(28), range(28)):
                cells.setdefault((rows[i], cols[j]), set()).add(float(delta[i, j, 0]))
            fits.append(all(len(v) == 1 for v in cells.values()))
        assert any(fits), seed


def test_without_selected_points_it_returns_the_margin_probe():
    f, _, x, y = _linear_problem()
    keys = jax.random.split(jax.random.key(3), x.shape[0])
    eps = jnp.full((x.shape[0],), EPS)
    got = jax.jit(lambda v, t, k: apgd_boundary(
        f, v, t, k, eps=EPS, num_steps=20, margin_below=-np.inf
    ))(x, y, keys)  # fmt: skip
    probe, _, _ = jax.jit(lambda v, t, k: _apgd_run(
        f, v, t, fold_in_each(k, 0), eps, None, norm="linf", num_steps=20, loss="margin",
        bounds=(0.0, 1.0), rho=0.75, momentum=0.75,
    ))(x, y, keys)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(got), np.asarray(probe))


def test_fools_exactly_the_points_a_linear_model_cannot_defend():
    f, w, x, y = _linear_problem(n=48, seed=1)
    eps = 0.03  # 15 of the 48 points can be fooled, 25 cannot (8 too close to call)
    worst = _worst_margin(w, x, y, eps)
    x_adv = jax.jit(
        lambda v, t: apgd_boundary(
            f, v, t, jax.random.key(0), eps=eps, num_steps=30, restart_steps=20,
            num_restarts=6, margin_below=np.inf, chunk=8,
        )
    )(x, y)  # fmt: skip
    delta = np.asarray(x_adv - x)
    assert np.abs(delta).max() <= eps + 1e-6
    assert np.asarray(x_adv).min() >= 0.0 and np.asarray(x_adv).max() <= 1.0
    fooled = np.asarray(jnp.argmax(f(x_adv), axis=1) != y)
    clear = np.abs(worst) > 0.02
    assert (worst[clear] < 0).any() and (worst[clear] > 0).any()  # both kinds present
    np.testing.assert_array_equal(fooled[clear], worst[clear] < 0)


def _threshold_model(window_sum_needed=2.7):
    """Three classes on 8x8 images: z = (1, 10 relu(S - t), -5) with S the sum of the
    4x4 window at rows and columns 2..5. At x = 0 the gradient is exactly zero until S
    passes t; with eps 0.3 the window can sum to 4.8, so the point is not robust."""

    def logits_fn(v):
        s = jnp.sum(v[:, 2:6, 2:6, 0], axis=(1, 2))
        one = jnp.ones_like(s)
        return jnp.stack([one, 10 * jax.nn.relu(s - window_sum_needed), -5 * one], axis=1)

    return logits_fn


def test_block_starts_reach_what_uniform_starts_cannot():
    f = _threshold_model()
    x = jnp.zeros((1, 8, 8, 1))
    y = jnp.zeros((1,), jnp.int32)
    key = jax.random.key(4)
    # Closed form: the worst case sets the window to eps, 16 * 0.3 = 4.8 > 2.7, and then
    # z_1 = 21 > z_0 = 1.
    assert int(jnp.argmax(f(jnp.full_like(x, EPS)), axis=1)[0]) == 1

    def fooled(**kw):
        def attack(v, t, k):
            x_adv = apgd_boundary(f, v, t, k, eps=EPS, num_steps=20, restart_steps=10, **kw)
            return jnp.argmax(f(x_adv), axis=1)[0] != 0

        return bool(jax.jit(attack)(x, y, key))

    # The probe's uniform start sums to less than 2.7 on the window, so its gradient is
    # zero and APGD never moves; uniform restarts alone (losses ('ce',), one restart
    # from a uniform start) fail too.
    assert not fooled(margin_below=-np.inf)
    assert not fooled(losses_used=("ce",), num_restarts=1)
    # Block starts set whole squares to +eps and cross the threshold.
    assert fooled(losses_used=("ce",), num_restarts=40)


def _apgd(f, x, y, key, **kw):
    n = x.shape[0]
    return jax.jit(lambda v, t, k: _apgd_run(
        f, v, t, jax.random.split(k, n), jnp.full((n,), EPS), None, norm="linf",
        bounds=(0.0, 1.0), rho=0.75, momentum=0.75, **kw,
    ))(x, y, key)  # fmt: skip


def test_noise_leaves_a_linear_losses_steps_unchanged():
    # The margin of a linear model is linear in x, so every noisy gradient is the
    # exact one and the steps (signs of the mean) are the same.
    f, _, x, y = _linear_problem(n=16, seed=3)
    kw = dict(num_steps=15, loss="ce", loss_fn=lambda z: -(z[jnp.arange(16), y] - z[:, 0]))
    exact = _apgd(f, x, y, jax.random.key(2), **kw)[0]
    noisy = _apgd(f, x, y, jax.random.key(2), noise=(0.1, 3), **kw)[0]
    np.testing.assert_array_equal(np.asarray(noisy), np.asarray(exact))


def test_noise_gives_a_gradient_where_the_exact_one_is_zero():
    f = _threshold_model(window_sum_needed=1.8)
    x = jnp.zeros((1, 8, 8, 1))
    y = jnp.zeros((1,), jnp.int32)
    key = jax.random.key(6)
    exact_found = _apgd(f, x, y, key, num_steps=20, loss="ce")[1]
    noisy_found = _apgd(f, x, y, key, num_steps=20, loss="ce", noise=(0.15, 4))[1]
    # Closed form: the window can sum to 4.8 > 1.8. From this key's uniform start the
    # window sums to less than 1.8, the exact gradient is zero and APGD stays; Gaussian
    # draws of std 0.15 push the window's sum (std 0.6) past 1.8 for some of them.
    assert not bool(exact_found[0]) and bool(noisy_found[0])


def test_a_points_result_does_not_depend_on_its_batch_or_chunk():
    f, _, x, y = _linear_problem(n=12, seed=2)
    keys = jax.random.split(jax.random.key(5), 12)
    perm = np.random.default_rng(0).permutation(12)

    def run(v, t, k, chunk):
        return apgd_boundary(
            f, v, t, k, eps=EPS, num_steps=10, restart_steps=5, num_restarts=4,
            margin_below=np.inf, chunk=chunk,
        )  # fmt: skip

    a = np.asarray(run(x, y, keys, 5))
    b = np.asarray(run(x[perm], y[perm], keys[perm], 1))
    c = np.asarray(run(x[:3], y[:3], keys[:3], 64))
    np.testing.assert_allclose(b, a[perm], atol=1e-5)
    np.testing.assert_allclose(c, a[:3], atol=1e-5)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"norm": "l2"}, "norm"),
        ({"losses": ("ce", "kl")}, "losses"),
        ({"losses": ()}, "losses"),
        ({"num_restarts": 0}, "num_restarts"),
        ({"noise_samples": 1.5}, "noise_samples"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"restart_step": 10}, "restart_step"),
    ],
)
def test_config_errors_name_the_key(change, named):
    with pytest.raises(ValueError, match=named):
        build_attack(dict({"name": "apgd_boundary", "eps": EPS}, **change))


def test_the_ensemble_passes_its_boundary_settings():
    ens = build_attack(
        {
            "name": "ensemble",
            "eps": EPS,
            "attacks": ("apgd_ce", "apgd_boundary", "square"),
            "num_steps": 7,
            "boundary_restarts": 3,
            "boundary_steps": 4,
            "boundary_margin": 1.5,
        }
    )
    comp = ens.components[1]
    assert comp.name == "apgd_boundary" and comp.white_box
    hp = dict(comp.hparams)
    assert (hp["num_steps"], hp["num_restarts"], hp["restart_steps"], hp["margin_below"]) == (
        7,
        3,
        4,
        1.5,
    )
