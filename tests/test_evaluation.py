"""Robustness evaluation: closed-form robust accuracy, worst case, sweeps, sanity checks."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax.attacks import ATTACKS, name_id
from advjax.evaluation import evaluate, plot_eps_curve

SHAPE = (4, 4, 1)
D = 16


def _binary_problem(n=60, seed=0):
    """Two-class linear model z = w.(x - 0.5); inputs in [0.4, 0.6] so no eps <= 0.1 box binds."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=D).astype(np.float32)
    x = rng.uniform(0.4, 0.6, size=(n,) + SHAPE).astype(np.float32)
    z = (x.reshape(n, -1) - 0.5) @ w
    y = (z > 0).astype(np.int32)
    y[:6] = 1 - y[:6]  # a few misclassified clean points

    def logits_fn(v):
        s = (v.reshape(v.shape[0], -1) - 0.5) @ jnp.asarray(w)
        return jnp.stack([-s, s], axis=1) / 2

    return logits_fn, x, y, w, z


def _closed_form_robust(z, y, w, eps):
    # Linear model without an active box: robust iff correct and |z| > eps ||w||_1.
    correct = (z > 0) == (y == 1)
    return float(np.mean(correct & (np.abs(z) > eps * np.abs(w).sum())))


def _eval_config(**kw):
    cfg = {
        "batch_size": 16,
        "num_examples": 0,
        "attacks": {"pgd": {"name": "pgd", "eps": 0.05, "step_size": 0.05, "num_steps": 3}},
        "eps_grid": [],
        "sanity_checks": False,
        "sanity_square_queries": 30,
        "progress": False,
    }
    cfg.update(kw)
    return ml_collections.ConfigDict(cfg)


def test_robust_accuracy_and_sweep_match_the_closed_form():
    f, x, y, w, z = _binary_problem()
    grid = [0.0, 0.005, 0.01, 0.02, 0.05]
    attacks = {
        "pgd_small": {"name": "pgd", "eps": 0.01, "step_size": 0.01, "num_steps": 3},
        "pgd_big": {"name": "pgd", "eps": 0.05, "step_size": 0.05, "num_steps": 3,
                    "num_restarts": 2},
        "fgsm_big": {"name": "fgsm", "eps": 0.05},
    }  # fmt: skip
    report = evaluate(
        _eval_config(attacks=attacks, eps_grid=grid, sweep_attack="pgd_big"),
        f, x, y, key=jax.random.key(0),
    )  # fmt: skip
    json.dumps(report)  # JSON-serialisable
    assert report["num_examples"] == 60
    assert report["clean_accuracy"] == pytest.approx(_closed_form_robust(z, y, w, 0.0))
    for name, eps in (("pgd_small", 0.01), ("pgd_big", 0.05), ("fgsm_big", 0.05)):
        meta = report["attacks"][name]
        assert meta["robust_accuracy"] == pytest.approx(_closed_form_robust(z, y, w, eps))
        assert (meta["norm"], meta["eps"]) == ("linf", eps)
        assert meta["seed"] == {"fold_in": name_id(name)}
    assert report["attacks"]["pgd_big"]["budget"] == {"num_steps": 3, "num_restarts": 2}
    # Worst case over attacks is per example: the larger ball decides.
    assert report["robust_accuracy"] == pytest.approx(_closed_form_robust(z, y, w, 0.05))
    tm = report["worst_case"]["threat_models"]
    assert set(tm) == {"linf:0.01", "linf:0.05"} and report["worst_case"]["mixed_threat_models"]
    assert tm["linf:0.05"]["attacks"] == ["fgsm_big", "pgd_big"] or set(
        tm["linf:0.05"]["attacks"]
    ) == {"fgsm_big", "pgd_big"}
    sweep = report["eps_sweep"]
    assert sweep["attack"] == "pgd_big" and sweep["eps"] == grid
    expected = [_closed_form_robust(z, y, w, e) for e in grid]
    np.testing.assert_allclose(sweep["robust_accuracy"], expected)
    assert len(set(expected)) >= 4  # the sweep actually varies


def test_num_examples_and_batch_size_do_not_change_results():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(D, 10)).astype(np.float32)
    f = lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(W)  # noqa: E731
    x = rng.uniform(size=(40,) + SHAPE).astype(np.float32)
    y = np.asarray(jnp.argmax(f(x), 1))
    attacks = {"pgd": {"name": "pgd", "eps": 0.05, "num_steps": 4, "num_restarts": 2}}
    reports = [
        evaluate(
            _eval_config(attacks=attacks, batch_size=bs, num_examples=30, eps_grid=[0.02, 0.05]),
            f,
            x,
            y,
            key=jax.random.key(3),
        )  # fmt: skip
        for bs in (7, 30)
    ]
    assert reports[0]["num_examples"] == 30
    for k in ("clean_accuracy", "robust_accuracy"):
        assert reports[0][k] == reports[1][k]
    assert reports[0]["eps_sweep"]["robust_accuracy"] == reports[1]["eps_sweep"]["robust_accuracy"]
    assert 0.0 < reports[0]["robust_accuracy"] < 1.0


def test_ensemble_reports_components_and_matches_the_jitted_ensemble():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(D, 10)).astype(np.float32)
    f = lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(W)  # noqa: E731
    x = rng.uniform(size=(24,) + SHAPE).astype(np.float32)
    y = np.array(jnp.argmax(f(x), 1))
    y[:2] = (y[:2] + 1) % 10
    acfg = {"name": "ensemble", "eps": 0.04, "num_steps": 6, "num_targets": 2, "num_queries": 30}
    key = jax.random.key(4)
    report = evaluate(_eval_config(attacks={"aa": acfg}, batch_size=8), f, x, y, key=key)
    meta = report["attacks"]["aa"]
    after = [c["robust_accuracy_after"] for c in meta["components"].values()]
    assert list(meta["components"]) == ["apgd_ce", "apgd_t", "square"]
    assert after == sorted(after, reverse=True) and after[-1] == meta["robust_accuracy"]
    assert meta["budget"]["square"] == {"num_queries": 30}
    # The documented per-example keys reproduce the evaluation with the jittable ensemble
    # on all points at once (components on still-robust points only change the cost).
    k = jax.random.fold_in(key, name_id("aa"))
    keys = jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(24))
    ens = ATTACKS.get("ensemble")(acfg)
    x_adv = jax.jit(lambda v, t, kk: ens(f, v, t, kk))(jnp.asarray(x), jnp.asarray(y), keys)
    robust = (np.argmax(f(x), 1) == y) & (np.argmax(f(x_adv), 1) == y)
    assert meta["robust_accuracy"] == pytest.approx(robust.mean())
    assert 0.0 < meta["robust_accuracy"] < report["clean_accuracy"]


def test_evaluation_compiles_each_attack_once():
    f0, x, y, _, _ = _binary_problem(n=48)
    traces = []

    def f(v):
        traces.append(1)  # runs only while tracing
        return f0(v)

    counts = []
    for bs in (48, 12):
        traces.clear()
        evaluate(_eval_config(batch_size=bs, eps_grid=[0.01, 0.02]), f, x, y, key=jax.random.key(0))
        counts.append(len(traces))
    assert counts[0] == counts[1] > 0  # four batches trace exactly as often as one


def test_sanity_checks_pass_for_an_honest_model():
    f, x, y, _, _ = _binary_problem()
    attacks = {
        "pgd": {"name": "pgd", "eps": 0.05, "step_size": 0.02, "num_steps": 5},
        "square": {"name": "square", "eps": 0.05, "num_queries": 50},
    }
    report = evaluate(
        _eval_config(attacks=attacks, eps_grid=[0.0, 0.02, 0.05], sanity_checks=True,
                     sanity_num_examples=32),
        f, x, y, key=jax.random.key(0),
    )  # fmt: skip
    checks = report["sanity_checks"]
    failed = [k for k, c in checks.items() if c["passed"] is False]
    assert failed == [] and report["sanity_passed"] is True
    expected = {
        "outputs_are_logits", "deterministic_model", "batch_independent_predictions",
        "zero_gradient_fraction", "perturbation_within_budget", "iterative_stronger_than_fgsm",
        "large_eps_accuracy", "monotone_in_eps", "attack_randomness", "black_box_not_stronger",
    }  # fmt: skip
    assert set(checks) == expected
    assert all(checks[k]["passed"] is True for k in expected)
    assert checks["large_eps_accuracy"]["value"]["eps"] == 1.0


def test_sanity_checks_flag_probabilities_and_masked_gradients():
    f, x, y, _, _ = _binary_problem()
    probs = lambda v: jax.nn.softmax(f(v))  # noqa: E731
    with pytest.warns(UserWarning, match="outputs_are_logits"):
        report = evaluate(
            _eval_config(attacks={}, sanity_checks=True, sanity_num_examples=32), probs, x, y,
            key=jax.random.key(0),
        )  # fmt: skip
    assert report["sanity_checks"]["outputs_are_logits"]["passed"] is False
    assert report["sanity_passed"] is False

    # Input quantisation: zero gradient almost everywhere, so white-box PGD is blind
    # while the black-box Square attack still finds adversarial points.
    quantised = lambda v: f(jnp.round(v * 64.0) / 64.0)  # noqa: E731
    attacks = {"pgd": {"name": "pgd", "eps": 0.05, "step_size": 0.02, "num_steps": 5,
                       "random_start": False}}  # fmt: skip
    with pytest.warns(UserWarning, match="gradient masking"):
        report = evaluate(
            _eval_config(attacks=attacks, sanity_checks=True, sanity_num_examples=32,
                         sanity_square_queries=100),
            quantised, x, y, key=jax.random.key(0),
        )  # fmt: skip
    checks = report["sanity_checks"]
    assert checks["zero_gradient_fraction"]["value"] == 1.0
    assert checks["zero_gradient_fraction"]["passed"] is False
    assert checks["black_box_not_stronger"]["passed"] is False
    assert checks["large_eps_accuracy"]["passed"] is False


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(8)(x.reshape(x.shape[0], -1))
        h = nn.BatchNorm(use_running_average=not train)(h)
        return nn.Dense(2)(nn.relu(h))


def test_sanity_checks_flag_a_model_in_train_mode():
    _, x, y, _, _ = _binary_problem()
    model = _BNNet()
    variables = jax.jit(model.init)(jax.random.key(0), x[:2])

    def train_mode(v):  # BatchNorm normalises with the statistics of the batch
        return model.apply(variables, v, train=True, mutable=["batch_stats"])[0]

    def eval_mode(v):
        return model.apply(variables, v, train=False)

    cfg = _eval_config(attacks={}, sanity_checks=True, sanity_num_examples=16)
    with pytest.warns(UserWarning, match="wrong model mode"):
        bad = evaluate(cfg, train_mode, x, y, key=jax.random.key(0))
    assert bad["sanity_checks"]["batch_independent_predictions"]["passed"] is False
    good = evaluate(cfg, eval_mode, x, y, key=jax.random.key(0))
    assert good["sanity_checks"]["batch_independent_predictions"]["passed"] is True


def test_config_validation_names_the_key():
    f, x, y, _, _ = _binary_problem(n=8)
    cases = [
        ({"batch_size": 0}, "'eval.batch_size'"),
        ({"num_examples": -1}, "'eval.num_examples'"),
        ({"eps_grid": [0.1, -0.2]}, "'eval.eps_grid'"),
        ({"attacks": {"x": {"name": "cw_l2", "eps": 0.1}}}, "'eval.attacks.x.name'"),
        ({"attacks": {"x": {"name": "pgd", "eps": -0.1}}}, "'eps' must be >= 0"),
        ({"eps_grid": [0.1], "sweep_attack": "nope"}, "'eval.sweep_attack'"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            evaluate(_eval_config(**kw), f, x, y, key=jax.random.key(0))


def test_plot_eps_curve_writes_a_png(tmp_path):
    section = {
        "clean_accuracy": 0.9,
        "attacks": {"pgd": {"eps": 0.1, "robust_accuracy": 0.4}},
        "eps_sweep": {"attack": "pgd", "norm": "linf", "eps": [0.0, 0.1, 0.2],
                      "robust_accuracy": [0.9, 0.4, 0.1],
                      "robust_accuracy_envelope": [0.9, 0.4, 0.1]},
    }  # fmt: skip
    path = plot_eps_curve(section, str(tmp_path / "figures" / "eps.png"))
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
