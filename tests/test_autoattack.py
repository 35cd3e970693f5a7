"""AutoAttack in advjax: l_1-APGD, FAB-T through the registry, the versions, EOT for
randomised models; each against a known answer (closed form or a baseline run here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_attacks import _prototype_data, _TinyCNN

from advjax import losses
from advjax.attacks import ATTACKS, build_attack
from advjax.attacks.apgd_l1 import apgd_l1
from advjax.attacks.pgd import pgd
from advjax.evaluation import evaluate
from advjax.models import as_model


@pytest.fixture(scope="module")
def small_cnn():
    """A small CNN trained for a few seconds on noisy class prototypes (10x10)."""
    xtr, ytr = _prototype_data(1500, 0)
    model = _TinyCNN()
    params = model.init(jax.random.key(0), xtr[:1])
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s, xb, yb):
        g = jax.grad(lambda p: losses.cross_entropy(model.apply(p, xb), yb).mean())(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = rng.integers(0, len(xtr), 64)
        params, state = step(params, state, xtr[idx], ytr[idx])
    x, y = _prototype_data(96, 1)
    logits_fn = jax.jit(lambda v: model.apply(params, v))
    return logits_fn, jnp.asarray(x), jnp.asarray(y)


def _accuracy(logits_fn, x, y) -> float:
    return float(jnp.mean(jnp.argmax(logits_fn(x), axis=1) == y))


# ----------------------------------------------------------------------------- l_1-APGD


def test_apgd_l1_stays_in_the_l1_ball_and_box_and_beats_pgd_l1(small_cnn):
    f, x, y = small_cnn
    eps, steps, key = 2.0, 50, jax.random.key(0)
    x_apgd = jax.jit(lambda v: apgd_l1(f, v, y, key, eps=eps, num_steps=steps))(x)
    x_large = jax.jit(lambda v: apgd_l1(f, v, y, key, eps=eps, num_steps=steps, large_eps=True))(x)
    x_pgd = jax.jit(
        lambda v: pgd(f, v, y, key, norm="l1", eps=eps, step_size=eps / 4, num_steps=steps)
    )(x)
    for xa in (x_apgd, x_large):
        l1 = np.asarray(jnp.sum(jnp.abs(xa - x).reshape(x.shape[0], -1), axis=1))
        assert np.all(l1 <= eps * (1 + 1e-5)), l1.max()
        assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    clean = _accuracy(f, x, y)
    acc_pgd, acc_apgd, acc_large = (_accuracy(f, a, y) for a in (x_pgd, x_apgd, x_large))
    assert 0.0 < acc_pgd < clean  # the comparison is not degenerate
    assert acc_apgd < acc_pgd and acc_large < acc_pgd, (acc_pgd, acc_apgd, acc_large)


def test_apgd_l1_through_the_registry_and_its_targeted_form(small_cnn):
    f, x, y = small_cnn
    for name in ("apgd_ce", "apgd_t"):
        attack = ATTACKS.get(name)(
            {"name": name, "norm": "l1", "eps": 2.0, "num_steps": 20, "num_targets": 3}
            if name == "apgd_t"
            else {"name": name, "norm": "l1", "eps": 2.0, "num_steps": 20}
        )
        xa = jax.jit(lambda v, a=attack: a(f, v, y, jax.random.key(1)))(x)
        l1 = np.asarray(jnp.sum(jnp.abs(xa - x).reshape(x.shape[0], -1), axis=1))
        assert np.all(l1 <= 2.0 * (1 + 1e-5))
        assert _accuracy(f, xa, y) < _accuracy(f, x, y)


# ----------------------------------------------------------------------------- FAB-T


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_t_through_the_registry_breaks_exactly_the_points_within_eps(norm):
    # Two-class linear model: the minimal perturbation of x is |margin| / ||w||_q, so
    # the points FAB-T may break within eps are known in closed form.
    rng = np.random.default_rng(3)
    d, n = 20, 32
    w = rng.normal(size=d).astype(np.float32)
    x = rng.uniform(0.45, 0.55, (n, d)).astype(np.float32)
    b = -float(np.median(x @ w))
    y = ((x @ w + b) > 0).astype(np.int32)
    q = {"linf": 1, "l2": 2, "l1": np.inf}[norm]
    minimal = np.abs(x @ w + b) / np.linalg.norm(w, ord=q)
    eps = float(np.median(minimal))

    def f(v):
        z = v @ jnp.asarray(w) + b
        return jnp.stack([jnp.zeros_like(z), z], axis=1)

    attack = build_attack({"name": "fab_t", "norm": norm, "eps": eps})
    assert attack.budget_dict() == {"num_steps": 100, "num_restarts": 1, "num_targets": 9}
    x_adv = np.asarray(jax.jit(lambda v: attack(f, v, jnp.asarray(y), jax.random.key(0)))(x))
    broken = np.argmax(np.asarray(f(jnp.asarray(x_adv))), axis=1) != y
    margin = 1e-3 * eps  # points this close to eps may go either way (float32)
    assert np.all(broken[minimal < eps - margin]) and not np.any(broken[minimal > eps + margin])
    p = {"linf": np.inf, "l2": 2, "l1": 1}[norm]
    assert np.all(np.linalg.norm(x_adv - x, ord=p, axis=1) <= eps * (1 + 1e-5))


# ----------------------------------------------------------------------------- versions


def _names(version, norm="linf"):
    attack = build_attack({"name": "ensemble", "eps": 0.3, "norm": norm, "version": version})
    return [(c.name, c.budget_dict()) for c in attack.components]


def test_the_versions_list_autoattacks_components():
    one, five = {"num_steps": 100, "num_restarts": 1}, {"num_steps": 100, "num_restarts": 5}
    square = {"num_queries": 5000}
    assert _names("standard") == [
        ("apgd_ce", one),
        ("apgd_t", dict(one, num_targets=9)),
        ("fab_t", dict(one, num_targets=9)),
        ("square", square),
    ]
    assert _names("standard", "l1") == [
        ("apgd_ce", five),
        ("apgd_t", dict(one, num_targets=5)),
        ("fab_t", dict(one, num_targets=9)),
    ]
    assert _names("plus") == [
        ("apgd_ce", five),
        ("apgd_dlr", five),
        ("fab", five),
        ("square", square),
        ("apgd_t", dict(one, num_targets=9)),
        ("fab_t", dict(one, num_targets=9)),
    ]
    assert _names("rand") == [("apgd_ce", one), ("apgd_dlr", one)]
    rand = build_attack({"name": "ensemble", "eps": 0.3, "version": "rand"})
    assert all(dict(c.hparams)["eot_samples"] == 20 for c in rand.components)
    l1 = build_attack({"name": "ensemble", "eps": 10.0, "norm": "l1", "version": "standard"})
    assert all(dict(c.hparams).get("large_eps") for c in l1.components[:2])
    # Without a version the ensemble is today's list.
    assert [c.name for c in build_attack({"name": "ensemble", "eps": 0.3}).components] == [
        "apgd_ce",
        "apgd_t",
        "square",
    ]
    with pytest.raises(ValueError, match="'version'"):
        build_attack({"name": "ensemble", "eps": 0.3, "version": "fast"})


# ----------------------------------------------------------------------------- rand


def test_rand_is_stable_on_a_randomised_model_where_plain_apgd_is_not():
    # A linear two-class model plus a tiny, fast-oscillating random term: predictions
    # are (almost) those of the linear model, whose l_inf robust accuracy is known in
    # closed form, but one draw's input gradient is dominated by the random term.
    d, n, eps = 16, 64, 0.05
    rng = np.random.default_rng(0)
    w = rng.normal(size=d).astype(np.float32)
    x = rng.uniform(0.3, 0.7, (n, d)).astype(np.float32)
    b = -float((x @ w).mean())
    y = ((x @ w + b) > 0).astype(np.int32)
    head = jnp.asarray(np.stack([np.zeros(d, np.float32), w], 1))

    def noisy(v, key):
        xi = jax.random.normal(key, (d, 2))
        return v @ head + jnp.array([0.0, b]) + 0.002 * jnp.sin(2000.0 * (v @ xi))

    exact = float(np.mean(np.abs(x @ w + b) > eps * np.abs(w).sum()))
    model = as_model(noisy, takes_key=True)

    def robust(attack, seed):
        cfg = {"batch_size": n, "attacks": {"a": attack}, "sanity_checks": False}
        report = evaluate(dict(cfg, progress=False), model, x, y, key=jax.random.key(seed))
        return report["robust_accuracy"]

    rand = [robust({"name": "ensemble", "eps": eps, "version": "rand"}, s) for s in range(3)]
    plain = [robust({"name": "apgd_ce", "eps": eps}, s) for s in range(3)]
    assert max(rand) - min(rand) <= 0.02 and max(abs(r - exact) for r in rand) <= 0.03
    assert max(plain) - min(plain) >= 0.05 and min(plain) >= exact + 0.1, (plain, exact)
