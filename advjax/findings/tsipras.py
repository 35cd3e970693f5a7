"""Tsipras et al. (2019), "Robustness may be at odds with accuracy", at a CPU-sized scale.

Three experiments, each run once per seed under ``out_dir/runs/`` (finished models are
restored, so a rerun resumes):

* the toy distribution of section 2 (`advjax.experiments.tradeoff_toy`, d = 1000,
  eta = 3 / sqrt(d), p = 0.95): closed forms against Monte-Carlo, Theorem 1 on a sweep of
  mixture classifiers, and a linear model trained with l_inf PGD-AT next to a standard one;
* the small-data sweep of Fig. 1 (`advjax.experiments.small_data`, configs/small_data.py
  ``findings``): standard MNIST test accuracy against the training-set size, standard
  training against l_2 PGD-AT, paired by seed (the same training subset and init key);
* the robust-model visuals of section 4 (`advjax.experiments.tradeoff_visuals`) on the
  sweep's largest-size models of each seed, with their quantitative proxies (correlation
  of |input gradient| with the image; share of large-eps targeted examples nearer the
  target-class mean than the source-class mean).

Verdicts compare Student-t 95% intervals over seeds (of paired differences where two
models are compared) with zero or with the paper's numbers; the thresholds are in the
``why`` of every row.
"""

from __future__ import annotations

import math
import os
import shutil

import numpy as np

from advjax.findings import finding, fmt_stats, seed_stats

TOY_CONFIG = "configs/tradeoff_toy.py"
SMALL_DATA_CONFIG = "configs/small_data.py"
VISUALS_CONFIG = "configs/tradeoff_visuals.py"


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


# ---------------------------------------------------------------------------------------
# Runs (one per seed; each resumes from its workdir)
# ---------------------------------------------------------------------------------------


def run_toy(out_dir: str, seed: int, smoke: bool) -> dict:
    """The toy-model analysis of one seed (data, init and Monte-Carlo keys follow it)."""
    from advjax.experiments import kit, tradeoff_toy

    config = kit.load_sub_config(TOY_CONFIG + (":smoke" if smoke else ""))
    with config.unlocked():
        config.seed = int(seed)
        config.data.seed = int(seed)
    return tradeoff_toy.run(config, os.path.join(out_dir, "runs", f"toy_s{seed}"))


def small_data_config(seeds, smoke: bool):
    from advjax.experiments import kit

    config = kit.load_sub_config(SMALL_DATA_CONFIG + (":smoke" if smoke else ":findings"))
    with config.unlocked():
        config.analysis.seeds = tuple(int(s) for s in seeds)
    return config


def run_small_data(out_dir: str, seeds, smoke: bool) -> dict:
    """The whole sweep (every size, eps_train and seed) in ``out_dir/runs/small_data``."""
    from advjax.experiments import small_data

    return small_data.run(
        small_data_config(seeds, smoke), os.path.join(out_dir, "runs", "small_data")
    )


def run_visuals(out_dir: str, seed: int, smoke: bool, standard_dir: str, robust_dir: str):
    """The visuals of one seed's standard and robust models (restored, not retrained)."""
    from advjax.experiments import kit, tradeoff_visuals

    config = kit.load_sub_config(VISUALS_CONFIG + (":smoke" if smoke else ""))
    with config.unlocked():
        config.seed = int(seed)
        config.analysis.standard_workdir = standard_dir
        config.analysis.robust_workdir = robust_dir
        if not smoke:
            config.analysis.num_images = 10  # one test image of each digit
    return tradeoff_visuals.run(config, os.path.join(out_dir, "runs", f"visuals_s{seed}"))


# ---------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------


def _above(s: dict) -> bool:
    """The interval lies above zero (a single value: the value does)."""
    return (s["ci"][0] if s.get("ci") else s["mean"]) > 0


def _below(s: dict) -> bool:
    return (s["ci"][1] if s.get("ci") else s["mean"]) < 0


def _pct(s: dict, digits: int = 2) -> str:
    return fmt_stats(s, digits=digits, scale=100, unit="%")


def _pp(s: dict, digits: int = 2) -> str:
    return fmt_stats(s, digits=digits, scale=100, unit=" pp")


def toy_rows(toys: list[dict]) -> tuple[list[dict], dict]:
    p = toys[0]["params"]["p"]
    dim = toys[0]["params"]["dim"]
    avg = [t["classifiers"]["averaging"] for t in toys]
    cf_std, cf_rob = avg[0]["standard_closed_form"], avg[0]["robust_closed_form"]
    mc_std = seed_stats([a["standard_monte_carlo"] for a in avg])
    mc_rob = seed_stats([a["robust_monte_carlo"] for a in avg])
    # Largest excess of a mixture's robust accuracy over Theorem 1's bound, in closed
    # form and by Monte-Carlo (bound evaluated at the Monte-Carlo standard accuracy; a
    # 3-standard-error allowance for sampling noise).
    excess_cf, excess_mc, n_mix = [], [], 0
    for t in toys:
        sw = t["bound_sweep"]
        n_mix = len(sw["alpha"])
        excess_cf.append(float(np.max(np.asarray(sw["robust"]) - np.asarray(sw["bound"]))))
        n_mc = t["params"]["num_monte_carlo"]
        ms, mr = np.asarray(sw["standard_monte_carlo"]), np.asarray(sw["robust_monte_carlo"])
        bound_mc = p / (1 - p) * (1 - ms)
        se = np.sqrt(np.maximum(mr * (1 - mr), 1.0 / n_mc) / n_mc)
        excess_mc.append(float(np.max(mr - bound_mc - 3 * se)))
    closed_ok = abs(cf_std - _phi(3.0)) < 1e-5 and abs(cf_rob - _phi(-3.0)) < 1e-5
    mc_ok = all(
        a["within_3se"] for a in avg
    )  # every seed's estimate within 3 standard errors of the closed form
    bound_ok = max(excess_cf) <= 1e-6 and max(excess_mc) <= 0
    stats1 = {
        "closed_form_standard": cf_std,
        "closed_form_robust": cf_rob,
        "monte_carlo_standard": mc_std,
        "monte_carlo_robust": mc_rob,
        "mixtures": n_mix,
        "max_excess_over_bound_closed_form": max(excess_cf),
        "max_excess_over_bound_monte_carlo_minus_3se": max(excess_mc),
    }
    row1 = finding(
        f"Toy distribution (d = {dim}, eta = 3/sqrt(d), p = {p}): the averaging classifier "
        "is 99.87% accurate but 0.13% robust at l_inf eps = 2 eta, and every classifier "
        "obeys Theorem 1: robust accuracy <= p/(1-p) (1 - standard accuracy).",
        f"closed form {cf_std:.6f} / {cf_rob:.6f}; Monte-Carlo standard "
        f"{fmt_stats(mc_std, 5)}, robust {fmt_stats(mc_rob, 5)}; Theorem 1 held for all "
        f"{n_mix} mixtures alpha e_1 + (1-alpha) w_avg in every seed (largest robust - bound "
        f"{max(excess_cf):.2e} in closed form)",
        "holds" if closed_ok and mc_ok and bound_ok else "does not hold",
        "closed forms equal Phi(3) and Phi(-3); each seed's Monte-Carlo estimate lies within "
        "3 standard errors of them; no mixture exceeds the bound (closed form, and Monte-Carlo "
        "beyond 3 standard errors)"
        if closed_ok and mc_ok and bound_ok
        else f"closed form ok: {closed_ok}, Monte-Carlo within 3 SE: {mc_ok}, bound: {bound_ok}",
        key="toy_theorem1",
        stats=stats1,
    )

    at = [t["trained"]["adversarial"] for t in toys]
    st = [t["trained"]["standard"] for t in toys]
    share = seed_stats([a["share_on_x1"] for a in at])
    at_std = seed_stats([a["standard_monte_carlo"] for a in at])
    at_rob = seed_stats([a["robust_monte_carlo"] for a in at])
    at_pgd = seed_stats([a["robust_pgd"] for a in at])
    st_std = seed_stats([a["standard_monte_carlo"] for a in st])
    st_rob = seed_stats([a["robust_monte_carlo"] for a in st])
    st_share = seed_stats([a["share_on_x1"] for a in st])
    tol = 0.02
    at_ok = (
        share["mean"] >= 0.9 and abs(at_std["mean"] - p) <= tol and abs(at_rob["mean"] - p) <= tol
    )
    # The paper's numbers for standard training on this distribution: > 99% / < 1%.
    st_ok = st_std["mean"] > 0.99 and st_rob["mean"] < 0.01
    stats2 = {
        "at_share_on_x1": share,
        "at_standard": at_std,
        "at_robust": at_rob,
        "at_robust_pgd": at_pgd,
        "standard_share_on_x1": st_share,
        "standard_standard": st_std,
        "standard_robust": st_rob,
    }
    row2 = finding(
        "Adversarial training matters (Theorem 2): l_inf adversarial training (eps = 2 eta) "
        "of a linear classifier puts (almost) all weight on the robust feature x_1, so its "
        "standard and robust accuracy are both about p, while standard training relies on "
        "the weak features: more accurate, not robust.",
        f"AT: share of |w| on x_1 {fmt_stats(share, 3)}, standard {_pct(at_std)}, robust "
        f"{_pct(at_rob)} (PGD {_pct(at_pgd)}); standard training: standard {_pct(st_std)}, "
        f"robust {_pct(st_rob)}",
        "holds" if at_ok and st_ok else "does not hold",
        f"AT: share >= 0.9 and both accuracies within {tol:.0%} of p = {p}: {at_ok}; "
        f"standard training > 99% standard and < 1% robust: {st_ok}",
        key="toy_adversarial_training",
        stats=stats2,
    )
    return [row1, row2], {"toy": stats1 | stats2}


def small_data_tables(report: dict) -> dict:
    """Per-seed standard accuracy ``acc[eps][seed] -> list over sizes`` and paired
    AT-minus-standard differences with their `seed_stats` at every size."""
    sizes, eps_train, seeds = report["sizes"], report["eps_train"], report["seeds"]
    acc = {e: {s: [None] * len(sizes) for s in seeds} for e in eps_train}
    rob = {e: {s: [None] * len(sizes) for s in seeds} for e in eps_train}
    for c in report["cells"]:
        i = sizes.index(c["size"])
        acc[c["eps_train"]][c["seed"]][i] = c["standard_accuracy"]
        rob[c["eps_train"]][c["seed"]][i] = c["robust_accuracy"].get(f"{max(eps_train):g}")
    std_eps = eps_train[0]
    out = {"sizes": sizes, "eps_train": eps_train, "seeds": seeds, "standard_accuracy": {}}
    for e in eps_train:
        out["standard_accuracy"][f"{e:g}"] = [
            seed_stats([acc[e][s][i] for s in seeds]) for i in range(len(sizes))
        ]
    out["at_minus_standard"] = {}
    for e in eps_train:
        if e == std_eps:
            continue
        out["at_minus_standard"][f"{e:g}"] = [
            seed_stats([acc[e][s][i] - acc[std_eps][s][i] for s in seeds])
            for i in range(len(sizes))
        ]
    e_max = max(eps_train)
    out["robust_accuracy_at_max_eps"] = {
        "eps": e_max,
        **{
            f"{e:g}": [
                seed_stats([rob[e][s][i] for s in seeds])
                if all(rob[e][s][i] is not None for s in seeds)
                else None
                for i in range(len(sizes))
            ]
            for e in eps_train
        },
    }
    return out


def crossover(sizes: list[int], diffs: list[dict]) -> dict:
    """Where the mean AT-minus-standard difference first turns from > 0 to <= 0 along the
    sizes: ``{"between": [n_a, n_b], "at_log_interpolated": n}`` or ``{"between": None}``
    when the sign never changes that way."""
    means = [d["mean"] for d in diffs]
    for i in range(len(sizes) - 1):
        if means[i] > 0 >= means[i + 1]:
            la, lb = math.log(sizes[i]), math.log(sizes[i + 1])
            t = means[i] / (means[i] - means[i + 1])
            return {
                "between": [sizes[i], sizes[i + 1]],
                "at_log_interpolated": math.exp(la + t * (lb - la)),
            }
    return {"between": None, "at_log_interpolated": None}


def small_data_rows(tables: dict, norm: str) -> tuple[list[dict], dict]:
    sizes = tables["sizes"]
    eps_at = max(tables["eps_train"])
    key = f"{eps_at:g}"
    diffs = tables["at_minus_standard"][key]
    std_acc = tables["standard_accuracy"][f"{tables['eps_train'][0]:g}"]
    at_acc = tables["standard_accuracy"][key]
    rob = tables["robust_accuracy_at_max_eps"]
    n_big, n_small = sizes[-1], sizes[0]
    big = diffs[-1]
    cross = crossover(sizes, diffs)
    rob_std, rob_at = rob[f"{tables['eps_train'][0]:g}"][-1], rob[key][-1]
    rob_gain = (
        seed_stats([a - b for a, b in zip(rob_at["values"], rob_std["values"], strict=True)])
        if rob_std and rob_at
        else None
    )
    lowers = _below(big)
    row_tradeoff = finding(
        "Adversarial training lowers standard accuracy (MNIST, full training set): the "
        "robust model is less accurate than the standard one while far more robust.",
        f"n = {n_big:,}: standard training {_pct(std_acc[-1])}, {norm} AT eps {eps_at:g} "
        f"{_pct(at_acc[-1])}; AT - standard {_pp(big)}"
        + (
            f"; robust accuracy at {norm} eps {eps_at:g}: {_pct(rob_std, 1)} vs {_pct(rob_at, 1)}"
            if rob_std and rob_at
            else ""
        ),
        "holds" if lowers else "does not hold",
        "the 95% interval of the paired AT - standard difference at the largest size lies below 0"
        if lowers
        else "the 95% interval of the paired AT - standard difference at the largest size "
        "does not lie below 0: no accuracy cost measured at this scale (a small CNN, "
        "a short CPU training budget)",
        key="mnist_tradeoff",
        stats={
            "size": n_big,
            "standard": std_acc[-1],
            "adversarial": at_acc[-1],
            "at_minus_standard": big,
            "robust_standard": rob_std,
            "robust_adversarial": rob_at,
            "robust_gain": rob_gain,
        },
    )

    above_sizes = [n for n, d in zip(sizes, diffs, strict=True) if _above(d)]
    below_sizes = [n for n, d in zip(sizes, diffs, strict=True) if _below(d)]
    # AT helps at some small size (interval above 0), costs accuracy at larger ones
    # (interval below 0), every helped size lies below every hurt one, and the mean curves
    # cross in between.
    helps = bool(above_sizes)
    ordered = helps and bool(below_sizes) and max(above_sizes) < min(below_sizes)
    if cross["between"]:
        a, b = cross["between"]
        where = (
            f"mean curves cross between n = {a:,} and {b:,} (log-interpolated "
            f"n ~ {cross['at_log_interpolated']:,.0f})"
        )
    else:
        where = f"no crossing for n in [{n_small:,}, {n_big:,}]"
    holds = ordered and cross["between"] is not None
    if holds:
        why = (
            f"AT - standard interval above 0 at n in {above_sizes} and below 0 at n in "
            f"{below_sizes}"
        )
        if n_small not in above_sizes:
            why += (
                f"; at the smallest size n = {n_small:,} the mean gain is "
                f"{100 * diffs[0]['mean']:+.2f} pp but its interval includes 0"
            )
    elif helps and cross["between"] is None:
        why = (
            f"AT helps at n in {above_sizes} (interval above 0) but stays at or above the "
            f"standard model up to n = {n_big:,}: the crossover was not reached in this range"
        )
    elif helps:
        why = (
            f"AT helps at n in {above_sizes}, but no larger size has an interval below 0 "
            f"(largest n = {n_big:,}: {_pp(big)}): the crossover is not significant"
        )
    else:
        why = "no size has an AT - standard interval above 0: AT never helps significantly"
    row_small = finding(
        "With few training examples adversarial training raises standard accuracy; as the "
        "training set grows the robust model falls below the standard one (the curves "
        "cross).",
        f"AT - standard: n = {n_small:,}: {_pp(diffs[0])}; n = {n_big:,}: {_pp(big)}; "
        f"{where}; interval above 0 at n in {above_sizes}, below 0 at n in {below_sizes}",
        "holds" if holds else "does not hold",
        why,
        key="small_data",
        stats={
            "sizes": sizes,
            "at_minus_standard": diffs,
            "crossover": cross,
            "sizes_interval_above_zero": above_sizes,
            "sizes_interval_below_zero": below_sizes,
        },
    )
    return [row_tradeoff, row_small], {"crossover": cross}


def _named(triple) -> dict:
    return dict(zip(("standard", "robust", "diff"), triple, strict=True))


def visuals_rows(visuals: list[dict], size: int, eps_at: float) -> tuple[list[dict], dict]:
    def paired(metric):
        s = seed_stats([v["models"]["standard"][metric] for v in visuals])
        r = seed_stats([v["models"]["robust"][metric] for v in visuals])
        d = seed_stats(
            [v["models"]["robust"][metric] - v["models"]["standard"][metric] for v in visuals]
        )
        return s, r, d

    corr = paired("gradient_image_correlation")
    mass = paired("gradient_foreground_mass")
    closer = paired("targeted_closer_to_target_mean")
    success = paired("targeted_success_rate")
    attack = visuals[0]["attack"]
    n_img = len(visuals[0]["labels"])
    models = f"the n = {size:,} models of the sweep (standard vs l_2 AT eps {eps_at:g})"
    grad_ok = _above(corr[2]) and _above(mass[2])
    row_grad = finding(
        "Robust models have interpretable input gradients: aligned with the object, while a "
        "standard model's look like noise (a figure in the paper).",
        f"proxy on {models}, {n_img} test images: correlation of |grad_x CE| with the image "
        f"{fmt_stats(corr[0], 2)} (standard) vs {fmt_stats(corr[1], 2)} (robust); share of "
        f"|gradient| on the digit {fmt_stats(mass[0], 2)} vs {fmt_stats(mass[1], 2)}",
        "holds" if grad_ok else "does not hold",
        "quantitative proxy, not the paper's visual judgement (figure gradients.png): the "
        "paired robust - standard intervals of both numbers lie above 0"
        if grad_ok
        else "quantitative proxy (figure gradients.png): the paired robust - standard "
        "interval of the correlation or of the share does not lie above 0",
        key="gradients",
        stats={
            "gradient_image_correlation": _named(corr),
            "gradient_foreground_mass": _named(mass),
        },
    )
    big_ok = _above(closer[2]) and closer[1]["mean"] > 0.5
    row_big = finding(
        "Large-eps adversarial examples of robust models look like the target class "
        "(perceptible, semantic changes), unlike a standard model's.",
        f"proxy on {models}: targeted {attack['norm']} eps {attack['eps']:g} "
        f"(PGD-{attack['num_steps']}) toward every class; share nearer the target-class mean "
        f"than the source-class mean {_pct(closer[0], 1)} (standard) vs {_pct(closer[1], 1)} "
        f"(robust); targeted success {_pct(success[0], 1)} vs {_pct(success[1], 1)}",
        "holds" if big_ok else "does not hold",
        "quantitative proxy, not the paper's visual judgement (figures "
        "adversarial_targeted_*.png): the paired robust - standard interval lies above 0 "
        "and most robust examples are nearer the target-class mean"
        if big_ok
        else "quantitative proxy (figures adversarial_targeted_*.png): the robust - standard "
        "interval does not lie above 0, or at most half the robust examples are nearer the "
        "target-class mean",
        key="large_eps_examples",
        stats={
            "targeted_closer_to_target_mean": _named(closer),
            "targeted_success_rate": _named(success),
        },
    )
    return [row_grad, row_big], {}


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------


def small_data_figure(path: str, tables: dict, norm: str) -> str:
    """Standard accuracy against n (mean, 95% interval) and the paired AT-minus-standard
    difference, with the zero line where the curves cross."""
    import matplotlib.pyplot as plt

    from advjax import plots

    sizes = tables["sizes"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))

    def band(ax, stats, label, **kw):
        m = np.asarray([s["mean"] for s in stats])
        lo = np.asarray([s["ci"][0] if s.get("ci") else s["mean"] for s in stats])
        hi = np.asarray([s["ci"][1] if s.get("ci") else s["mean"] for s in stats])
        (line,) = ax.plot(sizes, m, marker="o", ms=3, label=label, **kw)
        ax.fill_between(sizes, lo, hi, alpha=0.2, color=line.get_color())

    for e, stats in tables["standard_accuracy"].items():
        band(axes[0], stats, "standard training" if float(e) == 0 else f"{norm} AT eps {e}")
    axes[0].set_ylabel("standard test accuracy (10k MNIST test)")
    for e, stats in tables["at_minus_standard"].items():
        band(axes[1], [{**s} for s in stats], f"AT eps {e} - standard")
        axes[1].scatter([], [])
    axes[1].axhline(0.0, color="k", lw=0.8)
    axes[1].set_ylabel("paired difference (AT - standard)")
    n = len(tables["seeds"])
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("training-set size n")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Tsipras Fig. 1 at CPU scale: mean and 95% interval over {n} seeds", fontsize=9)
    fig.tight_layout()
    return plots.save(fig, path)


def _copy(src: str, out_dir: str, name: str) -> str | None:
    if not os.path.exists(src):
        return None
    shutil.copyfile(src, os.path.join(out_dir, name))
    return name


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def reproduce(out_dir: str, *, seeds, smoke: bool = False) -> dict:
    """Runs the three experiments for every seed and returns the report (see module doc)."""
    from advjax.progress import progress_bar

    seeds = [int(s) for s in seeds]
    os.makedirs(out_dir, exist_ok=True)
    toys = []
    for seed in progress_bar(seeds, desc="tsipras toy", enabled=not smoke):
        toys.append(run_toy(out_dir, seed, smoke))
    sweep = run_small_data(out_dir, seeds, smoke)
    tables = small_data_tables(sweep)
    norm = sweep["norm"]
    size = max(tables["sizes"])
    eps_at = max(tables["eps_train"])
    sweep_dir = os.path.join(out_dir, "runs", "small_data")
    visuals = []
    for seed in progress_bar(seeds, desc="tsipras visuals", enabled=not smoke):
        cells = {
            c["eps_train"]: os.path.join(sweep_dir, c["workdir"])
            for c in sweep["cells"]
            if c["size"] == size and c["seed"] == seed
        }
        visuals.append(
            run_visuals(out_dir, seed, smoke, cells[tables["eps_train"][0]], cells[eps_at])
        )

    rows, numbers = [], {}
    for make in (
        lambda: toy_rows(toys),
        lambda: small_data_rows(tables, norm),
        lambda: visuals_rows(visuals, size, eps_at),
    ):
        r, extra = make()
        rows += r
        numbers |= extra

    s0 = seeds[0]
    figures = [small_data_figure(os.path.join(out_dir, "small_data_accuracy.png"), tables, norm)]
    figures = [os.path.basename(figures[0])]
    for src, name in (
        (os.path.join(sweep_dir, "figures", "small_data_robust.png"), "small_data_robust.png"),
        (f"runs/toy_s{s0}/figures/tradeoff_bound_sweep.png", "toy_bound_sweep.png"),
        (f"runs/toy_s{s0}/figures/tradeoff_trained_weights.png", "toy_trained_weights.png"),
        (f"runs/visuals_s{s0}/figures/gradients.png", "gradients.png"),
        (f"runs/visuals_s{s0}/figures/adversarial_untargeted.png", "adversarial_untargeted.png"),
        (
            f"runs/visuals_s{s0}/figures/adversarial_targeted_standard.png",
            "adversarial_targeted_standard.png",
        ),
        (
            f"runs/visuals_s{s0}/figures/adversarial_targeted_robust.png",
            "adversarial_targeted_robust.png",
        ),
        (f"runs/visuals_s{s0}/figures/interpolation_robust.png", "interpolation_robust.png"),
    ):
        got = _copy(os.path.join(out_dir, src), out_dir, name)
        if got:
            figures.append(got)

    return {
        "findings": rows,
        "figures": figures,
        "toy": {
            "params": toys[0]["params"],
            "per_seed": [
                {"seed": s, **t["headline"], "trained": t["trained"]}
                for s, t in zip(seeds, toys, strict=True)
            ],
        },
        "small_data": {
            "norm": norm,
            "config": small_data_config(seeds, smoke).analysis.to_dict(),
            "tables": tables,
            "cells": sweep["cells"],
            **numbers,
        },
        "visuals": {
            "models": {"size": size, "eps_train": eps_at},
            "attack": visuals[0]["attack"],
            "per_seed": [
                {"seed": s, "models": v["models"]} for s, v in zip(seeds, visuals, strict=True)
            ],
        },
    }
