"""advjax.findings.tsipras: the verdict logic on known inputs and a smoke run end to end."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from scipy import stats

from advjax import findings
from advjax.findings import tsipras
from tests.helpers import printed_json

KEYS = [
    "toy_theorem1",
    "toy_adversarial_training",
    "mnist_tradeoff",
    "small_data",
    "gradients",
    "large_eps_examples",
]


def _sweep(sizes, acc):
    """A small_data report from ``acc[(size, eps, seed)]``."""
    eps_train = sorted({k[1] for k in acc})
    seeds = sorted({k[2] for k in acc})
    cells = [
        {
            "size": n,
            "eps_train": e,
            "seed": s,
            "standard_accuracy": acc[(n, e, s)],
            "robust_accuracy": {f"{max(eps_train):g}": 0.1 * e},
        }
        for (n, e, s) in acc
    ]
    return {"sizes": sizes, "eps_train": eps_train, "seeds": seeds, "cells": cells}


def test_crossover_is_log_interpolated_between_the_sign_change():
    mk = lambda m: {"mean": m}  # noqa: E731
    got = tsipras.crossover([100, 1000, 10000], [mk(0.02), mk(0.01), mk(-0.01)])
    assert got["between"] == [1000, 10000]
    assert got["at_log_interpolated"] == pytest.approx(math.sqrt(1000 * 10000))
    none = tsipras.crossover([100, 1000], [mk(0.02), mk(0.01)])
    assert none == {"between": None, "at_log_interpolated": None}


def test_small_data_rows_pair_by_seed_and_report_the_crossover():
    sizes = [100, 1000, 60000]
    # AT - standard per seed: +3, +1, -1 points (+ a seed-dependent 0.1-point wobble).
    gaps = {100: 0.03, 1000: 0.01, 60000: -0.01}
    acc = {}
    for s in (0, 1, 2):
        for n in sizes:
            base = 0.8 + 0.05 * math.log10(n) + 0.02 * s  # seeds differ a lot in level
            acc[(n, 0.0, s)] = base
            acc[(n, 2.0, s)] = base + gaps[n] + 0.001 * (s - 1)
    tables = tsipras.small_data_tables(_sweep(sizes, acc))
    diffs = tables["at_minus_standard"]["2"]
    for d, n in zip(diffs, sizes, strict=True):
        assert d["mean"] == pytest.approx(gaps[n])
        # Paired: the seed levels cancel, leaving a std of 0.001 (unpaired it would be 0.02).
        assert d["std"] == pytest.approx(0.001)
        half = stats.t.ppf(0.975, 2) * 0.001 / math.sqrt(3)
        assert d["ci"] == pytest.approx([gaps[n] - half, gaps[n] + half])
    rows, extra = tsipras.small_data_rows(tables, "l2")
    assert [r["key"] for r in rows] == ["mnist_tradeoff", "small_data"]
    assert rows[0]["verdict"] == "holds" and rows[1]["verdict"] == "holds"
    assert extra["crossover"]["between"] == [1000, 60000]
    assert rows[1]["stats"]["sizes_interval_below_zero"] == [60000]

    # No crossing: AT stays above at every size -> both rows "does not hold".
    for s in (0, 1, 2):
        acc[(60000, 2.0, s)] = acc[(60000, 0.0, s)] + 0.005 + 0.001 * s
    rows, extra = tsipras.small_data_rows(tsipras.small_data_tables(_sweep(sizes, acc)), "l2")
    assert [r["verdict"] for r in rows] == ["does not hold", "does not hold"]
    assert extra["crossover"]["between"] is None
    assert "not reached" in rows[1]["why"] and "[100, 60,000]" in rows[1]["measured"]


@pytest.mark.slow
def test_smoke_reproduce_schema_and_known_answers(tmp_path):
    seeds = [0, 1]
    report = tsipras.reproduce(str(tmp_path), seeds=seeds, smoke=True)
    rows = report["findings"]
    assert [r["key"] for r in rows] == KEYS
    assert all(r["verdict"] in findings.VERDICTS and r["claim"] and r["why"] for r in rows)
    for name in report["figures"]:
        assert os.path.getsize(tmp_path / name) > 0
    assert "small_data_accuracy.png" in report["figures"]

    # Closed forms of the averaging classifier: Phi(3) and Phi(-3) at any d.
    toy = rows[0]["stats"]
    assert toy["closed_form_standard"] == pytest.approx(stats.norm.cdf(3.0), abs=1e-6)
    assert toy["closed_form_robust"] == pytest.approx(stats.norm.cdf(-3.0), abs=1e-6)
    assert toy["monte_carlo_standard"]["n"] == len(seeds)

    # The paired differences equal the cells' own accuracies, seed by seed.
    sd = report["small_data"]
    eps = sd["tables"]["eps_train"]
    acc = {(c["size"], c["eps_train"], c["seed"]): c["standard_accuracy"] for c in sd["cells"]}
    for i, n in enumerate(sd["tables"]["sizes"]):
        want = [acc[(n, eps[-1], s)] - acc[(n, eps[0], s)] for s in seeds]
        got = sd["tables"]["at_minus_standard"][f"{eps[-1]:g}"][i]
        np.testing.assert_allclose(got["values"], want)
    big = rows[2]["stats"]["at_minus_standard"]
    assert rows[2]["verdict"] == ("holds" if big["ci"][1] < 0 else "does not hold")

    # The visuals ran on the sweep's largest-size models of each seed.
    vis = report["visuals"]["per_seed"]
    assert [v["seed"] for v in vis] == seeds
    corr = rows[4]["stats"]["gradient_image_correlation"]
    np.testing.assert_allclose(
        corr["diff"]["values"],
        [
            v["models"]["robust"]["gradient_image_correlation"]
            - v["models"]["standard"]["gradient_image_correlation"]
            for v in vis
        ],
    )
    assert findings.render_table({"tsipras": {**report, "seeds": seeds}}).count("\n| ") >= 7


@pytest.mark.slow
def test_notebook_known_answers_and_results(run_notebook):
    nb = run_notebook("tradeoff.ipynb")
    checks = printed_json(nb, "CHECKS")
    # Averaging classifier: Phi(3) standard, Phi(-3) robust at eps = 2 eta (closed form);
    # Monte-Carlo within 4 standard errors; Theorem 1 holds on every mixture.
    assert checks["averaging_standard"] == pytest.approx(stats.norm.cdf(3.0), abs=1e-6)
    assert checks["averaging_robust"] == pytest.approx(stats.norm.cdf(-3.0), abs=1e-6)
    se_std, se_rob = checks["averaging_mc_se"]
    assert abs(checks["averaging_mc_standard"] - stats.norm.cdf(3.0)) <= 4 * max(se_std, 1e-3)
    assert abs(checks["averaging_mc_robust"] - stats.norm.cdf(-3.0)) <= 4 * max(se_rob, 1e-3)
    assert checks["max_robust_minus_bound"] <= 1e-6
    result = printed_json(nb, "NOTEBOOK_RESULT")
    assert result["keys"] == KEYS
    assert set(result["verdicts"].values()) <= set(findings.VERDICTS)
    assert result["difference_residual"] < 1e-9  # stored paired differences = the cells'
    assert result["figures"] and all(os.path.getsize(p) > 0 for p in result["figures"])
