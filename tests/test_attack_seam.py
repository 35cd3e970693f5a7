"""The attack seam: Attack values, models as data, one compile per architecture, stacks,
and sanity checks that fail on constructed models."""

from __future__ import annotations

import dataclasses
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax import evaluation
from advjax.attacks import BLACK_BOX, ENSEMBLE, WHITE_BOX, Attack, build_attack, freeze
from advjax.attacks.pgd import run_pgd
from advjax.evaluation import evaluate, evaluate_stack
from advjax.models import Model, as_model, eval_model, stack_models, unstack
from tests.helpers import CompileCounter

SHAPE = (6, 6, 1)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(3)(h.reshape(h.shape[0], -1))


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, *SHAPE)).astype(np.float32)
    y = rng.integers(0, 3, n).astype(np.int32)
    return x, y


def _models(k):
    net = _Net()
    x, _ = _data(2)
    return [eval_model(net, net.init(jax.random.key(i), x)) for i in range(k)]


def _cfg(**kw):
    cfg = {
        "batch_size": 16,
        "num_examples": 0,
        "attacks": {
            "pgd": {"name": "pgd", "eps": 0.1, "num_steps": 3},
            "ens": {"name": "ensemble", "eps": 0.1, "attacks": ["apgd_ce", "square"],
                    "num_steps": 4, "num_queries": 20},
        },
        "eps_grid": [],
        "sanity_checks": False,
        "sanity_square_queries": 100,
        "progress": False,
    }  # fmt: skip
    cfg.update(kw)
    return ml_collections.ConfigDict(cfg)


def test_attack_values_are_frozen_hashable_and_equal_by_config():
    a = build_attack({"name": "pgd", "eps": 0.3, "num_steps": 7})
    b = build_attack(ml_collections.ConfigDict({"name": "pgd", "eps": 0.3, "num_steps": 7}))
    assert a == b and hash(a) == hash(b)
    assert (a.kind, a.norm, a.eps) == (WHITE_BOX, "linf", 0.3)
    assert a.config["step_size"] == pytest.approx(2.5 * 0.3 / 7)
    assert a.budget_dict() == {"num_steps": 7, "num_restarts": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.name = "other"
    sq = build_attack({"name": "square", "eps": 0.3})
    assert sq.kind == BLACK_BOX and not sq.white_box
    ens = build_attack({"name": "ensemble", "eps": 0.3})
    assert ens.kind == ENSEMBLE
    assert [c.name for c in ens.components] == ["apgd_ce", "apgd_t", "square"]
    assert [c.kind for c in ens.components] == [WHITE_BOX, WHITE_BOX, BLACK_BOX]
    assert not any(hasattr(f, "config") for f in (run_pgd,))


def test_models_of_one_architecture_share_every_compiled_attack():
    x, y = _data()
    m1, m2, m3 = _models(3)
    cfg = _cfg()
    evaluate(cfg, m1, x, y, key=jax.random.key(0))
    with CompileCounter() as c:
        r2 = evaluate(cfg, m2, x, y, key=jax.random.key(0))
        r3 = evaluate(cfg, m3, x, y, key=jax.random.key(1))
    compiled_attacks = [n for n in c.names if "attack_outcome" in n or "clean_correct" in n]
    assert compiled_attacks == [], compiled_attacks
    # The second and third models are different models: the shared programs ran on them.
    assert r2["attacks"]["pgd"]["robust_accuracy"] != r3["attacks"]["pgd"]["robust_accuracy"] or (
        r2["clean_accuracy"] != r3["clean_accuracy"]
    )


def test_a_stack_of_models_matches_separate_evaluations():
    x, y = _data()
    ms = _models(3)
    cfg = _cfg()
    key = jax.random.key(3)
    stacked = evaluate_stack(cfg, stack_models(ms), x, y, key=key)
    assert stacked["num_models"] == 3
    for i, m in enumerate(ms):
        alone = evaluate(cfg, m, x, y, key=key)
        per = stacked["models"][i]
        assert per["clean_accuracy"] == alone["clean_accuracy"]
        assert per["robust_accuracy"] == alone["robust_accuracy"]
        for name in ("pgd", "ens"):
            assert per["attacks"][name] == alone["attacks"][name]["robust_accuracy"]
    assert jax.tree.all(
        jax.tree.map(lambda a, b: bool(jnp.all(a == b)), unstack(stack_models(ms), 1).variables,
                     ms[1].variables)
    )  # fmt: skip


# ----------------------------------------------------------------------------- sanity checks
# Each check fails on a model (or attack) constructed to break it.


def _linear(n=48, seed=0):
    """Two-class linear model on [0.4, 0.6]^16 inputs (no box constraint binds)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=16).astype(np.float32)
    x = rng.uniform(0.4, 0.6, (n, 4, 4, 1)).astype(np.float32)
    y = ((x.reshape(n, -1) - 0.5) @ w > 0).astype(np.int32)

    def f(v):
        s = (v.reshape(v.shape[0], -1) - 0.5) @ jnp.asarray(w)
        return jnp.stack([-s, s], axis=1)

    return f, x, y


def _sanity(f, x, y, attacks, **kw):
    cfg = _cfg(attacks=attacks, sanity_checks=True, sanity_num_examples=32, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate(cfg, f, x, y, key=jax.random.key(0))["sanity_checks"]


PGD = {"name": "pgd", "eps": 0.05, "step_size": 0.02, "num_steps": 5}


def test_sanity_black_box_check_fails_inside_an_ensemble_on_masked_gradients():
    f, x, y = _linear()
    masked = lambda v: jax.lax.stop_gradient(f(v))  # noqa: E731  zero input gradient
    ens = {"name": "ensemble", "eps": 0.05, "attacks": ["apgd_ce", "square"], "num_steps": 5,
           "num_queries": 200}  # fmt: skip
    checks = _sanity(masked, x, y, {"ens": ens})
    bb = checks["black_box_not_stronger"]
    assert bb["passed"] is False and "ens/square" in bb["value"]
    assert _sanity(f, x, y, {"ens": ens})["black_box_not_stronger"]["passed"] is True


def test_sanity_black_box_check_fails_across_separate_attacks():
    f, x, y = _linear()
    masked = lambda v: jax.lax.stop_gradient(f(v))  # noqa: E731
    attacks = {"pgd": PGD, "sq": {"name": "square", "eps": 0.05, "num_queries": 200}}
    assert _sanity(masked, x, y, attacks)["black_box_not_stronger"]["passed"] is False
    assert _sanity(f, x, y, attacks)["black_box_not_stronger"]["passed"] is True


def test_sanity_fgsm_check_fails_for_a_too_small_step_and_counts_clean_correct_only():
    f, x, y = _linear()
    weak = {"name": "pgd", "eps": 0.05, "step_size": 1e-4, "num_steps": 1, "random_start": False}
    assert _sanity(f, x, y, {"weak": weak})["iterative_stronger_than_fgsm"]["passed"] is False
    # Misclassified clean points do not count for FGSM (it may push them back).
    y_bad = y.copy()
    y_bad[:16] = 1 - y_bad[:16]
    check = _sanity(f, x, y_bad, {"pgd": PGD})["iterative_stronger_than_fgsm"]
    assert check["passed"] is True
    assert check["value"]["pgd"]["fgsm"] <= np.mean(
        np.argmax(np.asarray(f(x[:32])), 1) == y_bad[:32]
    )


def _broken_run(hp, logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None):
    """Leaves the ball: moves every input by 3 eps (a broken attack for the budget check)."""
    e = hp["eps"] if eps is None else eps
    return jnp.clip(x + 3 * e, *bounds)


def test_sanity_budget_check_fails_for_an_attack_that_leaves_the_ball(monkeypatch):
    f, x, y = _linear()
    broken = Attack("pgd", _broken_run, freeze({"eps": 0.05, "norm": "linf"}), WHITE_BOX)
    monkeypatch.setattr(evaluation, "build_attack", lambda cfg, key="name": broken)
    check = _sanity(f, x, y, {"broken": PGD})["perturbation_within_budget"]
    assert check["passed"] is False


def test_sanity_large_eps_check_fails_on_masked_gradients():
    f, x, y = _linear()
    masked = lambda v: jax.lax.stop_gradient(f(v))  # noqa: E731
    assert _sanity(masked, x, y, {"pgd": PGD})["large_eps_accuracy"]["passed"] is False
    assert _sanity(f, x, y, {"pgd": PGD})["large_eps_accuracy"]["passed"] is True


def test_sanity_monotone_check_fails_for_an_attack_weaker_at_larger_eps(monkeypatch):
    f, x, y = _linear()

    def shrinking(hp, logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None):
        e = hp["eps"] if eps is None else eps  # a broken attack: no perturbation past 0.02
        return run_pgd(hp, logits_fn, x, y, key, bounds=bounds, eps=jnp.where(e > 0.02, 0.0, e))

    real = build_attack(PGD)
    broken = dataclasses.replace(real, run=shrinking)
    monkeypatch.setattr(evaluation, "build_attack", lambda cfg, key="name": broken)
    check = _sanity(f, x, y, {"pgd": PGD}, eps_grid=[0.0, 0.01, 0.02, 0.04])["monotone_in_eps"]
    assert check["passed"] is False


def test_a_randomised_model_is_flagged_and_evaluated_under_fresh_keys():
    f, x, y = _linear()

    def noisy(v, key):  # a random linear head: logits and input gradients change per draw
        head = 3.0 * jax.random.normal(key, (16, 2))
        return f(v) + (v.reshape(v.shape[0], -1) - 0.5) @ head

    model = as_model(noisy, takes_key=True)
    assert isinstance(model, Model) and model.takes_key
    cfg = _cfg(attacks={"pgd": PGD}, sanity_checks=True, sanity_num_examples=32)
    with pytest.warns(UserWarning, match="randomised model"):
        report = evaluate(cfg, model, x, y, key=jax.random.key(0))
    assert report["randomised_model"] is True
    checks = report["sanity_checks"]
    assert checks["deterministic_model"]["passed"] is False
    assert checks["attack_randomness"]["passed"] is False
    det = evaluate(cfg, f, x, y, key=jax.random.key(0))["sanity_checks"]
    assert det["deterministic_model"]["passed"] is True
    assert det["attack_randomness"]["passed"] is True
