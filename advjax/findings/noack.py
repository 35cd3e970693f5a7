"""Noack et al. (2021), interpretation regularisation (IR): the paper's claims at CPU size.

Runs `advjax.experiments.interpretability` once per seed at the ``findings`` size of
``configs/interpretability.py`` (8 small CNNs on 5k MNIST images: standard, the l_2 PGD-AT
teacher, input-gradient and Jacobian regularisation, IR with SmoothGrad targets of the
teacher, and the three comparisons: IR with plain-gradient targets of the same teacher,
IR with lambda_cs = 0, IR with SmoothGrad targets of the standard model). Every model is
evaluated with the AutoAttack-style ensemble (APGD-CE, APGD-T, Square) joined by PGD-40 at
the l_2 eps 1.5 (the teacher's) and 2.5 (heavier), and at the cross-norm l_inf eps 0.1
and 0.2; the comparisons use the per-example worst case of each threat model.

Each comparison is a paired difference of robust accuracy across seeds (same seed, same
data order, same evaluation keys); a claim "holds" when the 95% Student-t interval of the
mean difference lies above zero, and "does not hold" otherwise (the reason says whether
the interval covers zero or lies below it). Per-seed runs live in ``out_dir/runs/seed_<s>``
and are reused by a rerun.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from advjax.findings import finding, fmt_stats, seed_stats
from advjax.progress import progress_bar

CONFIG = "configs/interpretability.py"
TRAIN_TM = "l2_1p5"  # the teacher's threat model (l_2, eps 1.5)
HEAVY_TM = "l2_2p5"
CROSS_TMS = ("linf_0p1", "linf_0p2")

# (key, label, model a, model b or a tuple of models whose per-seed best is taken)
COMPARISONS = (
    ("ir_minus_at", "IR (SmoothGrad, AT teacher) - PGD-AT teacher", "ir_robust_teacher",
     "pgd_at_l2"),
    ("ir_minus_standard", "IR (SmoothGrad, AT teacher) - standard", "ir_robust_teacher",
     "standard"),
    ("ir_minus_best_baseline", "IR - best of input-gradient / Jacobian", "ir_robust_teacher",
     ("input_gradient", "jacobian")),
    ("cosine_term", "IR (lambda_cs = 3) - IR (lambda_cs = 0)", "ir_robust_teacher",
     "ir_no_cosine"),
    ("smoothgrad_minus_gradient", "SmoothGrad targets - plain-gradient targets",
     "ir_robust_teacher", "ir_gradient_targets"),
    ("robust_minus_standard_teacher", "AT-teacher targets - standard-teacher targets",
     "ir_robust_teacher", "ir_standard_teacher"),
)  # fmt: skip

LABELS = {
    "standard": "standard",
    "pgd_at_l2": "PGD-AT l2 (teacher)",
    "input_gradient": "input gradient (DB)",
    "jacobian": "Jacobian (JR)",
    "ir_robust_teacher": "IR SmoothGrad of AT",
    "ir_gradient_targets": "IR gradient of AT",
    "ir_no_cosine": "IR lambda_cs = 0",
    "ir_standard_teacher": "IR SmoothGrad of std",
}


def _config(seed: int, smoke: bool):
    from advjax.experiments import kit

    arg = "smoke,findings" if smoke else "findings"
    return kit.load_sub_config(f"{CONFIG}:{arg}", {"seed": int(seed)})


def _per_seed_table(reports: dict[int, dict]) -> dict:
    """{model: {"clean", "pgd": {attack}, "ensemble": {threat model}}: per-seed lists}."""
    first = next(iter(reports.values()))
    names = [n for n in LABELS if n in first["rows"]]
    names += [n for n in first["rows"] if n not in names]
    table: dict[str, dict] = {}
    for name in names:
        rows = [r["rows"][name] for r in reports.values()]
        table[name] = {
            "clean": [r["clean_accuracy"] for r in rows],
            "pgd": {k: [r["robust"][k] for r in rows] for k in rows[0]["robust"]},
            "ensemble": {
                tm: [r["ensemble"]["worst_case"][tm] for r in rows]
                for tm in rows[0].get("ensemble", {}).get("worst_case", {})
            },
            "cos_teacher": [r["interpretability"].get("cos_pgd_at_l2", np.nan) for r in rows],
        }
    return table


def _values(table: dict, model, tm: str) -> np.ndarray:
    """Per-seed worst-case robust accuracy at ``tm``; a tuple of models gives, per seed,
    the best of them (the strongest baseline of that seed)."""
    if isinstance(model, tuple):
        return np.max([_values(table, m, tm) for m in model], axis=0)
    return np.asarray(table[model]["ensemble"][tm], dtype=np.float64)


def _comparisons(table: dict, tms: list[str]) -> dict:
    """Paired per-seed differences (a - b) of every comparison at every threat model, and
    their mean over ``tms`` (one number per seed)."""
    out = {}
    for key, label, a, b in COMPARISONS:
        diffs = {tm: _values(table, a, tm) - _values(table, b, tm) for tm in tms}
        out[key] = {
            "label": label,
            "a": a,
            "b": list(b) if isinstance(b, tuple) else b,
            "per_threat_model": {tm: seed_stats(d) for tm, d in diffs.items()},
        }
    return out


def _sign(stats: dict) -> str:
    """'above' / 'below' / 'covers' zero, from the interval (the mean alone for n = 1)."""
    lo, hi = stats["ci"] if stats.get("ci") else (stats["mean"], stats["mean"])
    return "above" if lo > 0 else "below" if hi < 0 else "covers"


def _difference_verdict(stats: dict, what: str) -> tuple[str, str]:
    side = _sign(stats)
    if side == "above":
        return "holds", f"the 95% interval of the paired difference ({what}) lies above 0"
    if side == "below":
        return "does not hold", f"the 95% interval of the paired difference ({what}) lies below 0"
    return "does not hold", (
        f"the 95% interval of the paired difference ({what}) covers 0: no difference "
        "resolved at this size and number of seeds"
    )


def _pp(stats: dict) -> str:
    return fmt_stats(stats, digits=1, scale=100, unit=" pp")


def _acc(stats: dict) -> str:
    return fmt_stats(stats, digits=1, scale=100, unit="%")


def _findings(table: dict, comp: dict, tms: list[str]) -> list[dict]:
    def d(key, tm):
        return comp[key]["per_threat_model"][tm]

    acc = {m: {tm: seed_stats(_values(table, m, tm)) for tm in tms} for m in table}
    rows = []

    # 1. IR with SmoothGrad targets of a robust teacher: robustness approaching PGD-AT.
    tm = TRAIN_TM if TRAIN_TM in tms else tms[0]
    gain_ir = _values(table, "ir_robust_teacher", tm) - _values(table, "standard", tm)
    gain_at = _values(table, "pgd_at_l2", tm) - _values(table, "standard", tm)
    share = gain_ir / np.where(gain_at > 0, gain_at, np.nan)
    # The share is undefined in a seed where AT gains nothing over standard training.
    closed = seed_stats(share) if np.all(np.isfinite(share)) else None
    above_std = _sign(d("ir_minus_standard", tm)) == "above"
    approaching = above_std and closed is not None and closed["mean"] >= 0.5
    closed_txt = fmt_stats(closed, digits=2) if closed else "undefined (AT gains <= 0 in a seed)"
    closed_mean = f"{closed['mean']:.2f}" if closed else "undefined"
    rows.append(
        finding(
            "IR towards SmoothGrad maps of an l_2-adversarially trained teacher gives "
            "robustness above standard training that approaches (without beating) the "
            "PGD-AT teacher at its own norm",
            f"{tm} ensemble+PGD robust accuracy: IR {_acc(acc['ir_robust_teacher'][tm])}, "
            f"PGD-AT {_acc(acc['pgd_at_l2'][tm])}, standard {_acc(acc['standard'][tm])}; "
            f"IR - AT {_pp(d('ir_minus_at', tm))}; share of AT's gain over standard "
            f"reached by IR {closed_txt}",
            "holds" if approaching else "does not hold",
            "pre-stated rule: IR - standard interval above 0 and IR reaching at least half of "
            f"AT's gain on average; IR - standard is {_sign(d('ir_minus_standard', tm))} 0, "
            f"mean share {closed_mean}",
            key="ir_approaches_at",
            stats={
                "threat_model": tm,
                "ir": acc["ir_robust_teacher"][tm],
                "at": acc["pgd_at_l2"][tm],
                "standard": acc["standard"][tm],
                "ir_minus_at": d("ir_minus_at", tm),
                "ir_minus_standard": d("ir_minus_standard", tm),
                "share_of_at_gain": closed or {},
            },
        )
    )

    # 2. IR beats the gradient-norm baselines (input gradient / double backprop, Jacobian).
    s = d("ir_minus_best_baseline", tm)
    verdict, why = _difference_verdict(s, f"IR - best baseline per seed at {tm}")
    others = ", ".join(f"{t} {_pp(d('ir_minus_best_baseline', t))}" for t in tms if t != tm)
    rows.append(
        finding(
            "IR improves robustness over the gradient-norm baselines (input-gradient "
            "regularisation / double backprop and Jacobian regularisation)",
            f"IR - best baseline at {tm}: {_pp(s)} (IR {_acc(acc['ir_robust_teacher'][tm])}, "
            f"DB {_acc(acc['input_gradient'][tm])}, JR {_acc(acc['jacobian'][tm])}); "
            f"at the other budgets: {others}",
            verdict,
            why,
            key="ir_beats_baselines",
            stats={t: d("ir_minus_best_baseline", t) for t in tms},
        )
    )

    # 3. The direction term matters: lambda_cs = 3 vs lambda_cs = 0.
    s = d("cosine_term", tm)
    verdict, why = _difference_verdict(s, f"lambda_cs 3 - 0 at {tm}")
    others = ", ".join(f"{t} {_pp(d('cosine_term', t))}" for t in tms if t != tm)
    rows.append(
        finding(
            "The interpretability of the gradients is a crucial factor: IR's cosine "
            "(direction) term adds robustness beyond the gradient-magnitude term alone "
            "(lambda_cs > 0 vs lambda_cs = 0)",
            f"IR (lambda_cs = 3) - IR (lambda_cs = 0) at {tm}: {_pp(s)} "
            f"(lambda_cs = 0: {_acc(acc['ir_no_cosine'][tm])}); at the other budgets: {others}",
            verdict,
            why,
            key="cosine_term_matters",
            stats={t: d("cosine_term", t) for t in tms},
        )
    )

    # 4. SmoothGrad targets beat plain-gradient targets of the same teacher, especially
    #    under heavy perturbations.
    heavy = HEAVY_TM if HEAVY_TM in tms else tm
    s = d("smoothgrad_minus_gradient", heavy)
    verdict, why = _difference_verdict(s, f"SmoothGrad - gradient targets at {heavy}")
    others = ", ".join(f"{t} {_pp(d('smoothgrad_minus_gradient', t))}" for t in tms if t != heavy)
    rows.append(
        finding(
            "SmoothGrad targets yield additional gains over plain-gradient targets of the "
            "same robust teacher, especially under heavy perturbations",
            f"SmoothGrad - gradient targets at {heavy}: {_pp(s)} (gradient targets: "
            f"{_acc(acc['ir_gradient_targets'][heavy])}); at the other budgets: {others}",
            verdict,
            why,
            key="smoothgrad_beats_gradient",
            stats={t: d("smoothgrad_minus_gradient", t) for t in tms},
        )
    )

    # 5. Cross-norm: l_2-derived targets give l_inf robustness (above standard and the
    #    baselines; SmoothGrad's gain especially there).
    cross = [t for t in CROSS_TMS if t in tms]
    if cross:
        per_seed = {
            k: np.mean(
                [_values(table, "ir_robust_teacher", t) - _values(table, b, t) for t in cross],
                axis=0,
            )
            for k, b in (
                ("vs_standard", "standard"),
                ("vs_best_baseline", ("input_gradient", "jacobian")),
                ("vs_gradient_targets", "ir_gradient_targets"),
            )
        }
        st = {k: seed_stats(v) for k, v in per_seed.items()}
        sides = {k: _sign(v) for k, v in st.items()}
        holds = sides["vs_standard"] == "above" and sides["vs_best_baseline"] == "above"
        cross_txt = ", ".join(cross)
        rows.append(
            finding(
                "Cross-norm: IR with targets from an l_2-trained teacher is also robust to "
                "l_inf attacks, beyond standard training and the gradient-norm baselines "
                "(SmoothGrad's gain being largest there)",
                f"l_inf (mean over {cross_txt}) IR - standard {_pp(st['vs_standard'])}, "
                f"IR - best baseline {_pp(st['vs_best_baseline'])}, SmoothGrad - gradient "
                f"targets {_pp(st['vs_gradient_targets'])}; IR at "
                + ", ".join(f"{t} {_acc(acc['ir_robust_teacher'][t])}" for t in cross),
                "holds" if holds else "does not hold",
                "pre-stated rule: both the IR - standard and IR - best-baseline intervals "
                f"above 0 (they are {sides['vs_standard']} and {sides['vs_best_baseline']} "
                f"0); the SmoothGrad - gradient interval {sides['vs_gradient_targets']} 0",
                key="cross_norm",
                stats=st | {"threat_models": cross},
            )
        )
    else:
        rows.append(
            finding(
                "Cross-norm: IR with targets from an l_2-trained teacher is also robust to "
                "l_inf attacks",
                "no l_inf ensemble in this run",
                "not tested here",
                "the configuration ran no l_inf ensemble",
                key="cross_norm",
            )
        )
    return rows


def _figure(path: str, table: dict, comp: dict, tms: list[str]) -> str:
    """Left: worst-case robust accuracy of every model per threat model (mean, 95% CI);
    right: the paired differences of the comparisons."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from advjax import plots

    models = list(table)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.2))
    width = 0.8 / len(models)
    x = np.arange(len(tms))
    for i, m in enumerate(models):
        st = [seed_stats(_values(table, m, tm)) for tm in tms]
        mean = np.array([s["mean"] for s in st]) * 100
        err = np.array([(s["ci"][1] - s["mean"]) if s.get("ci") else 0.0 for s in st]) * 100
        ax1.bar(x + (i - (len(models) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
                label=LABELS.get(m, m))  # fmt: skip
    ax1.set_xticks(x, tms)
    ax1.set_ylabel("robust accuracy (%), ensemble + PGD-40")
    ax1.set_title("Worst-case robust accuracy (mean, 95% CI over seeds)")
    ax1.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    keys = [k for k, *_ in COMPARISONS]
    width = 0.8 / len(tms)
    y = np.arange(len(keys))
    for j, tm in enumerate(tms):
        st = [comp[k]["per_threat_model"][tm] for k in keys]
        mean = np.array([s["mean"] for s in st]) * 100
        err = np.array([(s["ci"][1] - s["mean"]) if s.get("ci") else 0.0 for s in st]) * 100
        ax2.barh(y + (j - (len(tms) - 1) / 2) * width, mean, width, xerr=err, capsize=2,
                 label=tm)  # fmt: skip
    ax2.axvline(0, color="k", lw=0.8)
    ax2.set_yticks(y, [comp[k]["label"] for k in keys], fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("paired difference (percentage points)")
    ax2.set_title("Comparisons (mean, 95% CI over seeds)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return plots.save(fig, path)


def _table_markdown(table: dict, comp: dict, tms: list[str]) -> str:
    head = ["model", "clean"] + [f"{tm} (ens+PGD)" for tm in tms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in table:
        cells = [LABELS.get(m, m), _acc(seed_stats(table[m]["clean"]))]
        cells += [_acc(seed_stats(_values(table, m, tm))) for tm in tms]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| comparison (a - b) | " + " | ".join(tms) + " |",
              "|---|" + "---|" * len(tms)]  # fmt: skip
    for c in comp.values():
        cells = [c["label"]] + [_pp(c["per_threat_model"][tm]) for tm in tms]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _log_call(workdir: str, seconds: float) -> list[dict]:
    """Appends this call's wall time to ``workdir/calls.json``; returns every call's."""
    import datetime
    import json

    path = os.path.join(workdir, "calls.json")
    calls = []
    if os.path.exists(path):
        with open(path) as f:
            calls = json.load(f)
    calls.append(
        {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "wall_seconds": round(seconds, 1),
            "load_average": list(os.getloadavg()),
        }
    )
    with open(path, "w") as f:
        json.dump(calls, f, indent=1)
    return calls


def _span(seed_calls: dict[int, list]) -> float:
    import datetime

    ends = [
        (datetime.datetime.fromisoformat(c["date"]), c["wall_seconds"])
        for calls in seed_calls.values()
        for c in calls
    ]
    start = min(e - datetime.timedelta(seconds=w) for e, w in ends)
    return round((max(e for e, _ in ends) - start).total_seconds(), 1)


def reproduce(out_dir: str, *, seeds, smoke: bool = False) -> dict:
    """Runs the IR comparison once per seed, aggregates and judges the paper's claims.

    Args:
      out_dir: results folder (per-seed runs in ``out_dir/runs/seed_<s>``).
      seeds: training seeds (model init, data order, evaluation keys).
      smoke: toy sizes (``configs/interpretability.py:smoke,findings``).

    Returns:
      The report: ``findings`` (one row per claim), ``models`` (per-seed values),
      ``comparisons`` (paired differences with intervals), ``size``, ``figures``.
    """
    from advjax.experiments import interpretability
    from configs import interpretability as ir_config

    reports: dict[int, dict] = {}
    seed_calls: dict[int, list] = {}
    for seed in progress_bar(list(seeds), desc="noack seeds", unit="seed"):
        workdir = os.path.join(out_dir, "runs", f"seed_{seed}")
        t0 = time.time()
        reports[int(seed)] = interpretability.run(_config(seed, smoke), workdir)
        seed_calls[int(seed)] = _log_call(workdir, time.time() - t0)
    table = _per_seed_table(reports)
    first = next(iter(reports.values()))
    tms = list(next(iter(first["rows"].values())).get("ensemble", {}).get("worst_case", {}))
    if not tms:
        raise ValueError("noack: the interpretability runs have no ensemble evaluation")
    comp = _comparisons(table, tms)
    figures = [os.path.basename(_figure(os.path.join(out_dir, "comparison.png"), table, comp,
                                        tms))]  # fmt: skip
    # One seed's saliency grid (teacher targets and every model's gradient), for the eye.
    seed0 = min(reports)
    src = os.path.join(out_dir, "runs", f"seed_{seed0}", "figures", "saliency_gradients.png")
    if os.path.exists(src):
        shutil.copyfile(src, os.path.join(out_dir, "saliency_gradients.png"))
        figures.append("saliency_gradients.png")
    with open(os.path.join(out_dir, "comparison.md"), "w") as f:
        f.write(_table_markdown(table, comp, tms))
    return {
        "findings": _findings(table, comp, tms),
        "figures": figures,
        "threat_models": tms,
        "models": {
            m: {
                "clean": seed_stats(v["clean"]),
                "ensemble_worst_case": {tm: seed_stats(v["ensemble"][tm]) for tm in tms},
                "pgd": {k: seed_stats(x) for k, x in v["pgd"].items()},
                "cos_to_teacher_smoothgrad": seed_stats(v["cos_teacher"]),
            }
            for m, v in table.items()
        },
        "comparisons": comp,
        "size": {
            "config": f"{CONFIG}:{'smoke,findings' if smoke else 'findings'}",
            "findings_size": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in ir_config.FINDINGS_SIZE.items()
            },
            "num_train": first["data"]["num_train"],
            "model": first["model"].get("name"),
            "train": first["train"],
            "pgd_eval_examples": first["num_eval_examples"],
            "pgd_attacks": first["attacks"],
            "ensemble": first["ensemble"],
            "objectives": first["objectives"],
            "note": "CPU-sized: the paper trains SimpleCNN on all of MNIST for 100 epochs with "
            "SGD and evaluates with PGD-40 on the whole test set; here a small CNN on 5k "
            "images for a few epochs of Adam, SmoothGrad with fewer draws, and a shortened "
            "ensemble on the first test images",
        },
        # A rerun reuses finished models and evaluations, so the provenance's wall time is
        # that of the last call only; these are every call's wall time per seed.
        "per_seed_calls": seed_calls,
        "compute_wall_seconds_all_calls": round(
            sum(c["wall_seconds"] for calls in seed_calls.values() for c in calls), 1
        ),
        # First start to last end over every call of every seed (seeds may run at once).
        "seed_runs_span_seconds": _span(seed_calls),
    }
