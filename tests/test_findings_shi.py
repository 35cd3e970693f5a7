"""Tests of the Shi et al. findings (advjax.findings.shi): verdict rules, the per-seed
quantities on a hand-built report, and a smoke run of `reproduce` end to end."""

from __future__ import annotations

import json
import math
import os

import pytest

from advjax.findings import VERDICTS, seed_stats, shi

KEYS = [
    "metric_within_training",
    "metric_across_regimes",
    "paper_split",
    "standard_nonrobust_pair",
    "standard_nonrobust_worst",
    "standard_fisher",
    "adversarial_nonrobust_pair",
    "adversarial_nonrobust_worst",
    "adversarial_fisher",
    "direction",
]


def test_interval_verdicts():
    verdict, why = shi.interval_verdict(seed_stats([1.0, 1.1, 1.2]), 0.0, "x")
    assert verdict == "holds" and "above 0" in why
    verdict, why = shi.interval_verdict(seed_stats([-1.2, -1.1, -1.0]), 0.0, "x")
    assert verdict == "does not hold" and "below 0" in why
    # mean 0.5, interval [-1.98, 2.98]: straddles the threshold.
    verdict, why = shi.interval_verdict(seed_stats([-0.5, 0.5, 1.5]), 0.5, "x")
    assert verdict == "does not hold" and "contains 0.5" in why
    # A single seed: the mean decides.
    assert shi.interval_verdict(seed_stats([0.7]), 0.5, "x")[0] == "holds"
    assert shi.all_verdict([("holds", "a"), ("does not hold", "b")]) == ("does not hold", "a; b")
    assert shi.all_verdict([("holds", "a"), ("holds", "b")])[0] == "holds"


def synthetic_report() -> dict:
    def curve(acc, m, r_pair, r, fisher, robust):
        return {
            "epoch": [0.0, 1.0, 2.0],
            "clean_accuracy": acc,
            "robust_accuracy": robust,
            "M": m,
            "M_pair": m,
            "R_pair": r_pair,
            "N_pair": [a - b for a, b in zip(m, r_pair, strict=True)],
            "R": r,
            "N": [a - b for a, b in zip(m, r, strict=True)],
            "fisher_frobenius": fisher,
        }

    checks = {
        "kl_identity": {"residual": 1e-7},
        "l2_local_worst_kl": 0.9,
        "l2_fisher_approximation": 1.0,
    }
    return {
        "curves": {
            "standard": curve(
                [0.1, 0.8, 0.9],
                [0.0, 4.0, 10.0],
                [0.0, 1.0, 2.0],
                [0.0, 3.0, 4.0],
                [0.01, 1.0, 10.0],
                [0.0, 0.0, 0.0],
            ),
            "pgd_at": curve(
                [0.1, 0.7, 0.85],
                [0.0, 1.0, 2.0],
                [0.0, 1.0, 1.5],
                [0.0, 0.5, 0.5],
                [0.01, 0.1, 0.1],
                [0.0, 0.3, 0.5],
            ),
            "trades": curve(
                [0.1, 0.75, 0.8],
                [0.0, 0.5, 1.0],
                [0.0, 0.1, 0.5],
                [0.0, 0.2, 0.2],
                [0.01, 0.5, 1.0],
                [0.0, 0.1, 0.2],
            ),
        },
        "final": {r: {"checks": checks} for r in shi.REGIMES},
    }


def test_seed_quantities_known_answers():
    q = shi.seed_quantities(synthetic_report())
    assert q["rho_standard"] == pytest.approx(1.0)
    # Trained points: M (4, 10, 1, 2, .5, 1) against accuracy (.8, .9, .7, .85, .75, .8).
    ranks_m = [5, 6, 2.5, 4, 1, 2.5]
    ranks_a = [3.5, 6, 1, 5, 2, 3.5]
    mean = 3.5
    cov = sum((a - mean) * (b - mean) for a, b in zip(ranks_m, ranks_a, strict=True))
    var_m = sum((a - mean) ** 2 for a in ranks_m)
    var_a = sum((b - mean) ** 2 for b in ranks_a)
    assert q["rho_trained"] == pytest.approx(cov / math.sqrt(var_m * var_a))
    # Standard: M 0 -> 10, R_pair 0 -> 2 (N_pair grows by 8), R 0 -> 4 (N grows by 6).
    assert q["growth_N_share_pair"] == pytest.approx(0.8)
    assert q["growth_N_share_worst"] == pytest.approx(0.6)
    assert q["N_share_pair_pgd_at"] == pytest.approx(0.25)
    assert q["N_share_worst_trades"] == pytest.approx(0.8)
    assert q["share_gap_pair_pgd_at"] == pytest.approx(0.8 - 0.25)
    assert q["share_gap_worst_pgd_at"] == pytest.approx(0.6 - 0.75)
    assert q["log10_fisher_growth"] == pytest.approx(3.0)
    assert q["log10_fisher_ratio_pgd_at"] == pytest.approx(2.0)
    assert q["log10_fisher_ratio_trades"] == pytest.approx(1.0)
    assert q["identity_max_residual"] == pytest.approx(1e-7)
    assert q["l2_worst_over_fisher"] == pytest.approx(0.9)
    assert q["robust_accuracy_pgd_at"] == 0.5


def test_rows_from_synthetic_seeds():
    reports = [synthetic_report() for _ in range(3)]
    # Vary the standard run's final M a little so the intervals are not degenerate.
    for i, rep in enumerate(reports):
        rep["curves"]["standard"]["M"][-1] += 0.1 * i
        rep["curves"]["standard"]["N_pair"][-1] += 0.1 * i
        rep["curves"]["standard"]["N"][-1] += 0.1 * i
    per_seed = [shi.seed_quantities(r) for r in reports]
    stats = {k: seed_stats([q[k] for q in per_seed]) for k in per_seed[0]}
    rows = shi.findings_rows(stats, num_evals=3)
    assert [r["key"] for r in rows] == KEYS
    by_key = {r["key"]: r for r in rows}
    # Pairwise: standard's N share (~0.8) is far above 0.5 and above PGD-AT's (0.25) and
    # TRADES' (0.5); worst-case inputs: standard 0.6 < PGD-AT 0.75, so that reading fails.
    assert by_key["standard_nonrobust_pair"]["verdict"] == "holds"
    assert by_key["adversarial_nonrobust_pair"]["verdict"] == "holds"
    assert by_key["adversarial_nonrobust_worst"]["verdict"] == "does not hold"
    assert by_key["adversarial_fisher"]["verdict"] == "holds"
    assert by_key["paper_split"]["verdict"] == "not tested here"
    assert by_key["direction"]["verdict"] == "not tested here"
    for key in KEYS:
        if key not in ("paper_split", "direction"):
            assert by_key[key]["claim"].startswith("advjax's"), key


@pytest.mark.slow
def test_smoke_reproduce_schema_aggregation_and_reuse(tmp_path):
    out = str(tmp_path)
    seeds = (0, 1)
    report = shi.reproduce(out, seeds=seeds, smoke=True)
    assert [r["key"] for r in report["findings"]] == KEYS
    assert all(r["verdict"] in VERDICTS for r in report["findings"])
    for name in report["figures"]:
        assert os.path.getsize(os.path.join(out, name)) > 0

    def leaves(tree):
        if isinstance(tree, dict):
            return [v for x in tree.values() for v in leaves(x)]
        if isinstance(tree, list):
            return [v for x in tree for v in leaves(x)]
        return [tree]

    # Measured numbers and verdict strings, no boolean flags (the setup's config may hold
    # booleans such as an attack's random_start).
    measured = {k: report[k] for k in ("findings", "stats", "per_seed")}
    assert not any(isinstance(v, bool) for v in leaves(measured))
    json.dumps(report)
    # The aggregated numbers are seed_stats of each seed's quantities, recomputed here
    # from the runs' own files; the splits add up at every evaluation.
    paths = [os.path.join(out, "runs", f"seed_{s}", "information.json") for s in seeds]
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    per_seed = [shi.seed_quantities(r) for r in runs]
    for key, stats in report["stats"].items():
        expected = seed_stats([q[key] for q in per_seed])
        assert stats["mean"] == pytest.approx(expected["mean"], rel=1e-9, abs=1e-12)
        assert stats["ci"] == pytest.approx(expected["ci"], rel=1e-9, abs=1e-12)
    for run in runs:
        for curve in run["curves"].values():
            for m, r, n in zip(curve["M_pair"], curve["R_pair"], curve["N_pair"], strict=True):
                assert m == pytest.approx(r + n, abs=1e-6)
                assert -1e-6 <= r <= m + 1e-6
            for m, r, n in zip(curve["M"], curve["R"], curve["N"], strict=True):
                assert m == pytest.approx(r + n, abs=1e-5)
    # A rerun reuses the finished seeds: nothing is recomputed and the numbers agree.
    mtimes = [os.path.getmtime(p) for p in paths]
    again = shi.reproduce(out, seeds=seeds, smoke=True)
    assert [os.path.getmtime(p) for p in paths] == mtimes
    assert again["stats"] == report["stats"]
