"""Shi et al., "Disentangling non-robust and robust components in a performance metric"
(arXiv 1906.02494): the paper's claims, measured by advjax at a CPU-sized scale.

``python launch/reproduce.py shi`` runs `advjax.experiments.information` once per seed
(config ``configs/information.py:findings``: the small MNIST CNN under standard training,
PGD-AT and TRADES, l_inf eps 0.3, 6k training images, 4 epochs) under
``results/shi/runs/seed_<s>/`` (a finished seed is reused, an unfinished one resumes),
then compares the seeds' numbers and writes the findings rows and two figures.

What the paper gives and what it does not: the metric M (the expected KL between the
predictions for two examples of different classes) and the input Fisher information
||F(x)||_F are pinned down by the authors' code; the formula that splits M into a robust
and a non-robust component is not available (only the abstract and the code were read).
advjax therefore measures the split through two proxies of its own, labelled as such in
every row: first the merging-adversary reading (R_pair: the between-class KL left after an
adversary perturbs both inputs of a pair inside the threat model to merge their
predictions), then the worst-case-input reading (R_eps: the between-class KL on each
input's KL-maximising neighbour); N = M - R in both. The paper's own split is reported as
not tested here.
"""

from __future__ import annotations

import math
import os

import ml_collections
import numpy as np

from advjax.findings import finding, fmt_stats, seed_stats

CONFIG = "configs/information.py:findings"
REGIMES = ("standard", "pgd_at", "trades")
ADVERSARIAL = ("pgd_at", "trades")
NAMES = {"standard": "standard", "pgd_at": "PGD-AT", "trades": "TRADES"}
# advjax's two proxy splits, the pairwise (merging-adversary) reading first:
# key -> (suffix of the curve keys, short name used in the rows).
PROXIES = {
    "pair": ("_pair", "proxy 1, merging adversary"),
    "worst": ("", "proxy 2, worst-case inputs"),
}


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------


def seed_config(seed: int, *, smoke: bool) -> ml_collections.ConfigDict:
    """The per-seed config: ``configs/information.py:findings`` (``,smoke`` for a run of
    seconds with a small MLP)."""
    from advjax.experiments import kit

    config = kit.load_sub_config(CONFIG + (",smoke" if smoke else ""))
    config.seed = int(seed)
    if smoke:
        config.model = ml_collections.ConfigDict(dict(name="mlp", hidden=(32,)))
        config.data.num_train = 256
        config.train.num_epochs = 1.0
        config.train.eval_every_steps = 2
        config.analysis.num_examples = 60
        config.analysis.chunk_size = 30
        config.analysis.num_pairs = 20
        config.analysis.fisher_examples = 10
        config.analysis.power_iters = 5
    return config


def run_seed(out_dir: str, seed: int, *, smoke: bool) -> dict:
    """One seed's report of `advjax.experiments.information.run`, reused when
    ``runs/seed_<s>/information.json`` was written by the same config."""
    from advjax.experiments import information, kit

    config = seed_config(seed, smoke=smoke)
    workdir = os.path.join(out_dir, "runs", f"seed_{seed}")
    report = kit.reuse_report(os.path.join(workdir, "information.json"), config)
    return report if report is not None else information.run(config, workdir)


# ---------------------------------------------------------------------------------------
# Per-seed quantities
# ---------------------------------------------------------------------------------------


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when an input is constant."""
    from advjax.experiments.information import spearman as rank_correlation

    value = rank_correlation(list(a), list(b))
    return 0.0 if value is None else value


def seed_quantities(report: dict) -> dict[str, float]:
    """The scalars of one seed's run that the findings compare across seeds.

    * ``rho_standard``: Spearman correlation of M with clean accuracy over the evaluations
      of standard training (initial model included);
    * ``rho_trained``: the same over the trained models of every regime (all evaluations
      after the first epoch, initial model excluded);
    * per proxy ``p`` (pair, worst): ``growth_N_share_p`` = (change of N) / (change of M)
      under standard training; ``N_share_p_<regime>`` = N / M of the final model;
      ``share_gap_p_<regime>`` = N / M of standard minus that of the adversarial regime;
    * ``log10_fisher_growth``: log10 of final / initial mean ||F(x)||_F, standard training;
      ``log10_fisher_ratio_<regime>``: log10 of standard / regime final ||F||_F;
    * final clean and robust accuracy and M per regime;
    * the exact identity's largest residual and the l_2 worst-case KL over its Fisher
      approximation eps^2 lambda_max / 2 (mean over regimes).
    """
    curves = report["curves"]
    std = curves["standard"]
    q: dict[str, float] = {
        "rho_standard": spearman(std["M"], std["clean_accuracy"]),
        "rho_trained": spearman(
            [m for r in REGIMES for m in curves[r]["M"][1:]],
            [a for r in REGIMES for a in curves[r]["clean_accuracy"][1:]],
        ),
    }
    for regime in REGIMES:
        c = curves[regime]
        q[f"accuracy_{regime}"] = c["clean_accuracy"][-1]
        q[f"robust_accuracy_{regime}"] = c["robust_accuracy"][-1]
        q[f"M_{regime}"] = c["M"][-1]
        q[f"fisher_{regime}"] = c["fisher_frobenius"][-1]
    for proxy, (sfx, _) in PROXIES.items():
        m, n = std["M" + sfx], std["N" + sfx]
        q[f"growth_N_share_{proxy}"] = (n[-1] - n[0]) / (m[-1] - m[0])
        for regime in REGIMES:
            c = curves[regime]
            q[f"N_share_{proxy}_{regime}"] = c["N" + sfx][-1] / c["M" + sfx][-1]
        for regime in ADVERSARIAL:
            q[f"share_gap_{proxy}_{regime}"] = (
                q[f"N_share_{proxy}_standard"] - q[f"N_share_{proxy}_{regime}"]
            )
    f = std["fisher_frobenius"]
    q["log10_fisher_growth"] = math.log10(f[-1] / f[0])
    for regime in ADVERSARIAL:
        q[f"log10_fisher_ratio_{regime}"] = math.log10(
            f[-1] / curves[regime]["fisher_frobenius"][-1]
        )
    checks = [report["final"][r]["checks"] for r in REGIMES]
    q["identity_max_residual"] = max(abs(c["kl_identity"]["residual"]) for c in checks)
    q["l2_worst_over_fisher"] = float(
        np.mean([c["l2_local_worst_kl"] / c["l2_fisher_approximation"] for c in checks])
    )
    return q


# ---------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------


def above(stats: dict, threshold: float) -> bool:
    """Whether the seeds' interval (the mean for a single seed) lies above ``threshold``."""
    low = stats["ci"][0] if stats.get("ci") else stats["mean"]
    return low > threshold


def below(stats: dict, threshold: float) -> bool:
    """Whether the seeds' interval (the mean for a single seed) lies below ``threshold``."""
    high = stats["ci"][1] if stats.get("ci") else stats["mean"]
    return high < threshold


def interval_verdict(stats: dict, threshold: float, what: str) -> tuple[str, str]:
    """``holds`` when the interval of ``what`` lies above ``threshold``, else ``does not
    hold`` (with whether it lies below or straddles it)."""
    if above(stats, threshold):
        return "holds", f"the 95% interval of {what} lies above {threshold:g}"
    if below(stats, threshold):
        return "does not hold", f"the 95% interval of {what} lies below {threshold:g}"
    return "does not hold", (
        f"the 95% interval of {what} contains {threshold:g}: not shown at this size"
    )


def all_verdict(parts: list[tuple[str, str]]) -> tuple[str, str]:
    """One verdict from several: ``holds`` only when every part holds."""
    verdict = "holds" if all(v == "holds" for v, _ in parts) else "does not hold"
    return verdict, "; ".join(w for _, w in parts)


# ---------------------------------------------------------------------------------------
# Findings
# ---------------------------------------------------------------------------------------


def findings_rows(s: dict[str, dict], *, num_evals: int) -> list[dict]:
    """The rows, one per claim of the paper in its order (the proxy readings of a claim
    in consecutive rows, the pairwise reading first), from `seed_stats` by quantity."""

    def pct(key: str) -> str:
        return fmt_stats(s[key], 1, 100, "%")

    def pick(*keys: str) -> dict:
        return {k: s[k] for k in keys}

    rows = []
    # Claim 1: M characterises generalisation performance.
    v, why = interval_verdict(s["rho_standard"], 0.0, "Spearman rho")
    rows.append(
        finding(
            "advjax's reading of 'the metric M characterises generalisation performance', "
            "within a run: during standard training the between-class KL M (the metric "
            "of the authors' code) rises with test accuracy",
            f"Spearman rho(M, clean accuracy) over {num_evals} evaluations: "
            f"{fmt_stats(s['rho_standard'], 2)}; final M {fmt_stats(s['M_standard'], 2)} "
            f"nats at accuracy {pct('accuracy_standard')}",
            v,
            why,
            key="metric_within_training",
            stats=pick("rho_standard", "M_standard", "accuracy_standard"),
        )
    )
    v, why = interval_verdict(s["rho_trained"], 0.0, "Spearman rho")
    ratio = s["M_standard"]["mean"] / s["M_trades"]["mean"]
    gap = 100 * (s["accuracy_standard"]["mean"] - s["accuracy_trades"]["mean"])
    rows.append(
        finding(
            "advjax's reading of the same claim across training regimes: among the trained "
            "models of standard training, PGD-AT and TRADES, a larger M goes with a higher "
            "test accuracy",
            f"Spearman rho(M, clean accuracy) over the trained models (3 regimes x "
            f"{num_evals - 1} epochs): {fmt_stats(s['rho_trained'], 2)}; final M standard "
            f"{fmt_stats(s['M_standard'], 2)}, PGD-AT {fmt_stats(s['M_pgd_at'], 2)}, TRADES "
            f"{fmt_stats(s['M_trades'], 2)} nats at accuracy {pct('accuracy_standard')}, "
            f"{pct('accuracy_pgd_at')}, {pct('accuracy_trades')}",
            v,
            why + f"; at the end M of standard training is {ratio:.0f}x that of TRADES while "
            f"their accuracies differ by {gap:.1f} points",
            key="metric_across_regimes",
            stats=pick(
                "rho_trained",
                *(f"M_{r}" for r in REGIMES),
                *(f"accuracy_{r}" for r in REGIMES),
            ),
        )
    )
    # Claim 2: M splits into an information-theoretic non-robust and a robust component.
    rows.append(
        finding(
            "M splits into an information-theoretic non-robust component (responsible for "
            "adversarial behaviour) and a robust component: the paper's split",
            "not computed (what advjax checks instead: E KL(p_x||p_x') = I(X; Y_hat) + "
            f"dispersion to |residual| <= {s['identity_max_residual']['mean']:.1e}; l_2 "
            "worst-case KL / (eps^2 lambda_max(F) / 2) = "
            f"{fmt_stats(s['l2_worst_over_fisher'], 2)}, the local Fisher form)",
            "not tested here",
            "the paper's formula for the split is not available (only its abstract and its "
            "code, which computes M and ||F||_F but no split); the rows below use advjax's "
            "two proxy splits instead",
            key="paper_split",
            stats=pick("identity_max_residual", "l2_worst_over_fisher"),
        )
    )
    # Claim 3: standard training raises M mainly through the non-robust component.
    for proxy, (_, name) in PROXIES.items():
        key = f"growth_N_share_{proxy}"
        v, why = interval_verdict(s[key], 0.5, "the share of M's growth carried by N")
        rows.append(
            finding(
                f"advjax's {name}, of 'standard training raises M mainly through the "
                "non-robust component'",
                f"change of N / change of M over standard training: {fmt_stats(s[key], 3)}; "
                f"final N / M {fmt_stats(s[f'N_share_{proxy}_standard'], 3)}",
                v,
                why,
                key=f"standard_nonrobust_{proxy}",
                stats=pick(key, f"N_share_{proxy}_standard"),
            )
        )
    v, why = interval_verdict(s["log10_fisher_growth"], 0.0, "log10(final / initial)")
    rows.append(
        finding(
            "advjax's reading through the input Fisher information (the authors' code's "
            "probe of the non-robust component): standard training raises mean ||F(x)||_F",
            f"log10(final / initial mean ||F||_F): {fmt_stats(s['log10_fisher_growth'], 2)}",
            v,
            why,
            key="standard_fisher",
            stats=pick("log10_fisher_growth", "fisher_standard"),
        )
    )
    # Claim 4: adversarial training stops the model from using the non-robust component.
    for proxy, (_, name) in PROXIES.items():
        parts = [
            interval_verdict(
                s[f"share_gap_{proxy}_{r}"], 0.0, f"N/M of standard minus N/M of {NAMES[r]}"
            )
            for r in ADVERSARIAL
        ]
        v, why = all_verdict(parts)
        rows.append(
            finding(
                f"advjax's {name}, of 'adversarial training (PGD-AT, TRADES) keeps the "
                "model from separating classes through the non-robust component': a "
                "smaller non-robust share N / M than standard training",
                "final N / M: "
                + ", ".join(
                    f"{NAMES[r]} {fmt_stats(s[f'N_share_{proxy}_{r}'], 3)}" for r in REGIMES
                ),
                v,
                why,
                key=f"adversarial_nonrobust_{proxy}",
                stats=pick(
                    *(f"N_share_{proxy}_{r}" for r in REGIMES),
                    *(f"share_gap_{proxy}_{r}" for r in ADVERSARIAL),
                ),
            )
        )
    parts = [
        interval_verdict(s[f"log10_fisher_ratio_{r}"], 0.0, f"log10(standard / {NAMES[r]} ||F||_F)")
        for r in ADVERSARIAL
    ]
    v, why = all_verdict(parts)
    orders = min(s[f"log10_fisher_ratio_{r}"]["mean"] for r in ADVERSARIAL)
    rows.append(
        finding(
            "advjax's reading through the input Fisher information: adversarial training "
            "ends with a lower mean ||F(x)||_F than standard training (1-2 orders of "
            "magnitude expected from the authors' code)",
            "log10(standard / regime ||F||_F): "
            + ", ".join(
                f"{NAMES[r]} {fmt_stats(s[f'log10_fisher_ratio_{r}'], 2)}" for r in ADVERSARIAL
            )
            + "; robust accuracy (PGD-10, eps 0.3): "
            + ", ".join(f"{NAMES[r]} {pct(f'robust_accuracy_{r}')}" for r in REGIMES),
            v,
            why + f"; the smaller ratio is 10^{orders:.2f}",
            key="adversarial_fisher",
            stats=pick(
                *(f"log10_fisher_ratio_{r}" for r in ADVERSARIAL),
                *(f"fisher_{r}" for r in REGIMES),
                *(f"robust_accuracy_{r}" for r in REGIMES),
            ),
        )
    )
    # Claim 5: a direction for accuracy and robustness together.
    rows.append(
        finding(
            "raising M through the robust component is a possible route to good standard "
            "accuracy and adversarial robustness together",
            "not measured",
            "not tested here",
            "a direction the paper proposes, not a measured result; the Fisher/KL "
            "objective of the authors' code (configs/information.py:fisher) is not part of "
            "this run",
            key="direction",
        )
    )
    return rows


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------


def _mean_std(series: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(series, dtype=float)
    return a.mean(0), (a.std(0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1]))


def draw_figures(reports: list[dict], out_dir: str) -> list[str]:
    """``shi_curves.png``: accuracy, M, the two proxies' non-robust shares and ||F||_F
    against epoch (mean and +-1 std band over seeds, per regime); ``shi_shares.png``: the
    final non-robust share N / M per regime under both proxies (mean and 95% interval)."""
    from advjax import plots

    panels = [
        ("clean_accuracy", "clean accuracy", False),
        ("robust_accuracy", "robust accuracy (PGD-10, eps 0.3)", False),
        ("M", "M = between-class KL (nats)", True),
        ("share_pair", "N_pair / M (advjax proxy 1, merging adversary)", False),
        ("share_worst", "N_eps / M (advjax proxy 2, worst-case inputs)", False),
        ("fisher_frobenius", "mean ||F(x)||_F", True),
    ]
    fig, axes = plots.plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (key, label, logy) in zip(axes.ravel(), panels, strict=True):
        for i, regime in enumerate(REGIMES):
            series = []
            for rep in reports:
                c = rep["curves"][regime]
                if key.startswith("share_"):
                    sfx = PROXIES[key.removeprefix("share_")][0]
                    series.append([n / m for n, m in zip(c["N" + sfx], c["M" + sfx], strict=True)])
                else:
                    series.append(c[key])
            epochs = np.asarray(reports[0]["curves"][regime]["epoch"])
            mean, std = _mean_std(series)
            start = 1 if key.startswith("share_") else 0  # N / M of the initial model: noise
            ax.plot(epochs[start:], mean[start:], marker="o", ms=3, color=f"C{i}",
                    label=NAMES[regime])  # fmt: skip
            ax.fill_between(epochs[start:], (mean - std)[start:], (mean + std)[start:],
                            color=f"C{i}", alpha=0.2)  # fmt: skip
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if logy:
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Shi et al. at MNIST scale: mean and +-1 std over {len(reports)} seeds")
    fig.tight_layout()
    paths = [plots.save(fig, os.path.join(out_dir, "shi_curves.png"))]

    fig, ax = plots.plt.subplots(figsize=(7, 4))
    width = 0.38
    for j, (proxy, (_, name)) in enumerate(PROXIES.items()):
        means, lows, highs = [], [], []
        for regime in REGIMES:
            st = seed_stats([seed_quantities(r)[f"N_share_{proxy}_{regime}"] for r in reports])
            lo, hi = st["ci"] if st["ci"] else (st["mean"], st["mean"])
            means.append(st["mean"])
            lows.append(st["mean"] - lo)
            highs.append(hi - st["mean"])
        xs = np.arange(len(REGIMES)) + (j - 0.5) * width
        ax.bar(xs, means, width, yerr=[lows, highs], capsize=4, label=f"advjax {name}")
    ax.set_xticks(np.arange(len(REGIMES)), [NAMES[r] for r in REGIMES])
    ax.set_ylabel("final non-robust share N / M")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"Non-robust share of M after training (95% interval, {len(reports)} seeds)",
                 fontsize=10)  # fmt: skip
    paths.append(plots.save(fig, os.path.join(out_dir, "shi_shares.png")))
    return [os.path.relpath(p, out_dir) for p in paths]


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def reproduce(out_dir: str, *, seeds, smoke: bool = False) -> dict:
    """Runs (or reuses) one information experiment per seed, compares the seeds and
    writes the figures; returns the report for ``results/shi/results.json``."""
    from advjax.progress import progress_bar

    reports = []
    for seed in progress_bar(list(seeds), desc="shi seeds", unit="seed"):
        reports.append(run_seed(out_dir, int(seed), smoke=smoke))
    per_seed = [seed_quantities(r) for r in reports]
    stats = {k: seed_stats([q[k] for q in per_seed]) for k in per_seed[0]}
    num_evals = len(reports[0]["curves"]["standard"]["epoch"])
    first = reports[0]
    return {
        "config": CONFIG + (",smoke" if smoke else ""),
        "setup": {
            "regimes": first["regimes"],
            "threat": first["threat"],
            "attack": first["attack"],
            "num_examples": first["num_examples"],
            "evaluations_per_run": num_evals,
            "proxies": first["decomposition"],
            "note": "the robust / non-robust splits are advjax's proxies; the paper's "
            "formula is not available",
        },
        "findings": findings_rows(stats, num_evals=num_evals),
        "figures": draw_figures(reports, out_dir),
        "stats": stats,
        "per_seed": {str(s): q for s, q in zip(seeds, per_seed, strict=True)},
        "run_seconds": {str(r["seed"]): r["seconds"]["total"] for r in reports},
    }
