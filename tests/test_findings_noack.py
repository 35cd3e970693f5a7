"""Noack et al. findings: the comparison configs, the paired-difference aggregation and
its verdicts on known per-seed values, and a smoke reproduction.

Known answers: with per-seed robust accuracies chosen by hand, every comparison is the
per-seed difference (the strongest baseline taken per seed), its interval is the Student-t
interval of those differences, and the verdict follows the sign of the interval. The smoke
reproduction's aggregates equal a reference computation from its per-seed reports.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from advjax import findings
from advjax.experiments import kit
from advjax.findings import noack

MODELS = (
    "standard",
    "pgd_at_l2",
    "input_gradient",
    "jacobian",
    "ir_robust_teacher",
    "ir_gradient_targets",
    "ir_no_cosine",
    "ir_standard_teacher",
)
TMS = ("l2_1p5", "l2_2p5", "linf_0p1", "linf_0p2")


def test_findings_config_has_the_three_comparisons_and_cross_norm_ensembles():
    c = kit.load_sub_config("configs/interpretability.py:findings")
    m = c.analysis.models
    assert list(c.analysis.order) == list(MODELS)
    assert m.ir_gradient_targets.teacher == m.ir_robust_teacher.teacher == "pgd_at_l2"
    assert m.ir_gradient_targets.targets.method == "gradient"
    assert m.ir_robust_teacher.targets.method == "smoothgrad"
    assert m.ir_no_cosine.lambda_cs == 0.0 and m.ir_robust_teacher.lambda_cs > 0
    # Only the compared setting differs between IR and each of its variants.
    base = m.ir_robust_teacher.to_dict()
    for name, key in (("ir_no_cosine", "lambda_cs"), ("ir_standard_teacher", "teacher")):
        other = m[name].to_dict()
        assert {k for k in base if base[k] != other[k]} == {key}
    grad = m.ir_gradient_targets.to_dict()
    assert {k for k in base if base[k] != grad[k]} == {"targets"}
    assert {k for k in base["targets"] if base["targets"][k] != grad["targets"][k]} == {"method"}
    ens = {(e.norm, float(e.eps)) for e in c.analysis.ensemble.values()}
    assert ens == {("l2", 1.5), ("l2", 2.5), ("linf", 0.1), ("linf", 0.2)}
    assert all(e.name == "ensemble" for e in c.analysis.ensemble.values())
    for name in c.analysis.ensemble_with:  # each ensemble joined by the PGD of its budget
        a = c.eval.attacks[name]
        assert (a.norm, float(a.eps)) in ens and a.num_steps == 40
    assert c.analysis.ensemble_examples == noack_size()["ensemble_examples"]


def noack_size():
    from configs import interpretability

    return interpretability.FINDINGS_SIZE


def _table(values: dict[str, list[float]]) -> dict:
    """A per-seed table where every threat model has the same per-seed values."""
    return {
        m: {"clean": [1.0] * len(v), "pgd": {}, "ensemble": {tm: list(v) for tm in TMS}}
        for m, v in values.items()
    }


def _known_values():
    return {
        "standard": [0.10, 0.12, 0.11],
        "pgd_at_l2": [0.70, 0.72, 0.71],
        "input_gradient": [0.30, 0.20, 0.25],
        "jacobian": [0.20, 0.35, 0.25],
        "ir_robust_teacher": [0.60, 0.66, 0.62],
        "ir_gradient_targets": [0.61, 0.64, 0.63],  # differences -0.01, +0.02, -0.01
        "ir_no_cosine": [0.30, 0.31, 0.29],
        "ir_standard_teacher": [0.40, 0.42, 0.41],
    }


def test_comparisons_are_paired_per_seed_differences():
    v = _known_values()
    comp = noack._comparisons(_table(v), list(TMS))
    best = np.maximum(v["input_gradient"], v["jacobian"])  # [0.30, 0.35, 0.25] per seed
    np.testing.assert_allclose(best, [0.30, 0.35, 0.25])
    ref = findings.seed_stats(np.subtract(v["ir_robust_teacher"], best))
    got = comp["ir_minus_best_baseline"]["per_threat_model"]["linf_0p1"]
    assert got["values"] == pytest.approx(ref["values"])
    assert got["ci"] == pytest.approx(ref["ci"])
    assert comp["cosine_term"]["per_threat_model"]["l2_1p5"]["values"] == pytest.approx(
        [0.30, 0.35, 0.33]
    )


def test_verdicts_follow_the_sign_of_the_interval():
    v = _known_values()
    table = _table(v)
    rows = noack._findings(table, noack._comparisons(table, list(TMS)), list(TMS))
    by_key = {r["key"]: r for r in rows}
    assert [r["key"] for r in rows] == [
        "ir_approaches_at",
        "ir_beats_baselines",
        "cosine_term_matters",
        "smoothgrad_beats_gradient",
        "cross_norm",
    ]
    # IR gains 0.50, 0.54, 0.51 over standard; AT 0.60 each: share about 0.86 >= 0.5.
    share = by_key["ir_approaches_at"]["stats"]["share_of_at_gain"]
    assert share["mean"] == pytest.approx(np.mean([0.50 / 0.60, 0.54 / 0.60, 0.51 / 0.60]))
    assert by_key["ir_approaches_at"]["verdict"] == "holds"
    assert by_key["ir_beats_baselines"]["verdict"] == "holds"
    assert by_key["cosine_term_matters"]["verdict"] == "holds"
    # SmoothGrad - gradient targets: -0.01, +0.02, -0.01 -> interval covers 0.
    row = by_key["smoothgrad_beats_gradient"]
    assert row["verdict"] == "does not hold" and "covers 0" in row["why"]
    assert by_key["cross_norm"]["verdict"] == "holds"
    # Flip the baselines above IR: the interval lies below zero and the row says so.
    v2 = dict(v, input_gradient=[0.90, 0.91, 0.92])
    t2 = _table(v2)
    rows2 = {r["key"]: r for r in noack._findings(t2, noack._comparisons(t2, list(TMS)), TMS)}
    assert rows2["ir_beats_baselines"]["verdict"] == "does not hold"
    assert "below 0" in rows2["ir_beats_baselines"]["why"]
    assert rows2["cross_norm"]["verdict"] == "does not hold"


@pytest.mark.slow
def test_smoke_reproduction_schema_and_aggregates(tmp_path):
    out = str(tmp_path)
    report = noack.reproduce(out, seeds=(0, 1), smoke=True)
    assert [r["key"] for r in report["findings"]] == [
        "ir_approaches_at",
        "ir_beats_baselines",
        "cosine_term_matters",
        "smoothgrad_beats_gradient",
        "cross_norm",
    ]
    assert all(r["verdict"] in findings.VERDICTS for r in report["findings"])
    for fig in report["figures"]:
        assert os.path.getsize(os.path.join(out, fig)) > 0
    assert set(report["threat_models"]) == {"l2_1p5", "linf_0p1"}
    # Reference: the per-seed reports on disk give the same aggregates.
    per_seed = []
    for s in (0, 1):
        with open(os.path.join(out, "runs", f"seed_{s}", "interpretability.json")) as f:
            per_seed.append(json.load(f))
    for m in MODELS:
        for tm in report["threat_models"]:
            vals = [r["rows"][m]["ensemble"]["worst_case"][tm] for r in per_seed]
            got = report["models"][m]["ensemble_worst_case"][tm]
            assert got["values"] == pytest.approx(vals)
            # On the same images, the worst case over the ensemble and PGD never exceeds
            # either attack alone, nor clean accuracy.
            for r, w in zip(per_seed, vals, strict=True):
                ens = r["rows"][m]["ensemble"]
                assert w <= min(ens[tm], ens[f"ensemble_{tm}"], ens["clean_accuracy"]) + 1e-9
    comp = report["comparisons"]["cosine_term"]["per_threat_model"]["l2_1p5"]
    a = report["models"]["ir_robust_teacher"]["ensemble_worst_case"]["l2_1p5"]["values"]
    b = report["models"]["ir_no_cosine"]["ensemble_worst_case"]["l2_1p5"]["values"]
    assert comp["values"] == pytest.approx(np.subtract(a, b).tolist())
