"""Attacks with known answers: linear optima, restarts, targets, APGD, Square, wrappers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from advjax import geometry, losses
from advjax.attacks import ATTACKS, fold_in_each
from advjax.attacks.apgd import apgd, apgd_targeted, checkpoints
from advjax.attacks.pgd import fgsm, pgd
from advjax.attacks.square import p_schedule, square
from advjax.attacks.wrappers import bpda, eot

UNBOUNDED = (-np.inf, np.inf)


# ----------------------------------------------------------------------------- models


def _binary_linear(w):
    """Two-class logits (0, w.x): CE for y = 1 is softplus(-w.x)."""

    def logits_fn(x):
        z = x.reshape(x.shape[0], -1) @ w
        return jnp.stack([jnp.zeros_like(z), z], axis=1)

    return logits_fn


class _TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(x)


def _prototype_data(n: int, seed: int):
    protos = np.random.default_rng(123).uniform(size=(10, 10, 10, 1)).astype(np.float32)
    r = np.random.default_rng(seed)
    y = r.integers(0, 10, n)
    x = protos[y] * 0.6 + 0.2 + r.normal(0.0, 0.25, (n, 10, 10, 1))
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int32)


@pytest.fixture(scope="module")
def trained_cnn():
    """A small CNN trained for a few seconds on noisy class prototypes (10x10, 10 classes)."""
    xtr, ytr = _prototype_data(1500, 0)
    model = _TinyCNN()
    params = jax.jit(model.init)(jax.random.key(0), xtr[:1])
    opt = optax.adam(3e-3)
    state = jax.jit(opt.init)(params)

    @jax.jit
    def step(p, s, xb, yb):
        def loss_fn(p):
            return losses.cross_entropy(model.apply(p, xb), yb).mean()

        g = jax.grad(loss_fn)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = rng.integers(0, len(xtr), 64)
        params, state = step(params, state, xtr[idx], ytr[idx])
    x, y = _prototype_data(128, 1)
    logits_fn = jax.jit(lambda v: model.apply(params, v))
    acc = float(np.mean(np.argmax(np.asarray(logits_fn(x)), 1) == y))
    assert acc > 0.9, acc  # the fixture must be a working classifier
    return logits_fn, jnp.asarray(x), jnp.asarray(y)


def _accuracy(logits_fn, x, y) -> float:
    return float(np.mean(np.argmax(np.asarray(logits_fn(x)), axis=1) == np.asarray(y)))


# ----------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pgd_reaches_the_linear_optimum(norm):
    # Without a box, max_{||d|| <= eps} softplus(-w.(x + d)) is attained at
    # d* = -eps * argmax_{||u||_p <= 1} w.u: eps sign(w), eps w/||w||_2, or eps on argmax|w_i|.
    d, eps = 16, 0.2
    w = jax.random.normal(jax.random.key(1), (d,))
    x = jax.random.uniform(jax.random.key(2), (6, d))
    y = jnp.ones(6, jnp.int32)

    @jax.jit
    def run(w, x, y):
        f = _binary_linear(w)
        if norm == "linf":
            d_star = -eps * jnp.sign(w)
        elif norm == "l2":
            d_star = -eps * w / jnp.linalg.norm(w)
        else:
            i = jnp.argmax(jnp.abs(w))
            d_star = -eps * jnp.sign(w[i]) * jax.nn.one_hot(i, d)
        x_adv = pgd(
            f,
            x,
            y,
            jax.random.key(0),
            norm=norm,
            eps=eps,
            step_size=eps / 4,
            num_steps=30,
            bounds=UNBOUNDED,
            l1_sparsity=1.0,
        )
        optimal = losses.cross_entropy(f(x + d_star), y)
        size = jnp.max(geometry.lp_norm(x_adv - x, norm=norm))
        return losses.cross_entropy(f(x_adv), y), optimal, size

    attained, optimal, size = run(w, x, y)
    np.testing.assert_allclose(np.asarray(attained), np.asarray(optimal), atol=1e-4)
    assert float(size) <= eps * (1 + 1e-5)


def test_fgsm_is_optimal_for_a_linear_model_in_linf():
    @jax.jit
    def run():
        w = jax.random.normal(jax.random.key(1), (12,))
        x = jax.random.uniform(jax.random.key(2), (5, 12))
        y = jnp.ones(5, jnp.int32)
        x_adv = fgsm(_binary_linear(w), x, y, eps=0.1, bounds=UNBOUNDED)
        return x_adv, x - 0.1 * jnp.sign(w)

    x_adv, expected = run()
    np.testing.assert_allclose(np.asarray(x_adv), np.asarray(expected), atol=1e-6)


def _bumpy(x):
    # Two-class model whose loss has many local maxima inside the ball.
    z = jnp.cos(12.0 * x[:, 0]) + jnp.cos(12.0 * x[:, 1]) + 0.3 * x[:, 0] - 0.2 * x[:, 1]
    return jnp.stack([jnp.zeros_like(z), z + 2.0], axis=1)


def test_restarts_return_the_per_example_worst_case():
    x = jax.random.uniform(jax.random.key(0), (16, 2), minval=0.3, maxval=0.7)
    y = jnp.ones(16, jnp.int32)
    keys = jax.random.split(jax.random.key(5), 16)
    kw = dict(eps=0.25, step_size=0.01, num_steps=15, bounds=UNBOUNDED)
    combined = jax.jit(lambda k: pgd(_bumpy, x, y, k, num_restarts=4, **kw))(keys)

    @jax.jit
    def single(r):
        s = pgd(_bumpy, x, y, fold_in_each(keys, r), **kw)
        return s, losses.cross_entropy(_bumpy(s), y), jnp.argmax(_bumpy(s), 1) != y

    singles, run_loss, run_succ = map(np.stack, zip(*[single(r) for r in range(4)], strict=True))
    # The restarts must disagree for the test to mean anything.
    assert np.max(run_loss.max(0) - run_loss.min(0)) > 0.05
    rank = np.where(run_succ.any(0)[None], np.where(run_succ, run_loss, -np.inf), run_loss)
    expected = np.stack([singles[r][i] for i, r in enumerate(rank.argmax(0))])
    np.testing.assert_allclose(np.asarray(combined), expected, atol=1e-6)


def test_targeted_pgd_reaches_the_target_on_a_linear_model():
    # With 10 classes and 20 features W has full row rank: d* = W^+(5 e_t - W x) makes
    # t the top class, so eps_i = 1.5 ||d*_i||_inf (a per-example eps) admits a solution.
    W = jax.random.normal(jax.random.key(3), (20, 10))
    f = lambda v: v @ W  # noqa: E731

    @jax.jit
    def problem():
        x = jax.random.uniform(jax.random.key(4), (8, 20))
        target = (jnp.argmax(f(x), 1) + 3) % 10
        d_star = (5.0 * jax.nn.one_hot(target, 10) - f(x)) @ jnp.linalg.pinv(W)
        eps = 1.5 * jnp.max(jnp.abs(d_star), axis=1)
        return x, target, eps, jnp.argmax(f(x + d_star), 1)

    x, target, eps, top = problem()
    assert bool(np.all(np.asarray(top) == np.asarray(target)))
    x_adv = jax.jit(
        pgd, static_argnums=0, static_argnames=("num_steps", "loss", "targeted", "bounds")
    )(
        f,
        x,
        target,
        jax.random.key(0),
        eps=eps,
        step_size=eps / 10,
        num_steps=60,
        loss="margin",
        targeted=True,
        bounds=UNBOUNDED,
    )
    top, size = jax.jit(lambda v: (jnp.argmax(f(v), 1), geometry.lp_norm(v - x, norm="linf")))(
        x_adv
    )
    assert bool(np.all(np.asarray(top) == np.asarray(target)))
    assert bool(np.all(np.asarray(size) <= np.asarray(eps) * (1 + 1e-5)))


def test_eps_sweep_by_vmap_equals_separate_runs(trained_cnn):
    f, x, y = trained_cnn
    x, y = x[:32], y[:32]
    attack = ATTACKS.get("pgd")(
        ml_collections.ConfigDict({"name": "pgd", "eps": 0.1, "num_steps": 5, "num_restarts": 2})
    )
    grid = jnp.asarray([0.0, 0.05, 0.2])
    swept = np.asarray(jax.jit(jax.vmap(lambda e: attack(f, x, y, jax.random.key(1), eps=e)))(grid))
    single = jax.jit(lambda e: attack(f, x, y, jax.random.key(1), eps=e))
    for i, eps in enumerate(np.asarray(grid)):
        np.testing.assert_allclose(swept[i], np.asarray(single(eps)), atol=1e-5)
    accs = [_accuracy(f, swept[i], y) for i in range(len(grid))]
    assert accs[0] == _accuracy(f, x, y) and accs[-1] < accs[0]


def test_results_do_not_depend_on_batch_composition(trained_cnn):
    f, x, y = trained_cnn
    x, y = x[:16], y[:16]
    keys = jax.random.split(jax.random.key(9), 16)
    perm = np.random.default_rng(0).permutation(16)
    run = jax.jit(lambda v, t, k: pgd(f, v, t, k, eps=0.1, step_size=0.02, num_steps=5))
    a = run(x, y, keys)
    b = run(x[perm], y[perm], keys[perm])
    np.testing.assert_allclose(np.asarray(b), np.asarray(a)[perm], atol=1e-5)


def test_unrolled_and_rolled_loops_agree(trained_cnn):
    f, x, y = trained_cnn
    x, y = x[:8], y[:8]
    runs = [
        jax.jit(lambda v, u=u: pgd(f, v, y, jax.random.key(3), eps=0.1, step_size=0.03,
                                   num_steps=4, unroll=u))(x)
        for u in (False, True)
    ]  # fmt: skip
    np.testing.assert_allclose(np.asarray(runs[0]), np.asarray(runs[1]), atol=1e-6)


def test_jitted_attack_compiles_once():
    traces = []
    w = jax.random.normal(jax.random.key(1), (9, 4))

    def f(v):
        traces.append(1)  # runs only while tracing
        return v.reshape(v.shape[0], -1) @ w

    attack = ATTACKS.get("pgd")({"name": "pgd", "eps": 0.1, "num_steps": 3, "num_restarts": 2})
    run = jax.jit(lambda v, t, k: attack(f, v, t, k))
    x = jax.random.uniform(jax.random.key(0), (4, 3, 3, 1))
    y = jnp.zeros(4, jnp.int32)
    run(x, y, jax.random.key(0)).block_until_ready()
    first = len(traces)
    for i in range(3):
        run(x + 0.01 * i, (y + i) % 4, jax.random.key(i)).block_until_ready()
    assert first > 0 and len(traces) == first


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(8)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(3)(nn.relu(x))


def test_attacks_leave_batchnorm_statistics_untouched():
    model = _BNNet()
    x = jax.random.uniform(jax.random.key(0), (6, 4, 4, 1))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    stats = jax.jit(lambda s: jax.tree.map(lambda v: v + 0.3, s))(variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}
    before = jax.tree.map(np.array, variables)
    f = jax.jit(lambda v: model.apply(variables, v, train=False))
    y = jnp.argmax(f(x), 1)
    clean = np.asarray(f(x))
    k = jax.random.key(0)
    jax.jit(lambda v: pgd(f, v, y, k, eps=0.1, step_size=0.05, num_steps=2))(x)
    jax.jit(lambda v: apgd(f, v, y, k, eps=0.1, num_steps=2))(x)
    after = jax.tree.map(np.array, variables)
    jax.tree.map(np.testing.assert_array_equal, before, after)
    np.testing.assert_array_equal(np.asarray(f(x)), clean)
    # Eval-mode predictions of one example do not depend on the rest of the batch.
    np.testing.assert_allclose(np.asarray(f(x[:1])), clean[:1], atol=1e-6)


def test_builders_validate_with_messages_naming_the_key():
    cases = [
        ("pgd", {"eps": -0.1}, "'eps' must be >= 0"),
        ("pgd", {"eps": 0.1, "norm": "l3"}, "'norm' got 'l3'"),
        ("pgd", {"eps": 0.1, "loss": "hinge"}, "'loss' got 'hinge'"),
        ("pgd", {"eps": 0.1, "num_steps": 0}, "'num_steps' must be >= 1"),
        ("pgd", {"eps": 0.1, "epz": 1}, "unknown config key 'epz'"),
        ("pgd", {}, "'eps' is required"),
        ("fgsm", {"eps": 0.1, "targeted": True, "loss": "dlr"}, "'loss' got 'dlr'"),
        ("apgd_ce", {"eps": 0.1, "norm": "l3"}, "'norm' got 'l3'"),
        ("apgd_ce", {"eps": 0.1, "eot_samples": 0}, "'eot_samples' must be >= 1"),
        ("apgd_t", {"eps": 0.1, "num_targets": 0}, "'num_targets' must be >= 1"),
        ("square", {"eps": 0.1, "p_init": 1.5}, "'p_init' must be <= 1.0"),
        ("ensemble", {"eps": 0.1, "attacks": ["apgd_ce", "pgd"]}, "'attacks' got 'pgd'"),
        ("ensemble", {"eps": 0.1, "version": "fast"}, "'version' got 'fast'"),
        ("fab_t", {"eps": 0.1, "eta": 0.5}, "'eta' must be >= 1.0"),
        ("fab_t", {"eps": 0.1, "norm": "l3"}, "'norm' got 'l3'"),
    ]
    for name, cfg, message in cases:
        with pytest.raises(ValueError, match=message):
            ATTACKS.get(name)(ml_collections.ConfigDict(dict(cfg, name=name)))


# ----------------------------------------------------------------------------- APGD


def test_apgd_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_apgd_reaches_the_linear_optimum():
    w = jax.random.normal(jax.random.key(1), (16,))
    x = jax.random.uniform(jax.random.key(2), (6, 16))
    y = jnp.ones(6, jnp.int32)

    @jax.jit
    def run(w, x, y):
        f = _binary_linear(w)
        x_adv = apgd(f, x, y, jax.random.key(0), eps=0.2, num_steps=20, bounds=UNBOUNDED)
        optimal = losses.cross_entropy(f(x - 0.2 * jnp.sign(w)), y)
        return losses.cross_entropy(f(x_adv), y), optimal

    attained, optimal = run(w, x, y)
    np.testing.assert_allclose(np.asarray(attained), np.asarray(optimal), atol=1e-4)


def test_apgd_is_at_least_as_strong_as_pgd(trained_cnn):
    f, x, y = trained_cnn
    eps, steps, k = 0.08, 20, jax.random.key(0)
    x_pgd = jax.jit(
        lambda v: pgd(f, v, y, k, eps=eps, step_size=2.5 * eps / steps, num_steps=steps)
    )(x)
    x_apgd = jax.jit(lambda v: apgd(f, v, y, k, eps=eps, num_steps=steps))(x)
    x_t = jax.jit(lambda v: apgd_targeted(f, v, y, k, eps=eps, num_steps=steps, num_targets=2))(x)
    acc_pgd, acc_apgd, acc_t = (_accuracy(f, a, y) for a in (x_pgd, x_apgd, x_t))
    assert 0.0 < acc_pgd < _accuracy(f, x, y)  # the comparison is not degenerate
    assert acc_apgd <= acc_pgd and acc_t <= acc_pgd


# ----------------------------------------------------------------------------- Square


def test_square_schedule_halves_p_at_the_paper_iterations():
    schedule = jax.jit(p_schedule, static_argnums=1)
    p = lambda i, n: float(schedule(jnp.asarray(i), n, 0.8))  # noqa: E731
    expected = {
        (0, 10000): 0.8,
        (10, 10000): 0.8,
        (11, 10000): 0.4,
        (51, 10000): 0.2,
        (8001, 10000): 0.8 / 512,
        (2, 1000): 0.4,
    }  # 2 of 1000 = 20 of 10,000
    for (i, n), value in expected.items():
        assert p(i, n) == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_square_lowers_accuracy_without_gradient_access(trained_cnn, norm, eps):
    f, x, y = trained_cnn
    x, y = x[:64], y[:64]
    no_grad = lambda v: f(jax.lax.stop_gradient(v))  # noqa: E731  (input gradient is 0)
    a1 = jax.jit(
        lambda v: square(no_grad, v, y, jax.random.key(0), norm=norm, eps=eps, num_queries=300)
    )(x)
    assert _accuracy(f, a1, y) < _accuracy(f, x, y) - 0.3
    assert float(jnp.max(geometry.lp_norm(a1 - x, norm=norm))) <= eps * (1 + 1e-5)
    assert float(a1.min()) >= 0.0 and float(a1.max()) <= 1.0
    # Gradient-based PGD cannot move on the gradient-free model.
    pg = jax.jit(pgd, static_argnums=0, static_argnames=("norm", "num_steps", "random_start"))(
        no_grad,
        x,
        y,
        jax.random.key(0),
        norm=norm,
        eps=eps,
        step_size=eps / 4,
        num_steps=5,
        random_start=False,
    )
    assert _accuracy(f, pg, y) == _accuracy(f, x, y)


# ----------------------------------------------------------------------------- wrappers


def test_bpda_uses_the_approximation_on_the_backward_pass():
    w = jax.random.normal(jax.random.key(1), (6, 3))
    quantise = lambda v: jnp.round(v * 4.0) / 4.0  # noqa: E731  (zero gradient a.e.)
    masked = jax.jit(lambda v: quantise(v) @ w)
    wrapped = jax.jit(lambda v: bpda(quantise)(v) @ w)
    x = jax.random.uniform(jax.random.key(0), (5, 6))
    np.testing.assert_array_equal(np.asarray(wrapped(x)), np.asarray(masked(x)))
    g_masked = jax.jit(jax.grad(lambda v: masked(v)[:, 0].sum()))(x)
    g_bpda = jax.jit(jax.grad(lambda v: wrapped(v)[:, 0].sum()))(x)
    assert float(np.abs(g_masked).max()) == 0.0
    np.testing.assert_allclose(
        np.asarray(g_bpda), np.broadcast_to(np.asarray(w)[:, 0], (5, 6)), rtol=1e-6
    )
    y = np.argmax(np.asarray(masked(x)), 1)
    kw = dict(eps=0.5, step_size=0.1, num_steps=10, random_start=False)
    blocked = jax.jit(lambda v: pgd(masked, v, y, jax.random.key(0), **kw))(x)
    broken = jax.jit(lambda v: pgd(wrapped, v, y, jax.random.key(0), **kw))(x)
    assert _accuracy(masked, blocked, y) == 1.0 and _accuracy(masked, broken, y) < 1.0


def test_eot_averages_the_randomised_model():
    W = jax.random.normal(jax.random.key(1), (6, 3))

    def dropout_model(v, k):
        keep = jax.random.bernoulli(k, 0.5, v.shape)
        return (v * keep) @ W

    x = jax.random.uniform(jax.random.key(0), (4, 6))
    key = jax.random.key(7)
    draws = jnp.stack([dropout_model(x, k) for k in jax.random.split(key, 12)])
    f = jax.jit(eot(dropout_model, num_samples=12, key=key, chunk_size=5, average="logits"))
    np.testing.assert_allclose(np.asarray(f(x)), np.asarray(draws.mean(0)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(f(x)))  # deterministic
    probs = jax.jit(eot(dropout_model, num_samples=12, key=key, chunk_size=5))
    np.testing.assert_allclose(
        np.asarray(jax.nn.softmax(probs(x))), np.asarray(jax.nn.softmax(draws).mean(0)), rtol=1e-5
    )
    # With many draws the expectation approaches the closed form 0.5 x W.
    big = jax.jit(eot(dropout_model, num_samples=2000, key=key, chunk_size=500, average="logits"))
    np.testing.assert_allclose(np.asarray(big(x)), np.asarray(0.5 * x @ W), atol=0.08)
