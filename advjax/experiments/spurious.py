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
import dataclasses
import functools
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
from advjax.progress import progress_bar

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

# The paper's theoretical claims (abstract of arXiv 2209.07592), as advjax tests them on the
# reconstructed data model, each checked for every scale pair of the sweep.
THEORY_CLAIMS = {
    "i": "l_1 and l_2 adversarial training increase reliance on spurious features",
    "ii": "l_inf adversarial training increases spurious reliance only when the spurious "
    "scale exceeds the core scale",
    "iii": "where adversarial training increases spurious reliance, it raises the error "
    "under a flipped spurious correlation (and the gap to the unshifted error)",
}


def _pair_name(sc: float, ss: float) -> str:
    return f"{sc:g}:{ss:g}"


def theory_claims(sweeps: dict, *, noise_core: float, noise_spurious: float) -> dict:
    """Claims (i)-(iii) checked on population reliance sweeps, per scale pair.

    Args:
      sweeps: ``{"<scale_core>:<scale_spurious>": reliance_sweep(...)}``.
      noise_core, noise_spurious: the model's noise levels (for the l_2 closed-form
        prediction `advjax.analysis.spurious.l2_reliance_direction`).

    Returns:
      ``{claim: {"claim", "holds", "failing", "per_pair": {pair: {...}}}}`` for claims
      ``"i"``, ``"ii"``, ``"iii"``; ``failing`` lists ``"<pair> <norm>"`` entries where the
      claim's prediction is not met.
    """
    out = {k: {"claim": v, "per_pair": {}, "failing": []} for k, v in THEORY_CLAIMS.items()}
    for name, sweep in sweeps.items():
        sc, ss = map(float, name.split(":"))
        model = sp.CoreSpuriousModel(
            scale_core=sc,
            scale_spurious=ss,
            noise_core=noise_core,
            noise_spurious=noise_spurious,
        )
        # (i): l_1 and l_2 AT raise reliance, at every scale pair.
        row = {}
        for norm in ("l1", "l2"):
            rho = sweep[norm]["reliance"]
            rises = _monotone(rho, increasing=True)
            row[norm] = {"rises": rises, "start": rho[0], "end": rho[-1]}
            if not rises:
                out["i"]["failing"].append(f"{name} {norm}")
        row["l2_closed_form_direction"] = sp.l2_reliance_direction(model)
        out["i"]["per_pair"][name] = row
        # (ii): l_inf AT raises reliance iff lambda_s > lambda_c (flat at equal scales,
        # and, as the converse, falling when lambda_s < lambda_c).
        rho = sweep["linf"]["reliance"]
        if ss > sc:
            expected, ok = "rises", _monotone(rho, increasing=True)
        elif ss < sc:
            expected, ok = "falls", _monotone(rho, increasing=False)
        else:
            expected, ok = "flat", _flat(rho)
        out["ii"]["per_pair"][name] = {
            "expected": expected,
            "ok": ok,
            "start": rho[0],
            "end": rho[-1],
        }
        if not ok:
            out["ii"]["failing"].append(f"{name} linf")
        # (iii): wherever reliance rises, the flipped-domain error and the shift gap rise.
        row = {}
        for norm, s in sweep.items():
            gap = np.asarray(s["mse_flipped"]) - np.asarray(s["mse_same"])
            entry = {
                "reliance": "rises"
                if _monotone(s["reliance"], increasing=True)
                else "falls"
                if _monotone(s["reliance"], increasing=False)
                else "flat",
                "mse_flipped_start": s["mse_flipped"][0],
                "mse_flipped_end": s["mse_flipped"][-1],
                "shift_gap_start": float(gap[0]),
                "shift_gap_end": float(gap[-1]),
            }
            if entry["reliance"] == "rises":
                entry["flipped_error_rises"] = _monotone(s["mse_flipped"], increasing=True)
                entry["shift_gap_rises"] = _monotone(gap, increasing=True)
                if not (entry["flipped_error_rises"] and entry["shift_gap_rises"]):
                    out["iii"]["failing"].append(f"{name} {norm}")
            row[norm] = entry
        out["iii"]["per_pair"][name] = row
    for v in out.values():
        v["holds"] = not v["failing"]
    return out


def theory_part(an, workdir: str) -> dict:
    """Population reliance sweeps and the paper's claims (i)-(iii), per scale pair."""
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
    for sc, ss in progress_bar(pairs, desc="theory: scale pairs"):
        model = dataclasses.replace(base, scale_core=sc, scale_spurious=ss)
        sweep = sp.reliance_sweep(model, eps_grid=eps_grid, num_steps=num_steps)
        # The same adversarial risk minimised without the spurious features: whether a
        # spurious correlation that persists at test time lowers the adversarial risk.
        for norm, row in sweep.items():
            row["adv_risk_core_only"] = sp.core_only_adversarial_risk(
                model, norm=norm, eps_grid=eps_grid, num_steps=num_steps
            )
        sweeps[_pair_name(sc, ss)] = sweep
    claims = theory_claims(sweeps, noise_core=base.noise_core, noise_spurious=base.noise_spurious)
    report = {
        "model": dataclasses.asdict(base),
        "data_model": "advjax's reconstruction (the paper's exact model and theorems were "
        "not recovered): y ~ N(0, 1), x_c = lambda_c (y + sigma_c n_c), "
        "x_s = lambda_s (y + sigma_s n_s); reliance = scale-weighted share of |w| on x_s",
        "eps_grid": eps_grid,
        "sweeps": sweeps,
        "claims": claims,
        "all_claims_hold": bool(all(v["holds"] for v in claims.values())),
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
    base = kit.load_sub_config(_get(an, "finite_sample_config", "configs/moayeri_linear.py"))
    # The regression sample and the initialisation follow the experiment's seed.
    with base.unlocked():
        base.seed = int(config.seed)
        base.data.seed = int(config.seed)
    return base


_MODEL_KEYS = (
    "d_core",
    "d_spurious",
    "scale_core",
    "scale_spurious",
    "noise_core",
    "noise_spurious",
)


def _shifted_mse_with_bias(model_spec, weights, bias: float, sign: float) -> float:
    # The intercept adds bias^2: E[y - w^T x] = 0 in every domain.
    return float(sp.shifted_mse(weights, model_spec, spurious_sign=sign)) + bias**2


def finite_sample_part(config, an, workdir: str) -> dict:
    """PGD adversarial training of the linear model vs least squares and the closed form.

    For every scale pair of ``analysis.finite_sample_scales`` and norm of
    ``analysis.finite_sample_norms``: trains ``w^T x + b`` with squared-loss PGD AT on one
    sample (``configs/moayeri_linear.py``), and compares its spurious reliance with that of
    least squares on the same sample (eps = 0), with the closed-form population minimiser
    and with the exact minimiser of the sample's adversarial risk.

    Returns:
      ``{"<scale_core>:<scale_spurious>": {norm: {...}}}``.
    """
    from advjax import data

    base = _regression_config(config, an)
    norms = list(_get(an, "finite_sample_norms", ["linf", "l2", "l1"]))
    pairs = [
        tuple(map(float, s))
        for s in _get(
            an,
            "finite_sample_scales",
            [[float(base.data.scale_core), float(base.data.scale_spurious)]],
        )
    ]
    out: dict = {}
    for sc, ss in pairs:
        pair_cfg = copy.deepcopy(base)
        with pair_cfg.unlocked():
            pair_cfg.data.scale_core, pair_cfg.data.scale_spurious = sc, ss
        model_spec = sp.CoreSpuriousModel(
            **{k: type(getattr(sp.CoreSpuriousModel, k))(pair_cfg.data[k]) for k in _MODEL_KEYS}
        )
        cov, c, vy = model_spec.moments()
        dataset = data.load_dataset(pair_cfg.data)
        # Least squares with an intercept on the same sample: the eps = 0 reference.
        x_tr = np.asarray(dataset.train_x, np.float64)
        design = np.concatenate([x_tr, np.ones((x_tr.shape[0], 1))], axis=1)
        sol = np.linalg.lstsq(design, np.asarray(dataset.train_y, np.float64), rcond=None)[0]
        w_ols, b_ols = sol[:-1], float(sol[-1])
        rho_ols = float(sp.spurious_reliance(jnp.asarray(w_ols), model_spec))
        rows = {}
        for norm in norms:
            cfg = copy.deepcopy(pair_cfg)
            with cfg.unlocked():
                cfg.train.objective.attack.norm = norm
            eps = float(cfg.train.objective.attack.eps)
            run_dir = os.path.join(workdir, f"moayeri_{sc:g}x{ss:g}_{norm}")
            trained = runs.train_or_load(cfg, run_dir, dataset=dataset)
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
            rho = float(sp.spurious_reliance(jnp.asarray(w), model_spec))

            mse = functools.partial(_shifted_mse_with_bias, model_spec)
            rows[norm] = {
                "eps": eps,
                "trained_w": w.tolist(),
                "trained_b": b,
                "closed_form_w": w_pop.tolist(),
                "empirical_exact_w": w_emp.tolist(),
                "empirical_exact_b": float(b_emp),
                "least_squares_w": w_ols.tolist(),
                "max_abs_diff_vs_closed_form": float(np.max(np.abs(w - w_pop))),
                "max_abs_diff_vs_empirical_exact": float(np.max(np.abs(w - w_emp))),
                "reliance_least_squares": rho_ols,
                "reliance_trained": rho,
                "reliance_change": rho - rho_ols,
                "reliance_closed_form": float(sp.spurious_reliance(jnp.asarray(w_pop), model_spec)),
                "mse_flipped_least_squares": mse(w_ols, b_ols, -1.0),
                "mse_flipped_trained": mse(w, b, -1.0),
                "mse_same_trained": mse(w, b, 1.0),
                "num_train": int(dataset.num_train),
            }
        out[_pair_name(sc, ss)] = rows
    return out


# ------------------------------------------------------------------------------ benchmark


def _default_variants(eps: dict, steps: int = 3, norms=("linf", "l2", "l1")) -> dict:
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

    out = {"standard": {"name": "standard"}}
    for norm in norms:
        out[norm] = at(norm, eps[norm], steps, default_step_size(eps[norm], steps))
    return out


def _robust_eval_attacks(an, eps: dict) -> dict:
    """PGD-10 attack configs at the AT radii for the norms in ``analysis.robust_eval_norms``."""
    norms = list(_get(an, "robust_eval_norms", ["linf", "l2"]))
    return {
        k: v["attack"]
        for k, v in _default_variants(eps, steps=10, norms=norms).items()
        if k in norms
    }


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
    model, bench, attack_cfg, *, key, num_examples: int, batch: int = 250, domain: str = "same"
) -> float:
    from advjax import evaluation
    from advjax.attacks import build_attack

    d = bench.domains[domain]
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
        else (
            variants
            or _default_variants(
                eps,
                steps=int(_get(an, "at_steps", 3)),
                norms=tuple(_get(an, "at_norms", ("linf", "l2", "l1"))),
            )
        )
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
            # Robust accuracy where the background correlation holds ('same') and where it
            # is broken ('random'): spurious features that persist at test time may help.
            attacks = _robust_eval_attacks(an, eps)
            by_domain = {
                dom: {
                    a: _robust_accuracy(
                        model,
                        bench,
                        acfg,
                        key=jax.random.fold_in(key, 2),
                        num_examples=n_robust,
                        domain=dom,
                    )
                    for a, acfg in attacks.items()
                }
                for dom in _get(an, "robust_eval_domains", ["same"])
            }
            metrics["robust_acc_by_domain"] = by_domain
            metrics["robust_acc"] = by_domain.get("same", next(iter(by_domain.values())))
        out["models"][name] = metrics
    if "standard" in out["models"]:
        ref = out["models"]["standard"]
        out["vs_standard"] = {
            name: {
                "delta_rfs": m["rfs"] - ref["rfs"],
                "delta_bg_gap": m["bg_gap"] - ref["bg_gap"],
                "delta_acc_flipped": m["acc_flipped"] - ref["acc_flipped"],
                "delta_acc_random": m["acc_random"] - ref["acc_random"],
                "delta_worst_group_acc": m["worst_group_acc"] - ref["worst_group_acc"],
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
        for claim, v in report["theory"]["claims"].items():
            headline[f"theory_claim_{claim}_holds"] = v["holds"]
            headline[f"theory_claim_{claim}_failing"] = v["failing"]
    if "finite_sample" in report:
        rows = [v for pair in report["finite_sample"].values() for v in pair.values()]
        headline["finite_sample_max_diff_vs_empirical_exact"] = max(
            v["max_abs_diff_vs_empirical_exact"] for v in rows
        )
        headline["finite_sample_max_diff_vs_closed_form"] = max(
            v["max_abs_diff_vs_closed_form"] for v in rows
        )
    if "benchmark" in report:
        for name, m in report["benchmark"]["models"].items():
            headline[f"{name}_rfs"] = m["rfs"]
            headline[f"{name}_bg_gap"] = m["bg_gap"]
            headline[f"{name}_acc_flipped"] = m["acc_flipped"]
    report["headline"] = headline
    report["config_hash"] = kit.config_hash(config.to_dict())
    os.makedirs(workdir, exist_ok=True)
    kit.write_report(os.path.join(workdir, "spurious.json"), report)
    return headline | report
