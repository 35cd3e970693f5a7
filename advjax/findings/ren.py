"""Ren et al. 2021, "A unified game-theoretic interpretation of adversarial robustness"
(arXiv 2103.07364): the claims of its abstract, run at CPU size on MNIST.

One ``interactions`` experiment (`advjax.experiments.interactions`, configs/interactions.py)
per seed: a standard small CNN (1 epoch) and the strong PGD-AT model of
configs/mnist_fast.py (4 epochs) are trained once (model seed 0, shared by every seed, in
``<out>/runs/models/``); each seed draws its own pool of 300 test images, its attacks, its
neighbouring cell pairs and its contexts. Per seed: both models' clean and PGD-20 accuracy
on the pool, 30 images attacked to an equal true-class logit drop, I^(m)(i, j) on a 7x7
grid (n = 49) for 20 pairs x 9 orders x 16 contexts, for v = log p(y | x_S) (the reference
code's output) and v = log-odds (the paper's text), from the same forward passes, plus the
exact decomposition of v(N) - v(empty) on a 3x3 grid.

Noise floor: the attack's change (I(x) - I(x_adv))^2 and the strength I^2 are estimated
without the upward bias Var / C of a C-context mean (`itx.squared_mean_unbiased`, checked
against enumeration in tests/test_findings_ren.py). Orders are banded low m/n <= 0.3,
high m/n >= 0.7 (METHODS.md; the paper gives no cut-offs).

    python launch/reproduce.py ren      # results/ren/{results.json,findings.md,*.png}

Per-seed runs live in ``<out>/runs/seed_<s>/``; a finished seed whose config is unchanged is
reused, an unfinished model training resumes.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from advjax.findings import finding, fmt_stats, seed_stats
from advjax.progress import progress_bar

MODELS = ("standard", "robust")
FIGURES = (
    "ren_attack_change.png",
    "ren_strength_profile.png",
    "ren_consistency.png",
    "ren_utility_by_order.png",
    "ren_examples.png",
)


def base_config(smoke: bool, out_dir: str):
    """configs/interactions.py (``smoke`` variant with ``smoke``), both models in
    ``out_dir/runs/models/``."""
    from advjax.experiments import kit

    c = kit.load_sub_config("configs/interactions.py" + (":smoke" if smoke else ""))
    for name in MODELS:
        c.analysis.models[name].workdir = os.path.join(out_dir, "runs", "models", name)
    return c


def _run_cached(config, workdir: str) -> dict:
    """The experiment's report in ``workdir``, reused if it was made with this config."""
    from advjax.experiments import interactions as exp
    from advjax.experiments import kit

    path = os.path.join(workdir, "interactions.json")
    stamp = os.path.join(workdir, "config_hash.txt")
    digest = kit.config_hash(config.to_dict())
    if os.path.exists(path) and os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().strip() == digest:
                with open(path) as g:
                    return json.load(g)
    report = exp.run(config, workdir)
    with open(stamp, "w") as f:
        f.write(digest)
    return report


def run_seeds(out_dir: str, *, seeds, smoke: bool) -> dict:
    """The experiment once per seed (image pool, attack, pairs and contexts); {seed: report}."""
    reports = {}
    for seed in progress_bar(list(seeds), desc="ren seeds", unit="seed"):
        config = base_config(smoke, out_dir)
        config.seed = int(seed)
        reports[seed] = _run_cached(config, os.path.join(out_dir, "runs", f"seed_{seed}"))
    return reports


# ---------------------------------------------------------------------------------------------
# Per-seed numbers behind the rows
# ---------------------------------------------------------------------------------------------


def contrast(high: float, low: float) -> float:
    """(high - low) / (high + low): +1 all in the high band, -1 all in the low band."""
    return float((high - low) / (high + low))


def seed_values(report: dict, output: str) -> dict:
    """The scale-free per-seed numbers of one output (v = log p or log-odds)."""
    s = report["by_output"][output]
    out = {}
    for name in MODELS:
        m = s["models"][name]
        sq = m["change_sq_bands"]
        out[f"change_contrast_{name}"] = contrast(sq["high"], sq["low"])
        nb = _bands_of(m["change_sq_naive"]["mean"], report)
        out[f"change_contrast_naive_{name}"] = contrast(nb["high"], nb["low"])
        out[f"relative_change_contrast_{name}"] = contrast(
            m["relative_change_sq_bands"]["high"], m["relative_change_sq_bands"]["low"]
        )
        e = m.get("exact_coarse")
        if e:
            bands = e["band_sums"]
            out[f"utility_high_minus_low_share_{name}"] = (
                bands["high"]["mean"] - bands["low"]["mean"]
            ) / e["utility"]["mean"]
        out[f"high_share_{name}"] = m["high_share"]
        out[f"low_share_{name}"] = m["low_share"]
        out[f"low_consistency_{name}"] = m["consistency_clean_bands"]["low"]
        out[f"low_disentanglement_{name}"] = m["disentanglement_clean_bands"]["low"]
    for key, value in s["finding2"].items():
        out[key] = value
    return out


def _bands_of(curve, report: dict) -> dict:
    from advjax.analysis import interactions as itx

    settings = report["settings"]
    return itx.band_means(curve, settings["ratios"], bands=tuple(settings["bands"]))


def aggregate(reports: dict) -> dict:
    """`seed_stats` over seeds of every per-seed number, per output, and of the accuracies."""
    seeds = sorted(reports)
    outputs = reports[seeds[0]]["settings"]["outputs"]
    agg = {"outputs": outputs, "by_output": {}}
    for output in outputs:
        per_seed = [seed_values(reports[s], output) for s in seeds]
        agg["by_output"][output] = {
            k: seed_stats([v[k] for v in per_seed]) for k in per_seed[0] if _finite(per_seed, k)
        }
    agg["accuracy"] = {
        name: {
            kind: seed_stats([reports[s]["robust_accuracy"][name][kind] for s in seeds])
            for kind in ("clean", "pgd")
        }
        for name in MODELS
    }
    agg["accuracy_attack"] = reports[seeds[0]]["robust_accuracy"]["robust"]["attack"]
    agg["num_images"] = [reports[s]["num_images"] for s in seeds]
    agg["attack"] = {
        name: {k: seed_stats([reports[s]["attack"][name][k] for s in seeds])
               for k in ("drop_mean", "linf_mean", "pool_in_band_rate_of_correct")}
        for name in MODELS
    }  # fmt: skip
    return agg


def _finite(rows: list[dict], key: str) -> bool:
    return all(key in r and r[key] is not None and np.isfinite(r[key]) for r in rows)


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------


def verdict(primary: dict, secondary: dict | None, *, sign: int, what: str) -> tuple[str, str]:
    """'holds' when the primary interval lies on the claimed side of 0 (``sign`` +1 or -1) and
    the secondary output's mean agrees; otherwise 'does not hold', saying which part failed."""
    lo, hi = primary["ci"] if primary.get("ci") else (primary["mean"], primary["mean"])
    side = "> 0" if sign > 0 else "< 0"
    if lo > 0 if sign > 0 else hi < 0:
        if secondary is None or np.sign(secondary["mean"]) == sign:
            return "holds", f"{what}: the 95% interval over seeds lies {side} for v = log p" + (
                "; log-odds agrees" if secondary is not None else ""
            )
        return "does not hold", (
            f"{what}: {side} for v = log p but not for v = log-odds "
            f"(mean {secondary['mean']:.3f}); the claim depends on the game's output"
        )
    other = "" if secondary is None else f" (log-odds: mean {secondary['mean']:.3f})"
    if hi < 0 if sign > 0 else lo > 0:
        return "does not hold", (
            f"{what}: the 95% interval over seeds for v = log p lies on the opposite side{other}"
        )
    return "does not hold", (
        f"{what}: the 95% interval over seeds for v = log p includes 0 (not supported){other}"
    )


def _acc(agg: dict, name: str) -> str:
    a = agg["accuracy"][name]
    return (f"{name}: clean {fmt_stats(a['clean'], 1, 100, '%')}, "
            f"PGD {fmt_stats(a['pgd'], 1, 100, '%')}")  # fmt: skip


def rows(agg: dict) -> list[dict]:
    """The paper's claims in its order, with advjax's measurements and verdicts."""
    lp, lo = agg["by_output"]["log_prob"], agg["by_output"].get("log_odds")
    out = []
    for name, label in (("standard", "a standard CNN"), ("robust", "the PGD-AT CNN")):
        key = f"change_contrast_{name}"
        v, why = verdict(lp[key], lo[key] if lo else None, sign=+1,
                         what="contrast (H - L) / (H + L) of the mean squared change")  # fmt: skip
        out.append(finding(
            f"Adversarial perturbations mainly change high-order interactions ({label})",
            f"noise-corrected E[(I(x) - I(x_adv))^2], high band H (m/n >= 0.7) vs low L "
            f"(<= 0.3), contrast: log p {fmt_stats(lp[key], 2)}"
            + (f"; log-odds {fmt_stats(lo[key], 2)}" if lo else "")
            + "; uncorrected (noise floor kept) "
            + fmt_stats(lp[f"change_contrast_naive_{name}"], 2),
            v, why + "; equal-strength attack (true-class logit drop in a fixed band)",
            key=f"attack_high_order_{name}",
            stats={"log_prob": lp[key], "log_odds": lo[key] if lo else None,
                   "naive_log_prob": lp[f"change_contrast_naive_{name}"],
                   "relative_log_prob": lp[f"relative_change_contrast_{name}"]},
        ))  # fmt: skip
    key = "utility_high_minus_low_share_standard"
    if key in lp:
        v, why = verdict(lp[key], lo[key] if lo else None, sign=+1,
                         what="(high-band - low-band utility) / utility")  # fmt: skip
        out.append(finding(
            "The attacking utility (drop of v(N) - v(empty), decomposed into w^(m)-weighted "
            "interactions) is concentrated at high orders",
            f"exact decomposition on a 3x3 grid (n = 9, orders m/(n-2)), standard CNN, "
            f"(high - low) share of the utility: log p {fmt_stats(lp[key], 2)}"
            + (f"; log-odds {fmt_stats(lo[key], 2)}" if lo else "")
            + f"; PGD-AT CNN (log p) {fmt_stats(lp['utility_high_minus_low_share_robust'], 2)}",
            v, why + "; exact on a coarse grid only (the 7x7 estimate of the per-order term "
            "from neighbouring pairs is not unbiased, so it is not reported)",
            key="utility_high_order",
            stats={"log_prob": lp[key], "log_odds": lo[key] if lo else None,
                   "robust_log_prob": lp["utility_high_minus_low_share_robust"]},
        ))  # fmt: skip
    acc = f" ({_acc(agg, 'robust')}; {_acc(agg, 'standard')})"
    for key, claim, sign, what, k in (
        ("high_share_robust_minus_standard",
         "Adversarially trained models encode weaker high-order interactions than standard ones",
         -1, "robust - standard relative E[I^2] in the high band", "at_weaker_high_order"),
        ("low_share_robust_minus_standard",
         "The robustness of adversarially trained models comes from (relatively stronger) "
         "low-order interactions", +1, "robust - standard relative E[I^2] in the low band",
         "at_stronger_low_order"),
    ):  # fmt: skip
        v, why = verdict(lp[key], lo[key] if lo else None, sign=sign, what=what)
        out.append(finding(
            claim,
            f"{what} (band mean of the noise-corrected E[I^2] over its mean over all "
            f"orders): log p "
            f"{fmt_stats(lp[key], 3)}" + (f"; log-odds {fmt_stats(lo[key], 3)}" if lo else "")
            + acc,
            v, why, key=k,
            stats={"log_prob": lp[key], "log_odds": lo[key] if lo else None,
                   "accuracy": agg["accuracy"]},
        ))  # fmt: skip
    key = "low_consistency_robust_minus_standard"
    what = "robust - standard low-band sign consistency E[I^2] / E[dv^2]"
    v, why = verdict(lp[key], lo[key] if lo else None, sign=+1, what=what)
    dkey = "low_disentanglement_robust_minus_standard"
    out.append(finding(
        "The AT model's low-order interactions are more consistent in sign across contexts "
        "(disentanglement)",
        f"robust - standard low-band consistency E[I^2] / E[dv^2]: log p {fmt_stats(lp[key], 3)}"
        + (f"; log-odds {fmt_stats(lo[key], 3)}" if lo else "")
        + f"; the paper's ratio E|I| / E|dv| (noise-biased): log p {fmt_stats(lp[dkey], 3)}",
        v, why, key="at_low_order_consistent",
        stats={"log_prob": lp[key], "log_odds": lo[key] if lo else None,
               "paper_ratio_log_prob": lp[dkey]},
    ))  # fmt: skip
    out.append(finding(
        "The low-order interactions of AT models are category-specific",
        "not measured", "not tested here",
        "needs interactions for the output of every class (v = log p(c | x_S) for c != y) "
        "and a test of class specificity; advjax computes games of the true (or x_adv's "
        "predicted) class only", key="category_specific",
    ))  # fmt: skip
    out.append(finding(
        "Revision of the shape bias of AT features: AT models encode shape mainly through "
        "low-order (local) interactions rather than global high-order ones",
        "not measured", "not tested here",
        "needs shape- and texture-controlled images (e.g. Stylized-ImageNet, ImageNet "
        "ResNets); MNIST digits carry no texture cue to separate shape from", key="shape_bias",
    ))  # fmt: skip
    out.append(finding(
        "The view of interactions explains existing defence methods (and attacks' "
        "transferability) in a principled way",
        "not measured", "not tested here",
        "needs a suite of defences and transfer attacks beyond PGD-AT; advjax compares one "
        "standard and one PGD-AT model", key="explains_defences",
    ))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _curve_stats(reports: dict, get) -> tuple[np.ndarray, np.ndarray]:
    arr = np.array([get(reports[s]) for s in sorted(reports)], np.float64)
    std = arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])
    return arr.mean(0), std


def write_figures(reports: dict, out_dir: str) -> list[str]:
    """Per-order curves, mean over seeds with a +-1 std band (v = log p)."""
    from advjax import plots

    first = reports[sorted(reports)[0]]
    ratios = first["settings"]["ratios"]
    paths = []

    def model(r, name):
        return r["by_output"]["log_prob"]["models"][name]

    def draw(fname, curves_of, ylabel, title, xs=ratios):
        curves, errors = {}, {}
        for label, get in curves_of.items():
            curves[label], errors[label] = _curve_stats(reports, get)
        paths.append(plots.line_plot(os.path.join(out_dir, fname), xs, curves,
                                     xlabel="order m/n", ylabel=ylabel, title=title,
                                     errors=errors))  # fmt: skip

    def normalized(curve):
        c = np.asarray(curve, np.float64)
        return c / c.mean()

    curves = {}
    for name in MODELS:
        curves[f"{name}, noise-corrected"] = lambda r, n=name: normalized(
            model(r, n)["change_sq"]["mean"]
        )
        curves[f"{name}, uncorrected"] = (
            lambda r, n=name: normalized(model(r, n)["change_sq_naive"]["mean"]))  # fmt: skip
    draw("ren_attack_change.png", curves, "E[(I(x) - I(x_adv))^2] / mean over orders",
         "change by the attack per order (v = log p)")  # fmt: skip
    draw("ren_strength_profile.png",
         {name: (lambda r, n=name: normalized(model(r, n)["strength_sq_clean"]["mean"]))
          for name in MODELS},
         "E[I^2] / mean over orders",
         "interaction strength profile, clean (v = log p)")  # fmt: skip
    draw("ren_consistency.png",
         {name: (lambda r, n=name: model(r, n)["consistency_clean"]) for name in MODELS},
         "E[I^2] / E[dv^2]", "sign consistency across contexts, clean (v = log p)")  # fmt: skip
    if "exact_coarse" in model(first, "standard"):
        e = model(first, "standard")["exact_coarse"]
        draw("ren_utility_by_order.png",
             {name: (lambda r, n=name: np.asarray(model(r, n)["exact_coarse"]
                                                  ["order_terms_change"]["mean"])
                     / model(r, n)["exact_coarse"]["utility"]["mean"]) for name in MODELS},
             "order term / utility", f"attacking utility per order, exact, n = "
             f"{e['num_players']} (v = log p)", xs=e["ratios"])  # fmt: skip
    example = os.path.join(out_dir, "runs", f"seed_{sorted(reports)[0]}", "figures",
                           "examples.png")  # fmt: skip
    if os.path.exists(example):
        paths.append(shutil.copy(example, os.path.join(out_dir, "ren_examples.png")))
    return [os.path.relpath(p, out_dir) for p in paths]


def reproduce(out_dir: str, *, seeds=(0, 1, 2), smoke: bool = False) -> dict:
    """Runs the experiment per seed, aggregates, writes the figures; the report's
    ``findings`` are the paper's claims in order (`launch/reproduce.py ren`)."""
    reports = run_seeds(out_dir, seeds=seeds, smoke=smoke)
    agg = aggregate(reports)
    figures = write_figures(reports, out_dir)
    first = reports[sorted(reports)[0]]
    return {
        "findings": rows(agg),
        "figures": figures,
        "aggregate": agg,
        "settings": first["settings"],
        "per_seed": {
            str(s): {
                "num_images": r["num_images"],
                "robust_accuracy": r["robust_accuracy"],
                "attack": r["attack"],
                "wall_seconds": r["wall_seconds"],
                "exact_max_abs_residual": max(
                    (
                        m["exact_coarse"]["max_abs_residual"]
                        for o in r["by_output"].values()
                        for m in o["models"].values()
                        if "exact_coarse" in m
                    ),
                    default=None,
                ),  # fmt: skip
                **{o: seed_values(r, o) for o in r["settings"]["outputs"]},
            }
            for s, r in reports.items()
        },
    }
