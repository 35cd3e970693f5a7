"""Tests of advjax.findings.ren: verdict logic with known answers and a smoke reproduction."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from advjax.findings import VERDICTS, ren, seed_stats


def test_contrast_and_verdicts():
    assert ren.contrast(3.0, 1.0) == pytest.approx(0.5)
    assert ren.contrast(1.0, 3.0) == pytest.approx(-0.5)
    up, down, zero = (
        seed_stats([1.0, 1.1, 0.9]),
        seed_stats([-1.0, -1.1, -0.9]),
        seed_stats([-1.0, 1.0, 0.1]),
    )
    assert ren.verdict(up, up, sign=+1, what="x")[0] == "holds"
    assert ren.verdict(down, None, sign=-1, what="x")[0] == "holds"
    # The log-odds output disagreeing in sign overturns the verdict.
    verdict, why = ren.verdict(up, down, sign=+1, what="x")
    assert verdict == "does not hold" and "log-odds" in why
    verdict, why = ren.verdict(zero, zero, sign=+1, what="x")
    assert verdict == "does not hold" and "includes 0" in why
    verdict, why = ren.verdict(down, down, sign=+1, what="x")
    assert verdict == "does not hold" and "opposite" in why


def test_exact_order_ratios_share_the_bands():
    # n = 9: m = 0..7, r = m / 7; the reference code's m = int((n - 2) r) inverts it.
    from advjax.experiments import interactions as experiment

    r = experiment.exact_order_ratios(9)
    np.testing.assert_allclose(r, np.arange(8) / 7)
    from advjax.analysis import interactions as itx

    np.testing.assert_array_equal(itx.orders_from_ratios(r + 1e-9, 9), np.arange(8))


@pytest.mark.slow
def test_smoke_reproduction_schema_and_identities(tmp_path):
    seeds = (0, 1)
    report = ren.reproduce(str(tmp_path), seeds=seeds, smoke=True)
    keys = [row["key"] for row in report["findings"]]
    assert keys == [
        "attack_high_order_standard",
        "attack_high_order_robust",
        "utility_high_order",
        "at_weaker_high_order",
        "at_stronger_low_order",
        "at_low_order_consistent",
        "category_specific",
        "shape_bias",
        "explains_defences",
    ]
    for row in report["findings"]:
        assert row["verdict"] in VERDICTS and row["claim"] and row["why"]
        for s in row["stats"].values():
            if isinstance(s, dict) and "values" in s:
                assert s["n"] == len(seeds)
    for fig in report["figures"]:
        assert os.path.getsize(tmp_path / fig) > 0
    assert "ren_attack_change.png" in report["figures"]
    agg = report["aggregate"]
    for name in ren.MODELS:
        for kind in ("clean", "pgd"):
            assert 0.0 <= agg["accuracy"][name][kind]["mean"] <= 1.0
        # PGD accuracy never exceeds clean accuracy on the same images.
        assert agg["accuracy"][name]["pgd"]["mean"] <= agg["accuracy"][name]["clean"]["mean"]
    for seed in seeds:
        with open(tmp_path / "runs" / f"seed_{seed}" / "interactions.json") as f:
            run = json.load(f)
        for output in ("log_prob", "log_odds"):
            for name in ren.MODELS:
                m = run["by_output"][output]["models"][name]
                # Exact decomposition identity of v(N) - v(empty) on the model's own game.
                assert m["exact_coarse"]["max_abs_residual"] < 1e-9
                # Noise floor: plain mean square minus unbiased estimate = mean Var / C >= 0.
                assert np.all(np.asarray(m["change_noise_floor"]) >= -1e-12)
                lo, hi = run["settings"]["attack"]["band"]
                assert lo < run["attack"][name]["drop_mean"] <= hi
    # Different seeds scan different image pools.
    idx = [
        json.load(open(tmp_path / "runs" / f"seed_{s}" / "interactions.json"))["image_indices"]
        for s in seeds
    ]
    assert idx[0] != idx[1]
    # A rerun reuses the finished seeds (same numbers, no recomputation).
    again = ren.reproduce(str(tmp_path), seeds=seeds, smoke=True)
    assert again["per_seed"] == json.loads(json.dumps(report["per_seed"]))
