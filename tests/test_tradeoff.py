"""Tsipras toy model and the closed-form adversarial risk of linear predictors.

Known answers: normal-CDF closed forms against Monte-Carlo (3 standard errors), Theorem 1
of Tsipras et al. on a sweep of linear classifiers, the exact inner maximum of the squared
loss against brute-force search, and the optax risk minimiser against a scipy solver of
smooth reformulations of the same convex problem.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from advjax.analysis import tradeoff
from advjax.analysis.spurious import CoreSpuriousModel
from advjax.data.synthetic import sample_core_spurious, sample_tsipras

D, P = 1000, 0.95
ETA = 3.0 / math.sqrt(D)


@pytest.fixture(scope="module")
def toy_sample():
    x, y = sample_tsipras(jax.random.PRNGKey(0), 8000, dim=D, eta=ETA, p=P)
    return x, y


def test_averaging_classifier_headline_numbers():
    # Tsipras et al. section 2.1: Phi(3) and Phi(-3).
    assert tradeoff.averaging_accuracy(dim=D, eta=ETA) == pytest.approx(
        scipy.stats.norm.cdf(3.0), abs=1e-6
    )
    assert tradeoff.averaging_accuracy(dim=D, eta=ETA, eps=2 * ETA) == pytest.approx(
        scipy.stats.norm.cdf(-3.0), abs=1e-6
    )
    w = jnp.asarray(tradeoff.averaging_classifier(D))
    assert float(tradeoff.linear_accuracy(w, eta=ETA, p=P)) == pytest.approx(0.99865, abs=1e-4)
    assert float(tradeoff.linear_accuracy(w, eta=ETA, p=P, eps=2 * ETA)) == pytest.approx(
        0.00135, abs=1e-4
    )


@pytest.mark.parametrize("which", ["averaging", "robust"])
@pytest.mark.parametrize("eps_factor", [0.0, 1.0, 2.0])
def test_toy_closed_forms_match_monte_carlo(toy_sample, which, eps_factor):
    x, y = toy_sample
    eps = eps_factor * ETA
    if which == "averaging":
        w = tradeoff.averaging_classifier(D)
        closed = tradeoff.averaging_accuracy(dim=D, eta=ETA, eps=eps)
    else:
        w = tradeoff.robust_feature_classifier(D)
        closed = tradeoff.robust_feature_accuracy(p=P, eps=eps)
    assert float(tradeoff.linear_accuracy(jnp.asarray(w), eta=ETA, p=P, eps=eps)) == (
        pytest.approx(closed, abs=1e-5)
    )
    acc, se = tradeoff.empirical_linear_accuracy(jnp.asarray(w), 0.0, x, y, eps=eps)
    assert abs(acc - closed) <= 3 * max(se, 1.0 / x.shape[0])


def test_general_linear_accuracy_with_bias_matches_monte_carlo():
    d, eta, p = 20, 0.3, 0.8
    x, y = sample_tsipras(jax.random.PRNGKey(1), 40_000, dim=d, eta=eta, p=p)
    w = jax.random.normal(jax.random.PRNGKey(2), (d + 1,)) * 0.3 + 0.2
    for bias, eps in ((0.3, 0.0), (-0.5, 0.1), (0.1, 0.25)):
        closed = float(tradeoff.linear_accuracy(w, bias, eta=eta, p=p, eps=eps))
        acc, se = tradeoff.empirical_linear_accuracy(w, bias, x, y, eps=eps)
        assert abs(acc - closed) <= 3 * se, (bias, eps, acc, closed)


def test_linear_margins_are_the_exact_worst_case():
    # The worst-case l_inf perturbation of a linear classifier is -eps * y * sign(w).
    d = 6
    x, y = sample_tsipras(jax.random.PRNGKey(3), 64, dim=d, eta=0.5, p=0.9)
    w = jax.random.normal(jax.random.PRNGKey(4), (d + 1,))
    eps = 0.2
    delta = -eps * y[:, None] * jnp.sign(w)[None]
    attacked = y * ((x + delta) @ w + 0.1)
    np.testing.assert_allclose(
        tradeoff.linear_margins(w, 0.1, x, y, eps=eps), attacked, rtol=1e-5, atol=1e-5
    )
    rand = jax.random.uniform(jax.random.PRNGKey(5), (200, 64, d + 1), minval=-eps, maxval=eps)
    others = y[None] * ((x[None] + rand) @ w + 0.1)
    assert bool(jnp.all(others >= attacked[None] - 1e-5))


def test_theorem1_bound_on_a_sweep_of_classifiers():
    eps = 2 * ETA
    alphas = np.concatenate([np.linspace(0.0, 0.3, 31), np.linspace(0.35, 1.0, 14)])
    sweep = tradeoff.mixture_sweep(alphas, dim=D, eta=ETA, p=P, eps=eps)
    assert np.all(sweep["robust"] <= sweep["bound"] + 1e-5)
    # The sweep spans the trade-off: accurate-but-fragile to robust-at-p.
    assert sweep["standard"][0] > 0.998 and sweep["robust"][0] < 0.002
    assert sweep["robust"][-1] == pytest.approx(P, abs=1e-5)
    # Random linear classifiers (with biases) obey the bound too.
    keys = jax.random.split(jax.random.PRNGKey(6), 200)
    for k in keys:
        k1, k2, k3 = jax.random.split(k, 3)
        w = jax.random.normal(k1, (D + 1,)) * jnp.exp(jax.random.normal(k2, ())) + 0.01
        w = w.at[0].multiply(10.0 * jax.random.uniform(k3))
        b = 0.1 * jax.random.normal(k3)
        std = float(tradeoff.linear_accuracy(w, b, eta=ETA, p=P))
        rob = float(tradeoff.linear_accuracy(w, b, eta=ETA, p=P, eps=eps))
        assert rob <= float(tradeoff.tsipras_bound(std, p=P)) + 1e-5


# ----------------------------------------------------------------------- regression theory


@pytest.mark.parametrize("norm", tradeoff.NORMS)
def test_inner_maximum_beats_brute_force(norm):
    key = jax.random.PRNGKey(7)
    d, n, eps = 5, 16, 0.3
    w = jax.random.normal(key, (d,))
    x = jax.random.normal(jax.random.fold_in(key, 1), (n, d))
    y = jax.random.normal(jax.random.fold_in(key, 2), (n,))
    delta = tradeoff.worst_case_perturbation(w, x, y, norm=norm, eps=eps)
    norms = {
        "linf": jnp.max(jnp.abs(delta), 1),
        "l2": jnp.linalg.norm(delta, axis=1),
        "l1": jnp.sum(jnp.abs(delta), 1),
    }[norm]
    np.testing.assert_allclose(norms, eps, rtol=1e-5)
    exact = tradeoff.adversarial_squared_loss(w, x, y, norm=norm, eps=eps)
    np.testing.assert_allclose((y - (x + delta) @ w) ** 2, exact, rtol=1e-5)
    # Random points of the ball (including its vertices / boundary) never do better.
    u = jax.random.normal(jax.random.fold_in(key, 3), (2000, n, d))
    if norm == "linf":
        cand = eps * jnp.sign(u)
    elif norm == "l2":
        cand = eps * u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    else:
        cand = eps * u / jnp.sum(jnp.abs(u), axis=-1, keepdims=True)
    losses = (y[None] - (x[None] + cand) @ w) ** 2
    assert bool(jnp.all(losses <= exact[None] * (1 + 1e-5) + 1e-6))
    assert float(jnp.max(losses, 0).min() / exact.min()) > 0.5  # the search is not vacuous


@pytest.mark.parametrize("norm", tradeoff.NORMS)
def test_gaussian_risk_matches_monte_carlo_with_exact_maximiser(norm):
    model = CoreSpuriousModel(d_core=2, d_spurious=3, scale_core=1.0, scale_spurious=2.0)
    cov, c, vy = model.moments()
    params = {k: v for k, v in model.__dict__.items()}
    x, y = sample_core_spurious(jax.random.PRNGKey(8), 200_000, **params)
    w = jnp.asarray([0.4, 0.3, 0.1, -0.05, 0.08])
    eps = 0.3
    delta = tradeoff.worst_case_perturbation(w, x, y, norm=norm, eps=eps)
    losses = (y - (x + delta) @ w) ** 2
    mc, se = float(jnp.mean(losses)), float(jnp.std(losses)) / math.sqrt(x.shape[0])
    closed = float(
        tradeoff.gaussian_adversarial_risk(
            w, cov_xx=jnp.asarray(cov), cov_xy=jnp.asarray(c), var_y=vy, norm=norm, eps=eps
        )
    )
    assert abs(mc - closed) <= 3 * se, (mc, closed, se)


def _scipy_minimiser(cov, c, vy, norm, eps):
    """Reference: the same convex problem in smooth form, solved by scipy."""
    d = c.shape[0]
    k = math.sqrt(2 / math.pi)

    def risk_from(w, t):
        s2 = vy - 2 * w @ c + w @ cov @ w
        s = math.sqrt(max(s2, 1e-300))
        return s2 + 2 * k * eps * t * s + (eps * t) ** 2

    w0 = np.linalg.solve(cov, c)
    if norm == "linf":  # ||w||_1 with w = u - v, u, v >= 0: smooth on the orthant.
        z0 = np.concatenate([np.maximum(w0, 0), np.maximum(-w0, 0)])
        f = lambda z: risk_from(z[:d] - z[d:], z.sum())
        res = scipy.optimize.minimize(
            f, z0, method="L-BFGS-B", bounds=[(0, None)] * (2 * d), options={"ftol": 1e-15, "gtol": 1e-12}
        )
        return res.x[:d] - res.x[d:]
    if norm == "l2":
        f = lambda w: risk_from(w, np.linalg.norm(w))
        return scipy.optimize.minimize(f, w0, method="BFGS", options={"gtol": 1e-10}).x
    # ||w||_inf <= t as linear constraints.
    cons = [{"type": "ineq", "fun": lambda z, i=i, s=s: z[d] - s * z[i]} for i in range(d) for s in (1, -1)]
    z0 = np.concatenate([w0, [np.abs(w0).max()]])
    res = scipy.optimize.minimize(
        lambda z: risk_from(z[:d], z[d]), z0, method="SLSQP", constraints=cons,
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return res.x[:d]


@pytest.mark.parametrize("norm", tradeoff.NORMS)
def test_optax_minimiser_matches_scipy_and_ols_at_zero(norm):
    model = CoreSpuriousModel(d_core=2, d_spurious=2, scale_core=1.0, scale_spurious=2.0)
    cov, c, vy = model.moments()
    eps_grid = [0.0, 0.1, 0.4]
    got = np.asarray(
        tradeoff.minimize_adversarial_risk(
            cov_xx=cov, cov_xy=c, var_y=vy, norm=norm, eps_grid=eps_grid, num_steps=4000
        )
    )
    np.testing.assert_allclose(got[0], np.linalg.solve(cov, c), atol=1e-3)
    np.testing.assert_allclose(got[0], tradeoff.least_squares(cov, c), atol=1e-3)
    for w, eps in zip(got[1:], eps_grid[1:], strict=True):
        ref = _scipy_minimiser(cov, c, vy, norm, eps)
        np.testing.assert_allclose(w, ref, atol=3e-3)
        risk = lambda v, e=eps: float(
            tradeoff.gaussian_adversarial_risk(
                jnp.asarray(v, jnp.float32), cov_xx=jnp.asarray(cov), cov_xy=jnp.asarray(c),
                var_y=vy, norm=norm, eps=e,
            )
        )
        assert risk(w) <= risk(ref) + 1e-5
