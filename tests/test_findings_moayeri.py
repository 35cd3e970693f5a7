"""Moayeri et al. findings: claim (i) per scale pair, with its known failure, and the report.

Known answers: the l_2-AT population minimiser is a ridge solution (its stationarity
condition), so its spurious reliance at scales lambda_c = 3, lambda_s = 1 (sigma_c = 0.5,
sigma_s = 1) follows the closed-form ridge path and falls below the least-squares value
1/5; claim (i) must then be reported failing at that pair (and only for l_2), the claim's
row must say "does not hold" naming it, and the overall flags must be false. The smoke
reproduction's aggregates equal a reference computation from its per-seed reports.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections
import numpy as np
import pytest

from advjax.analysis import spurious as sp
from advjax.experiments import spurious as exp
from advjax.findings import VERDICTS, moayeri

EPS = (0.0, 0.2, 0.4)


@pytest.fixture(scope="module")
def theory(tmp_path_factory):
    an = ml_collections.ConfigDict(
        dict(eps_grid=EPS, scales=((1.0, 1.0), (3.0, 1.0)), theory_steps=3000)
    )
    return exp.theory_part(an, str(tmp_path_factory.mktemp("theory")))


def _ridge_of(w, model, eps):
    """The ridge B / A of the l_2 stationarity condition (`sp.ridge_path_weights`)."""
    cov, c, vy = model.moments()
    s = math.sqrt(vy - 2 * w @ c + w @ cov @ w)
    norm = float(np.linalg.norm(w))
    k = math.sqrt(2 / math.pi)
    return (k * eps * s + eps**2 * norm) / norm / (1 + k * eps * norm / s)


def test_l2_minimisers_follow_the_closed_form_ridge_path(theory):
    model = sp.CoreSpuriousModel(scale_core=3.0, scale_spurious=1.0)
    sweep = theory["sweeps"]["3:1"]["l2"]
    lam = np.array([3.0, 1.0])
    sig2 = np.array([0.25, 1.0])
    ridges = []
    for w, eps, rho in zip(sweep["weights"], EPS, sweep["reliance"], strict=True):
        w = np.asarray(w, np.float64)
        ridge = _ridge_of(w, model, eps) if eps > 0 else 0.0
        ridges.append(ridge)
        np.testing.assert_allclose(w, sp.ridge_path_weights(model, ridge), atol=2e-3)
        # Contributions |w_i| lambda_i ∝ lambda_i^2 / (lambda_i^2 sigma_i^2 + ridge).
        a = lam**2 / (lam**2 * sig2 + ridge)
        assert rho == pytest.approx(a[1] / a.sum(), abs=2e-3)
    assert sweep["reliance"][0] == pytest.approx(0.2, abs=1e-3)  # 1 / (1 + 1/0.25)
    assert ridges[1] > 0 and ridges[2] > ridges[1]
    # lambda_s sigma_s = 1 < lambda_c sigma_c = 1.5: reliance falls (0.2 -> ~0.167).
    assert sp.l2_reliance_direction(model) == "falls"
    assert sweep["reliance"][2] < sweep["reliance"][1] < 0.2
    assert sweep["reliance"][2] == pytest.approx(0.167, abs=3e-3)
    assert sp.l2_reliance_direction(sp.CoreSpuriousModel()) == "rises"
    assert sp.l2_reliance_direction(sp.CoreSpuriousModel(scale_core=2.0)) == "flat"


def test_claim_i_is_reported_failing_at_core_3_spurious_1(theory):
    claims = theory["claims"]
    assert claims["i"]["failing"] == ["3:1 l2"]
    assert claims["i"]["holds"] is False
    assert claims["i"]["per_pair"]["1:1"]["l2"]["rises"] is True
    assert claims["i"]["per_pair"]["3:1"]["l1"]["rises"] is True
    assert claims["i"]["per_pair"]["3:1"]["l2"]["rises"] is False
    assert claims["i"]["per_pair"]["3:1"]["l2_closed_form_direction"] == "falls"
    # (ii) and (iii) hold at both pairs; the overall flag still reflects (i).
    assert claims["ii"]["holds"] and claims["iii"]["holds"]
    assert claims["ii"]["per_pair"]["3:1"]["expected"] == "falls"
    assert theory["all_claims_hold"] is False
    # Where l_2 reliance falls, the flipped-domain error falls too.
    e = claims["iii"]["per_pair"]["3:1"]["l2"]
    assert e["reliance"] == "falls" and e["mse_flipped_end"] < e["mse_flipped_start"]
    rows = moayeri.theory_rows(theory, None)
    assert [r["key"] for r in rows] == [
        "theory_i_l1_l2_raise_reliance",
        "theory_ii_linf_scale",
        "theory_iii_shifted_error",
    ]
    assert rows[0]["verdict"] == "does not hold"
    assert "3:1 l2" in rows[0]["why"] and "3:1: l1" in rows[0]["measured"]
    assert rows[1]["verdict"] == "holds" and rows[2]["verdict"] == "holds"


def test_claim_i_holds_when_every_pair_raises_reliance(theory):
    only_equal = {"1:1": theory["sweeps"]["1:1"]}
    claims = exp.theory_claims(only_equal, noise_core=0.5, noise_spurious=1.0)
    assert claims["i"]["holds"] and claims["i"]["failing"] == []
    assert moayeri.theory_rows({**theory, "claims": claims}, None)[0]["verdict"] == "holds"


@pytest.mark.slow
def test_smoke_reproduction_schema_and_aggregates(tmp_path):
    out = str(tmp_path)
    report = moayeri.reproduce(out, seeds=[0, 1], smoke=True)
    keys = [r["key"] for r in report["findings"]]
    assert keys[:3] == [
        "theory_i_l1_l2_raise_reliance",
        "theory_ii_linf_scale",
        "theory_iii_shifted_error",
    ]
    assert "benchmark_rfs" in keys and keys[-1] == "imagenet_suite"
    for row in report["findings"]:
        assert row["verdict"] in VERDICTS and row["claim"] and row["why"]
    # The smoke theory includes the 3:1 pair, where claim (i) fails for l_2.
    assert report["findings"][0]["verdict"] == "does not hold"
    assert report["all_claims_hold"] is False and report["theory_all_claims_hold"] is False
    for f in report["figures"]:
        assert os.path.exists(os.path.join(out, f))
    # Aggregates against a reference computation from the per-seed reports.
    per_seed = []
    for s in (0, 1):
        with open(os.path.join(out, "runs", f"seed_{s}", "spurious.json")) as f:
            per_seed.append(json.load(f))
    vals = [r["benchmark"]["models"]["linf"]["rfs"] for r in per_seed]
    got = report["benchmark"]["models"]["linf"]["rfs"]
    assert got["values"] == pytest.approx(vals) and got["n"] == 2
    assert got["mean"] == pytest.approx(np.mean(vals))
    delta = report["benchmark"]["vs_standard"]["l2"]["delta_bg_gap"]
    ref = [
        r["benchmark"]["models"]["l2"]["bg_gap"] - r["benchmark"]["models"]["standard"]["bg_gap"]
        for r in per_seed
    ]
    assert delta["mean"] == pytest.approx(np.mean(ref))
    fs = report["finite_sample"]["3:1"]["l2"]["reliance_least_squares"]
    assert fs["values"] == pytest.approx(
        [r["finite_sample"]["3:1"]["l2"]["reliance_least_squares"] for r in per_seed]
    )
    # A rerun reuses the finished per-seed reports.
    stamp = os.path.getmtime(os.path.join(out, "runs", "seed_0", "spurious.json"))
    again = moayeri.reproduce(out, seeds=[0, 1], smoke=True)
    assert os.path.getmtime(os.path.join(out, "runs", "seed_0", "spurious.json")) == stamp
    assert [r["measured"] for r in again["findings"]] == [r["measured"] for r in report["findings"]]
