"""Tsipras et al. 2019 toy model: closed forms, Theorem 1, adversarial training.

Known answers: normal-CDF closed forms against Monte-Carlo (3 standard errors), Theorem 1
on a sweep of linear classifiers, the exact worst-case margin against random search, and
l_inf adversarial training of a linear model through the training loop putting its weight
on the robust feature (the population optimum at eps = 2 eta, where every weak feature
costs more margin, eps, than it brings, eta).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from advjax.analysis import tradeoff
from advjax.data.synthetic import sample_tsipras

D, P = 1000, 0.95
ETA = 3.0 / math.sqrt(D)

# One compiled program per shape: the sizes are static, eta, p, eps and the bias traced.
sample = jax.jit(sample_tsipras, static_argnames=("num", "dim"))
linear_accuracy = jax.jit(tradeoff.linear_accuracy)


@pytest.fixture(scope="module")
def toy_sample():
    x, y = sample(jax.random.PRNGKey(0), 8000, dim=D, eta=ETA, p=P)
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
    assert float(linear_accuracy(w, eta=ETA, p=P, eps=0.0)) == pytest.approx(0.99865, abs=1e-4)
    assert float(linear_accuracy(w, eta=ETA, p=P, eps=2 * ETA)) == pytest.approx(0.00135, abs=1e-4)


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
    assert float(linear_accuracy(jnp.asarray(w), eta=ETA, p=P, eps=eps)) == (
        pytest.approx(closed, abs=1e-5)
    )
    acc, se = tradeoff.empirical_linear_accuracy(jnp.asarray(w), 0.0, x, y, eps=eps)
    assert abs(acc - closed) <= 3 * max(se, 1.0 / x.shape[0])


def test_general_linear_accuracy_with_bias_matches_monte_carlo():
    d, eta, p = 20, 0.3, 0.8
    x, y = sample(jax.random.PRNGKey(1), 40_000, dim=d, eta=eta, p=p)
    w = jax.random.normal(jax.random.PRNGKey(2), (d + 1,)) * 0.3 + 0.2
    for bias, eps in ((0.3, 0.0), (-0.5, 0.1), (0.1, 0.25)):
        closed = float(linear_accuracy(w, bias, eta=eta, p=p, eps=eps))
        acc, se = tradeoff.empirical_linear_accuracy(w, bias, x, y, eps=eps)
        assert abs(acc - closed) <= 3 * se, (bias, eps, acc, closed)


def test_linear_margins_are_the_exact_worst_case():
    # The worst-case l_inf perturbation of a linear classifier is -eps * y * sign(w).
    d, eps = 6, 0.2

    @jax.jit
    def margins():
        x, y = sample_tsipras(jax.random.PRNGKey(3), 64, dim=d, eta=0.5, p=0.9)
        w = jax.random.normal(jax.random.PRNGKey(4), (d + 1,))
        delta = -eps * y[:, None] * jnp.sign(w)[None]
        attacked = y * ((x + delta) @ w + 0.1)
        rand = jax.random.uniform(jax.random.PRNGKey(5), (200, 64, d + 1), minval=-eps, maxval=eps)
        others = y[None] * ((x[None] + rand) @ w + 0.1)
        return tradeoff.linear_margins(w, 0.1, x, y, eps=eps), attacked, others

    exact, attacked, others = map(np.asarray, margins())
    np.testing.assert_allclose(exact, attacked, rtol=1e-5, atol=1e-5)
    assert bool(np.all(others >= attacked[None] - 1e-5))


def test_theorem1_bound_on_a_sweep_of_classifiers():
    eps = 2 * ETA
    alphas = np.concatenate([np.linspace(0.0, 0.3, 31), np.linspace(0.35, 1.0, 14)])
    sweep = tradeoff.mixture_sweep(alphas, dim=D, eta=ETA, p=P, eps=eps)
    assert np.all(sweep["robust"] <= sweep["bound"] + 1e-5)
    # The sweep spans the trade-off: accurate-but-fragile to robust-at-p.
    assert sweep["standard"][0] > 0.998 and sweep["robust"][0] < 0.002
    assert sweep["robust"][-1] == pytest.approx(P, abs=1e-5)

    # Random linear classifiers (with biases) obey the bound too.
    def accuracies(k):
        k1, k2, k3 = jax.random.split(k, 3)
        w = jax.random.normal(k1, (D + 1,)) * jnp.exp(jax.random.normal(k2, ())) + 0.01
        w = w.at[0].multiply(10.0 * jax.random.uniform(k3))
        b = 0.1 * jax.random.normal(k3)
        return (
            tradeoff.linear_accuracy(w, b, eta=ETA, p=P),
            tradeoff.linear_accuracy(w, b, eta=ETA, p=P, eps=eps),
        )

    std, rob = jax.jit(jax.vmap(accuracies))(jax.random.split(jax.random.PRNGKey(6), 200))
    assert bool(jnp.all(rob <= tradeoff.tsipras_bound(std, p=P) + 1e-5))


def test_adversarial_training_puts_the_weight_on_the_robust_feature(tmp_path):
    from advjax import runs
    from advjax.configlib import load_config
    from advjax.experiments.tradeoff_toy import linear_weights

    d, p = 200, 0.95
    eta = 3.0 / math.sqrt(d)
    c = load_config("configs/tradeoff_toy.py:smoke")
    c.data.dim = d
    c.train.objective.attack.eps = 2 * eta
    c.train.objective.attack.step_size = eta
    c.data.num_train = 2000
    c.train.num_epochs = 8.0
    c.train.batch_size = 200
    c.train.optimizer.learning_rate = 0.02
    c.train.val_examples = 0
    c.checkpoint.every_steps = 1000
    c.train.log_every_steps = 1000
    model = runs.train_or_load(c, str(tmp_path / "at"))
    w, b = linear_weights(model)
    assert abs(w[0]) / np.abs(w).sum() > 0.8
    std = float(linear_accuracy(jnp.asarray(w), b, eta=eta, p=p, eps=0.0))
    rob = float(linear_accuracy(jnp.asarray(w), b, eta=eta, p=p, eps=2 * eta))
    assert std == pytest.approx(p, abs=0.01) and rob == pytest.approx(p, abs=0.02)
    assert rob <= float(tradeoff.tsipras_bound(std, p=p)) + 1e-6
    # The library's PGD finds the exact worst case of the linear model.
    from advjax.attacks.pgd import pgd
    from advjax.data.synthetic import UNBOUNDED

    @jax.jit
    def correct():
        x, y = sample_tsipras(jax.random.PRNGKey(9), 500, dim=d, eta=eta, p=p)
        y01 = (y > 0).astype(jnp.int32)
        x_adv = pgd(
            model.logits_fn,
            x,
            y01,
            jax.random.PRNGKey(1),
            norm="linf",
            eps=2 * eta,
            step_size=eta,
            num_steps=5,
            bounds=UNBOUNDED,
        )
        pgd_correct = jnp.argmax(model.logits_fn(x_adv), -1) == y01
        exact_correct = tradeoff.linear_margins(jnp.asarray(w), b, x, y, eps=2 * eta) > 0
        return pgd_correct, exact_correct

    pgd_correct, exact_correct = map(np.asarray, correct())
    assert bool(np.all(pgd_correct == exact_correct))
