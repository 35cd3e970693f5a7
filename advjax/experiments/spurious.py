"""Adversarial vs natural distributional robustness (``analysis.name = 'spurious'``).

Moayeri, Banihashem, Feizi 2022. Orchestration only; the math is in
`advjax.analysis.spurious` and `advjax.analysis.tradeoff`. ``config.analysis.parts``
selects what runs (all three by default):

* ``theory``: population minimisers of the adversarial squared risk of the core/spurious
  Gaussian model for l_1, l_2, l_inf over an eps sweep and several scale ratios; spurious
  reliance and shifted-domain error; the paper's claims checked as booleans.
* ``finite_sample``: the linear regression model trained with PGD-based adversarial
  training through `advjax.runs.train_or_load` (``configs/moayeri_linear.py``), one run
  per norm, compared with the closed-form (population) minimiser and with the exact
  minimiser of the same sample's adversarial risk.
* ``benchmark``: the spurious-background image benchmark (`advjax.data.spurious`):
  standard and l_inf / l_2 / l_1 adversarially trained models (``analysis.variants``);
  accuracy per domain, BG-gap, worst-group accuracy, RFS under foreground/background
  noise, background-only and object-only accuracies.

Writes ``workdir/spurious.json`` and ``workdir/figures/spurious_*.png``.
"""

from __future__ import annotations

import copy
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advjax import plots, runs
from advjax.analysis import spurious as sp
from advjax.analysis import tradeoff
from advjax.attacks.ascent import default_step_size
from advjax.experiments import kit

PARTS = ("theory", "finite_sample", "benchmark")


def _get(an, key, default):
    return an.get(key, default) if an is not None else default


def _monotone(values, *, increasing: bool, tol: float = 1e-3) -> bool:
    v = np.asarray(values, float)
    d = np.diff(v)
    return (
        bool(np.all(d >= -tol) and v[-1] > v[0] + 10 * tol)
        if increasing
        else bool(np.all(d <= tol) and v[-1] < v[0] - 10 * tol)
    )


def _flat(values, tol: float = 5e-3) -> bool:
    v = np.asarray(values, float)
    return bool(np.max(np.abs(v - v[0])) <= tol)


# --------------------------------------------------------------------------------- theory


def theory_part(an, workdir: str) -> dict:
    """Population reliance sweeps and the paper's claims (i)-(iii)."""
    eps_grid = [float(e) for e in _get(an, "eps_grid", [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6])]
    pairs = [tuple(map(float, s)) for s in _get(an, "scales", [[1, 1], [1, 3], [3, 1]])]
    base = sp.CoreSpuriousModel(
        d_core=int(_get(an, "d_core", 1)),
        d_spurious=int(_get(an, "d_spurious", 1)),
        noise_core=float(_get(an, "noise_core", 0.5)),
        noise_spurious=float(_get(an, "noise_spurious", 1.0)),
    )
    num_steps = int(_get(an, "theory_steps", 6000))
    sweeps = {}
    for sc, ss in pairs:
        model = base.__class__(**(base.__dict__ | {"scale_core": sc, "scale_spurious": ss}))
        sweeps[f"{sc:g}:{ss:g}"] = sp.reliance_sweep(model, eps_grid=eps_grid, num_steps=num_steps)

    # Claims of the paper's abstract, tested where they apply: (i) l_1 and l_2 AT raise
    # reliance (at equal scales and when spurious features are larger); (ii) l_inf AT raises
    # it only when lambda_s > lambda_c; (iii) where AT raises reliance, the error under a
    # flipped spurious correlation rises with eps. ``observed`` records the other directions.
    claims: dict[str, dict] = {}
    observed: dict[str, dict] = {}
    for name, sweep in sweeps.items():
        sc, ss = map(float, name.split(":"))
        row, seen = {}, {}
        for norm in ("l1", "l2"):
            rises = _monotone(sweep[norm]["reliance"], increasing=True)
            (row if ss >= sc else seen)[f"{norm}_reliance_rises"] = rises
        rho = sweep["linf"]["reliance"]
        if ss > sc:
            row["linf_reliance_rises"] = _monotone(rho, increasing=True)
        elif ss < sc:
            row["linf_reliance_falls"] = _monotone(rho, increasing=False)
        else:
            row["linf_reliance_flat"] = _flat(rho)
        for norm, s in sweep.items():
            gap = np.asarray(s["mse_flipped"]) - np.asarray(s["mse_same"])
            seen[f"{norm}_reliance_change"] = float(s["reliance"][-1] - s["reliance"][0])
            if _monotone(s["reliance"], increasing=True):
                row[f"{norm}_flipped_error_rises"] = _monotone(s["mse_flipped"], increasing=True)
                row[f"{norm}_shift_gap_rises"] = _monotone(gap, increasing=True)
            elif _monotone(s["reliance"], increasing=False):
                seen[f"{norm}_flipped_error_falls"] = _monotone(s["mse_flipped"], increasing=False)
        claims[name] = row
        observed[name] = seen
    report = {
        "model": base.__dict__,
        "eps_grid": eps_grid,
        "sweeps": sweeps,
        "claims": claims,
        "observed": observed,
        "all_claims_hold": bool(all(v for row in claims.values() for v in row.values())),
    }
    _theory_figures(sweeps, eps_grid, os.path.join(workdir, "figures"))
    return report


def _theory_figures(sweeps: dict, eps_grid, fig_dir: str) -> None:
    import matplotlib.pyplot as plt

    for metric, label in (("reliance", "spurious reliance rho"), ("mse_flipped", "MSE, flipped")):
        fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 3.2), squeeze=False)
        for ax, (name, sweep) in zip(axes[0], sweeps.items(), strict=True):
            for norm, s in sweep.items():
                ax.plot(eps_grid, s[metric], marker="o", ms=3, label=f"{norm} AT")
            sc, ss = name.split(":")
            ax.set_title(f"lambda_c={sc}, lambda_s={ss}", fontsize=9)
            ax.set_xlabel("eps")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        plots.save(fig, os.path.join(fig_dir, f"spurious_theory_{metric}.png"))


# --------------------------------------------------------------------------- finite sample


def _regression_config(config, an) -> ml_collections.ConfigDict:
    if config.data.name == "moayeri_regression":
        return copy.deepcopy(config)
    return kit.load_sub_config(_get(an, "finite_sample_config", "configs/moayeri_linear.py"))


def finite_sample_part(config, an, workdir: str) -> dict:
    """PGD adversarial training of the linear model vs the closed-form minimisers."""
    from advjax import data

    base = _regression_config(config, an)
    norms = list(_get(an, "finite_sample_norms", ["linf", "l2", "l1"]))
    model_spec = sp.CoreSpuriousModel(
        **{
            k: base.data[k]
            for k in (
                "d_core",
                "d_spurious",
                "scale_core",
                "scale_spurious",
                "noise_core",
                "noise_spurious",
            )
        }
    )
    cov, c, vy = model_spec.moments()
    dataset = data.load_dataset(base.data)
    out = {}
    for norm in norms:
        cfg = copy.deepcopy(base)
        with cfg.unlocked():
            cfg.train.objective.attack.norm = norm
        eps = float(cfg.train.objective.attack.eps)
        trained = runs.train_or_load(cfg, os.path.join(workdir, f"moayeri_{norm}"), dataset=dataset)
        dense = trained.variables["params"]["Dense_0"]
        w = np.asarray(dense["kernel"])[:, 0]
        b = float(np.asarray(dense["bias"])[0]) if "bias" in dense else 0.0
        w_pop = np.asarray(
            tradeoff.minimize_adversarial_risk(
                cov_xx=cov, cov_xy=c, var_y=vy, norm=norm, eps_grid=[eps]
            )[0]
        )
        w_emp, b_emp = tradeoff.minimize_empirical_adversarial_risk(
            dataset.train_x, dataset.train_y, norm=norm, eps=eps
        )
        w_emp = np.asarray(w_emp)
        out[norm] = {
            "eps": eps,
            "trained_w": w.tolist(),
            "trained_b": b,
            "closed_form_w": w_pop.tolist(),
            "empirical_exact_w": w_emp.tolist(),
            "empirical_exact_b": float(b_emp),
            "max_abs_diff_vs_closed_form": float(np.max(np.abs(w - w_pop))),
            "max_abs_diff_vs_empirical_exact": float(np.max(np.abs(w - w_emp))),
            "reliance_trained": float(sp.spurious_reliance(jnp.asarray(w), model_spec)),
            "reliance_closed_form": float(sp.spurious_reliance(jnp.asarray(w_pop), model_spec)),
            "num_train": int(dataset.num_train),
        }
    return out


# ------------------------------------------------------------------------------ benchmark


def _default_variants(eps: dict, steps: int = 3) -> dict:
    def at(norm, e, steps, step_size):
        return {
            "name": "pgd_at",
            "attack": {
                "name": "pgd",
                "norm": norm,
                "eps": e,
                "step_size": step_size,
                "num_steps": steps,
                "random_start": True,
                "num_restarts": 1,
                "loss": "ce",
            },
        }

    return {
        "standard": {"name": "standard"},
        "linf": at("linf", eps["linf"], steps, default_step_size(eps["linf"], steps)),
        "l2": at("l2", eps["l2"], steps, default_step_size(eps["l2"], steps)),
        "l1": at("l1", eps["l1"], steps, default_step_size(eps["l1"], steps)),
    }


def _robust_eval_attacks(an, eps: dict) -> dict:
    """PGD-10 attack configs at the AT radii for the norms in ``analysis.robust_eval_norms``."""
    norms = list(_get(an, "robust_eval_norms", ["linf", "l2"]))
    return {k: v["attack"] for k, v in _default_variants(eps, steps=10).items() if k in norms}


def model_metrics(logits_fn, bench, *, sigmas, key, chunk_size: int = 250) -> dict:
    """Background-reliance metrics of one classifier on the benchmark's test domains."""
    doms = bench.domains
    k = int(bench.dataset.info.num_classes)
    predictors = sp.make_predictors(logits_fn)
    out: dict = {}
    correct = {}
    for name, d in doms.items():
        pred = sp.predict(logits_fn, d["x"], chunk_size=chunk_size, predictors=predictors)
        correct[name] = (pred == d["y"]).astype(np.float32)
        out[f"acc_{name}"] = float(correct[name].mean())
    out["bg_gap"] = sp.background_gap(out["acc_same"], out["acc_random"])
    rnd = doms["random"]
    groups = rnd["y"].astype(np.int64) * k + rnd["bg"]
    worst, _ = sp.worst_group_accuracy(
        correct["random"], groups, min_count=int(max(5, len(groups) // (4 * k * k)))
    )
    out["worst_group_acc"] = worst
    conflict = rnd["bg"] != rnd["y"]
    out["acc_bg_conflicting"] = (
        float(correct["random"][conflict].mean()) if conflict.any() else float("nan")
    )
    fg, bg = [], []
    for i, sigma in enumerate(sigmas):
        acc = sp.noise_accuracies(
            logits_fn,
            doms["same"]["x"],
            doms["same"]["y"],
            doms["same"]["mask"],
            jax.random.fold_in(key, i),
            sigma=sigma,
            chunk_size=chunk_size,
            predictors=predictors,
        )
        out[f"noise_sigma_{sigma:g}"] = acc
        fg.append(acc["fg_noise"])
        bg.append(acc["bg_noise"])
    # RFS from the accuracies pooled over noise levels: a level that hurts neither region
    # (a_fg = a_bg = 1, RFS 0/0) then does not mask the levels that do.
    out["acc_fg_noise"] = float(np.mean(fg))
    out["acc_bg_noise"] = float(np.mean(bg))
    out["rfs"] = float(sp.relative_foreground_sensitivity(out["acc_fg_noise"], out["acc_bg_noise"]))
    # Background alone (object erased): how often the prediction is the background's class.
    same = doms["same"]
    bg_only = np.where(same["mask"][..., None], _background_fill(same), same["x"])
    out["bg_only_predicts_bg_class"] = float(
        (
            sp.predict(logits_fn, bg_only, chunk_size=chunk_size, predictors=predictors)
            == same["bg"]
        ).mean()
    )
    # Object alone on black: accuracy from the foreground only.
    alpha = np.max(np.where(same["mask"][..., None], same["x"], 0.0), axis=-1, keepdims=True)
    fg_only = np.repeat(np.where(same["mask"][..., None], alpha, 0.0), 3, axis=-1).astype(
        np.float32
    )
    out["fg_only_acc"] = float(
        (
            sp.predict(logits_fn, fg_only, chunk_size=chunk_size, predictors=predictors)
            == same["y"]
        ).mean()
    )
    return out


def _background_fill(domain: dict) -> np.ndarray:
    """Per-image mean background colour, used to paint over the object."""
    x, m = domain["x"], domain["mask"][..., None]
    total = np.maximum((~m).sum(axis=(1, 2)), 1)
    mean = (np.where(m, 0.0, x)).sum(axis=(1, 2)) / total
    return np.broadcast_to(mean[:, None, None, :], x.shape).astype(np.float32)


def _robust_accuracy(
    model, bench, attack_cfg, *, key, num_examples: int, batch: int = 250
) -> float:
    from advjax import evaluation
    from advjax.attacks import build_attack

    d = bench.domains["same"]
    n = min(num_examples, d["x"].shape[0])
    if n == 0:
        return float("nan")
    attack = build_attack(ml_collections.ConfigDict(attack_cfg))
    return evaluation.accuracy(
        model.model, d["x"][:n], d["y"][:n], attack=attack, key=key, batch_size=batch
    )


def benchmark_part(config, an, workdir: str) -> dict:
    """Standard vs adversarially trained models on the spurious-background images."""
    from advjax.data.spurious import load_spurious_benchmark

    bench = load_spurious_benchmark(config.data)
    eps = dict(_get(an, "eps", {"linf": 0.1, "l2": 1.0, "l1": 10.0}))
    variants = _get(an, "variants", None)
    variants = (
        variants.to_dict()
        if hasattr(variants, "to_dict")
        else (variants or _default_variants(eps, steps=int(_get(an, "at_steps", 3))))
    )
    sigmas = [float(s) for s in _get(an, "noise_sigmas", [0.5, 1.0, 2.0, 4.0])]
    n_robust = int(_get(an, "robust_eval_examples", 500))
    key = jax.random.PRNGKey(int(config.seed) + 17)
    out = {
        "settings": bench.settings
        | {"num_train": bench.dataset.num_train, "num_test": bench.dataset.num_test},
        "models": {},
    }
    for name, objective in variants.items():
        cfg = copy.deepcopy(config)
        with cfg.unlocked():
            cfg.train.objective = ml_collections.ConfigDict(objective)
        model = runs.train_or_load(cfg, os.path.join(workdir, name), dataset=bench.dataset)
        metrics = model_metrics(
            model.logits_fn, bench, sigmas=sigmas, key=jax.random.fold_in(key, 1)
        )
        metrics["objective"] = objective
        if n_robust > 0:
            attacks = _robust_eval_attacks(an, eps)
            metrics["robust_acc"] = {
                a: _robust_accuracy(
                    model, bench, acfg, key=jax.random.fold_in(key, 2), num_examples=n_robust
                )
                for a, acfg in attacks.items()
            }
        out["models"][name] = metrics
    if "standard" in out["models"]:
        ref = out["models"]["standard"]
        out["vs_standard"] = {
            name: {
                "delta_rfs": m["rfs"] - ref["rfs"],
                "delta_bg_gap": m["bg_gap"] - ref["bg_gap"],
                "delta_acc_flipped": m["acc_flipped"] - ref["acc_flipped"],
                "delta_bg_only_predicts_bg_class": m["bg_only_predicts_bg_class"]
                - ref["bg_only_predicts_bg_class"],
                "relies_more_on_background": bool(
                    m["rfs"] < ref["rfs"] and m["bg_gap"] > ref["bg_gap"]
                ),
            }
            for name, m in out["models"].items()
            if name != "standard"
        }
    _benchmark_figures(bench, out, os.path.join(workdir, "figures"))
    return out


def _benchmark_figures(bench, out: dict, fig_dir: str) -> None:
    import matplotlib.pyplot as plt

    doms = bench.domains
    imgs = np.stack([doms[d]["x"][:8] for d in ("same", "random", "flipped")])
    plots.image_grid(
        os.path.join(fig_dir, "spurious_examples.png"),
        imgs,
        row_labels=["same", "random", "flipped"],
    )
    names = list(out["models"])
    metrics = ["acc_same", "acc_random", "acc_flipped", "worst_group_acc", "rfs", "bg_gap"]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [out["models"][name][m] for m in metrics]
        ax.bar(np.arange(len(metrics)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2)
    ax.set_xticklabels(metrics, fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title("Spurious-background benchmark: standard vs adversarial training", fontsize=9)
    plots.save(fig, os.path.join(fig_dir, "spurious_benchmark.png"))


def validate(config) -> None:
    """The selected parts, before any compute (called by `advjax.configlib.validate`)."""
    for p in _get(config.get("analysis", None), "parts", list(PARTS)):
        if p not in PARTS:
            raise ValueError(f"config key 'analysis.parts': got {p!r}; allowed: {list(PARTS)}")


def run(config, workdir: str) -> dict:
    """Runs the selected parts; writes ``spurious.json`` and figures; returns the report."""
    an = config.get("analysis", None)
    parts = list(_get(an, "parts", list(PARTS)))
    report: dict = {}
    if "theory" in parts:
        report["theory"] = theory_part(an, workdir)
    if "finite_sample" in parts:
        report["finite_sample"] = finite_sample_part(config, an, workdir)
    if "benchmark" in parts:
        report["benchmark"] = benchmark_part(config, an, workdir)
    headline = {}
    if "theory" in report:
        headline["theory_all_claims_hold"] = report["theory"]["all_claims_hold"]
    if "finite_sample" in report:
        headline["finite_sample_max_diff_vs_empirical_exact"] = max(
            v["max_abs_diff_vs_empirical_exact"] for v in report["finite_sample"].values()
        )
        headline["finite_sample_max_diff_vs_closed_form"] = max(
            v["max_abs_diff_vs_closed_form"] for v in report["finite_sample"].values()
        )
    if "benchmark" in report:
        for name, m in report["benchmark"]["models"].items():
            headline[f"{name}_rfs"] = m["rfs"]
            headline[f"{name}_bg_gap"] = m["bg_gap"]
            headline[f"{name}_acc_flipped"] = m["acc_flipped"]
    report["headline"] = headline
    os.makedirs(workdir, exist_ok=True)
    kit.write_report(os.path.join(workdir, "spurious.json"), report)
    return headline | report
