"""The black-box gap analysis (`advjax.experiments.black_box_gap`) on models whose answers
are known in closed form."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax import configlib
from advjax.attacks import ATTACKS
from advjax.experiments import black_box_gap as bbg
from advjax.models import Model

H = W = 8
THRESHOLD = 0.6
NEEDED = 40.5  # class 1 wins once 41 of the 64 pixels exceed THRESHOLD


def linear_apply(variables, x):
    return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def staircase_apply(variables, x):
    """Class 1's logit counts the pixels above a threshold: piecewise constant in x, so
    its input gradient is exactly zero everywhere (masking in the strict sense)."""
    count = jnp.sum(jnp.where(x.reshape(x.shape[0], -1) > variables["threshold"], 1.0, 0.0), 1)
    return jnp.stack([jnp.full_like(count, variables["needed"]), count], axis=1)


def _linear(seed=0, classes=2, zero_rows=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(H * W, classes)).astype(np.float32)
    w[:zero_rows] = 0.0
    b = rng.normal(size=classes).astype(np.float32)
    return Model(linear_apply, {"w": jnp.asarray(w), "b": jnp.asarray(b)}), w, b


def test_segment_margins_are_the_closed_form_on_a_linear_model():
    # Two classes: z_0 - z_1 is affine in x, so along x + t d it is m(x) + t (w0 - w1) . d.
    model, w, b = _linear()
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(3, H, W, 1)).astype(np.float32)
    end = rng.uniform(size=(3, H, W, 1)).astype(np.float32)
    y = np.array([0, 1, 0])
    got = np.asarray(bbg.segment_margins(model, x, end, y, num=5))
    t = np.linspace(0, 1, 5)
    z = lambda v: v.reshape(3, -1).astype(np.float64) @ w + b  # noqa: E731
    sign = np.where(y == 0, 1.0, -1.0)
    m0 = sign * (z(x)[:, 0] - z(x)[:, 1])
    slope = sign * ((end - x).reshape(3, -1) @ (w[:, 0] - w[:, 1]))
    np.testing.assert_allclose(got, m0[:, None] + t[None] * slope[:, None], atol=1e-4)


def test_gradient_stats_count_zero_coordinates_and_the_sign_cosine():
    # 24 of the 64 input weights are zero: their gradient is exactly zero, the rest not.
    model, w, _ = _linear(zero_rows=24)
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(2, H, W, 1)).astype(np.float32)
    y = np.array([0, 1])
    delta = rng.normal(size=x.shape).astype(np.float32)
    zero, cos, sign = map(np.asarray, bbg.gradient_stats(model, x, y, delta))
    np.testing.assert_array_equal(zero, [24 / 64, 24 / 64])
    # d CE / dx = sum_k (p_k - 1[k = y]) w_k; for two classes its sign is that of
    # (p_1 - 1[y = 1]) (w_1 - w_0).
    z = x.reshape(2, -1) @ w
    p1 = 1 / (1 + np.exp(z[:, 0] - z[:, 1]))
    want_sign = np.sign((p1 - (y == 1))[:, None] * (w[:, 1] - w[:, 0])[None])
    np.testing.assert_array_equal(sign.reshape(2, -1), want_sign)
    d = delta.reshape(2, -1)
    want_cos = (want_sign * d).sum(1) / (
        np.linalg.norm(want_sign, axis=1) * np.linalg.norm(d, axis=1)
    )
    np.testing.assert_allclose(cos, want_cos, rtol=1e-5)


def _staircase_setup(n=6):
    model = Model(
        staircase_apply, {"threshold": jnp.float32(THRESHOLD), "needed": jnp.float32(NEEDED)}
    )
    x = np.full((n, H, W, 1), 0.5, np.float32)
    y = np.zeros(n, np.int32)
    ensemble = ATTACKS.get("ensemble")(
        ml_collections.ConfigDict(
            dict(name="ensemble", eps=0.3, attacks=("apgd_ce", "square"), num_steps=10,
                 num_queries=300)
        )
    )  # fmt: skip
    a = ml_collections.ConfigDict(
        dict(batch_size=4, segment_points=11, restarts=(1, 3), num_shown=2, other_keys=2)
    )
    return model, x, y, ensemble, a


def test_a_staircase_model_is_a_black_box_gap_on_every_point(tmp_path):
    """Gradients are zero everywhere, so APGD stays at its random start, which fools
    nothing (about a third of the pixels cross the threshold, 41 are needed); Square
    moves whole windows to +eps and fools every point. Every measurement of the report
    follows from the construction."""
    model, x, y, ensemble, a = _staircase_setup()
    report = bbg.analyse(
        model, ensemble, x, y, jax.random.key(0), bounds=(0.0, 1.0), a=a,
        fig_dir=str(tmp_path / "figures"),
    )  # fmt: skip
    n = len(x)
    assert report["clean_accuracy"] == 1.0
    assert report["newly_fooled"] == {"apgd_ce": 0, "square": n}
    gap = report["black_box_only"]
    assert gap["count"] == n and gap["indices"] == list(range(n))
    assert report["robust_after"]["apgd_ce"] == 1.0 and report["robust_after"]["square"] == 0.0
    assert gap["clean_margin"]["min"] == gap["clean_margin"]["max"] == NEEDED
    # The gradient is zero at every coordinate.
    assert gap["zero_gradient_fraction"]["min"] == 1.0
    assert gap["sign_gradient_cosine"]["max"] == 0.0
    # On the straight path from 0.5 to 0.5 + t d (d in {-0.3, 0, 0.3}) a pixel with
    # d = +0.3 crosses 0.6 for t > 1/3: the margin is NEEDED up to t = 0.3, then
    # NEEDED - (number of +eps pixels), so it falls monotonically.
    seg = np.asarray(gap["segment_margins"])
    t = np.linspace(0, 1, 11)
    assert np.all(seg[:, t < 1 / 3] == NEEDED)
    assert np.all(seg[:, t > 1 / 3] == seg[:, -1:])
    assert gap["segment_monotone_fraction"] == 1.0
    assert gap["black_box_margin"]["max"] < 0
    # The path ends at Square's point.
    assert seg[:, -1].min() == gap["black_box_margin"]["min"]
    assert seg[:, -1].max() == gap["black_box_margin"]["max"]
    # APGD's best point is its random start (nothing to ascend): margin NEEDED - count,
    # with roughly a third of the 64 pixels above the threshold.
    assert 0 < gap["white_box_best_margin"]["min"] <= gap["white_box_best_margin"]["max"] < NEEDED
    # Under every key Square fools every point and APGD none: the same gap three times.
    assert report["gap_over_keys"] == {
        "counts": [n, n, n], "fractions": [1.0, 1.0, 1.0], "in_some": n, "in_every": n
    }  # fmt: skip
    # More restarts cannot help where the gradient is zero.
    for r in ("1", "3"):
        assert report["stronger_white_box"][r]["fooled_of_black_box_only"] == 0
        assert report["stronger_white_box"][r]["gap_left"] == 1.0
    assert {p.rsplit("/", 1)[-1] for p in report["figures"]} == {
        "margins.png", "segments.png", "examples.png"
    }  # fmt: skip


def test_components_run_on_the_points_still_robust_and_match_the_attacks():
    """`run_components` on a linear model: each stage runs exactly on the points the
    stages before it left robust, and its points are those of the attack called alone
    with the same per-example keys."""
    model, _, _ = _linear(seed=3, classes=3)
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(10, H, W, 1)).astype(np.float32)
    logits = np.asarray(linear_apply(model.variables, jnp.asarray(x)))
    y = logits.argmax(1).astype(np.int32)  # all clean-correct
    ensemble = ATTACKS.get("ensemble")(
        ml_collections.ConfigDict(
            dict(name="ensemble", eps=0.03, attacks=("apgd_ce", "square"), num_steps=5,
                 num_queries=50)
        )
    )  # fmt: skip
    key = jax.random.key(5)
    clean_margin, correct, stages = bbg.run_components(
        ensemble, model, x, y, key, bounds=(0.0, 1.0), batch_size=4
    )
    assert correct.all()
    np.testing.assert_allclose(
        clean_margin, np.sort(logits, 1)[:, -1] - np.sort(logits, 1)[:, -2], rtol=1e-5
    )
    first, second = stages
    np.testing.assert_array_equal(first["idx"], np.arange(10))
    np.testing.assert_array_equal(second["idx"], np.flatnonzero(~first["fooled"]))
    comp = ensemble.components[0]
    keys = bbg._example_keys(jax.random.fold_in(key, 0), np.arange(10))
    alone = np.asarray(comp(model, jnp.asarray(x), jnp.asarray(y), keys, bounds=(0.0, 1.0)))
    np.testing.assert_allclose(first["x_adv"], alone, atol=1e-6)
    wrong = np.asarray(linear_apply(model.variables, jnp.asarray(alone))).argmax(1) != y
    np.testing.assert_array_equal(first["fooled"], wrong)


def test_more_restarts_only_add_points():
    """Restart r of every run draws the same key, so the points fooled with 4 restarts
    include those fooled with 2 (on a linear model at a radius that fools some)."""
    model, _, _ = _linear(seed=6, classes=3)
    rng = np.random.default_rng(7)
    x = rng.uniform(size=(12, H, W, 1)).astype(np.float32)
    y = np.asarray(linear_apply(model.variables, jnp.asarray(x))).argmax(1).astype(np.int32)
    out = bbg.stronger_stage(
        model, x, y, jax.random.key(8), 0.02, [2, 4], bounds=(0.0, 1.0), batch_size=12
    )
    assert 0 < out[2]["fooled"].sum() < len(x)
    assert np.all(out[4]["fooled"] >= out[2]["fooled"])
    assert np.all(out[4]["best_margin"] <= out[2]["best_margin"] + 1e-6)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"ensemble": "pgd20"}, "is a 'pgd' attack, not an ensemble"),
        ({"ensemble": "nope"}, "'nope' is not an attack of"),
        ({"restarts": (0,)}, "analysis.restarts"),
        ({"segment_points": 1}, "analysis.segment_points"),
        ({"other_keys": -1}, "analysis.other_keys"),
    ],
)
def test_bad_settings_fail_before_any_compute(override, message):
    c = configlib.load_config("configs/black_box_gap.py:smoke")
    for k, v in override.items():
        c.analysis[k] = v
    with pytest.raises((ValueError, configlib.ConfigError), match=message):
        configlib.validate(c)


def test_an_ensemble_without_white_box_components_before_square_is_refused():
    c = configlib.load_config("configs/black_box_gap.py:smoke")
    model_config = bbg._model_config(c.analysis)
    model_config.eval.attacks.ensemble.attacks = ("square", "apgd_ce")
    c.analysis.components = ()  # the model config's list
    with pytest.raises(ValueError, match="needs a black-box component after white-box ones"):
        bbg._ensemble(c.analysis, model_config)


def test_analysis_components_replace_the_ensembles_list():
    def names(arg):
        c = configlib.load_config(
            f"configs/black_box_gap.py:{arg}" if arg else "configs/black_box_gap.py"
        )
        c.analysis.model.config = "configs/mnist_fast.py:smoke"
        model_config = bbg._model_config(c.analysis)
        return c, model_config, [e.name for e in bbg._ensemble(c.analysis, model_config).components]

    assert names("boundary")[2] == ["apgd_ce", "apgd_t", "apgd_boundary", "square"]
    c, model_config, got = names("")
    assert got == ["apgd_ce", "apgd_t", "square"]
    c.analysis.components = ("apgd_ce", "apgd_nope", "square")
    with pytest.raises(ValueError, match="analysis.components.*apgd_nope"):
        bbg._ensemble(c.analysis, model_config)


def test_gap_over_keys_counts_each_run_and_the_union_and_intersection():
    stages = [
        dict(kind="white_box", idx=np.arange(6), fooled=np.array([1, 0, 0, 0, 1, 0], bool)),
        dict(kind="black_box", idx=np.array([1, 2, 3, 5]), fooled=np.array([1, 0, 1, 1], bool)),
    ]
    first = bbg.black_box_only(stages)
    np.testing.assert_array_equal(first, [1, 3, 5])
    got = bbg.gap_over_keys([first, np.array([3, 5, 7]), np.array([5, 9])], 10)
    # Brute force over the three sets {1, 3, 5}, {3, 5, 7}, {5, 9}.
    assert got == {
        "counts": [3, 3, 2], "fractions": [0.3, 0.3, 0.2], "in_some": 5, "in_every": 1
    }  # fmt: skip


def test_white_box_best_margin_is_the_minimum_over_white_box_stages_only():
    stages = [
        dict(kind="white_box", idx=np.array([0, 1, 2, 3]), margin=np.array([3.0, 1.0, 2.0, 5.0])),
        dict(kind="white_box", idx=np.array([0, 2, 3]), margin=np.array([4.0, 0.5, 6.0])),
        dict(kind="black_box", idx=np.array([0, 3]), margin=np.array([-1.0, -2.0])),
    ]
    got = bbg.white_box_best_margin(stages, np.array([3, 0, 2, 4]), 5)
    # Brute force: point 4 was never attacked; black-box margins do not count.
    np.testing.assert_array_equal(got, [5.0, 3.0, 0.5, np.inf])
