"""Tsipras et al. 2019 toy model end to end (``analysis.name = 'tradeoff_toy'``).

Orchestration only; the math lives in `advjax.analysis.tradeoff`. Writes
``workdir/tradeoff_toy.json`` and ``workdir/figures/*.png``:

* closed-form standard and l_inf-robust (eps = 2 eta) accuracies of the averaging
  classifier and of ``sign(x_1)`` next to Monte-Carlo estimates (exact worst-case margins);
* Theorem 1 checked on a sweep of mixture classifiers (closed form and Monte-Carlo);
* the config's adversarially trained linear model and its standard counterpart, both
  trained through `advjax.runs.train_or_load`: weight share on ``x_1``, closed-form and
  empirical (exact and PGD) accuracies, and the bound.
"""

from __future__ import annotations

import copy
import os

import jax
import jax.numpy as jnp
import numpy as np

from advjax import plots, runs
from advjax.analysis import tradeoff
from advjax.data import synthetic
from advjax.experiments import kit


def linear_weights(model) -> tuple[np.ndarray, float]:
    """Effective ``(w, b)`` of a two-logit linear model: logit(class 1) - logit(class 0)."""
    dense = model.variables["params"]["Dense_0"]
    kernel = np.asarray(dense["kernel"])
    bias = np.asarray(dense.get("bias", np.zeros(kernel.shape[1])))
    return kernel[:, 1] - kernel[:, 0], float(bias[1] - bias[0])


def _pgd_accuracy(model, x, y01, *, eps: float, key: jax.Array, batch: int = 1000) -> float:
    """Robust accuracy under the library's l_inf PGD (random start, 10 steps of eps / 4)."""
    from advjax import evaluation
    from advjax.attacks import build_attack

    attack = build_attack({"name": "pgd", "eps": eps, "step_size": eps / 4, "num_steps": 10})
    return evaluation.accuracy(
        model.model, x, y01, attack=attack, key=key, bounds=synthetic.UNBOUNDED, batch_size=batch
    )


def _model_section(model, params, x, y, eps, key) -> dict:
    w, b = linear_weights(model)
    wj = jnp.asarray(w)
    std_cf = float(tradeoff.linear_accuracy(wj, b, eta=params["eta"], p=params["p"]))
    rob_cf = float(tradeoff.linear_accuracy(wj, b, eta=params["eta"], p=params["p"], eps=eps))
    std_mc, std_se = tradeoff.empirical_linear_accuracy(wj, b, x, y, eps=0.0)
    rob_mc, rob_se = tradeoff.empirical_linear_accuracy(wj, b, x, y, eps=eps)
    y01 = np.asarray(y > 0, np.int32)
    return {
        "weight_x1": float(w[0]),
        "weak_weights_l1": float(np.abs(w[1:]).sum()),
        "weak_weights_max_abs": float(np.abs(w[1:]).max()),
        "share_on_x1": float(abs(w[0]) / np.abs(w).sum()),
        "bias": b,
        "standard_closed_form": std_cf,
        "robust_closed_form": rob_cf,
        "standard_monte_carlo": std_mc,
        "standard_se": std_se,
        "robust_monte_carlo": rob_mc,
        "robust_se": rob_se,
        "robust_pgd": _pgd_accuracy(model, np.asarray(x), y01, eps=eps, key=key),
        "bound": float(tradeoff.tsipras_bound(std_cf, p=params["p"])),
        "satisfies_bound": bool(
            rob_cf <= float(tradeoff.tsipras_bound(std_cf, p=params["p"])) + 1e-6
        ),
    }


def validate(config) -> None:
    """The toy distribution's parameters, before any compute (called by
    `advjax.configlib.validate`)."""
    synthetic.tsipras_params(config.data)


def run(config, workdir: str) -> dict:
    """Runs the toy-model analysis; returns (and writes) the report dict."""
    params = synthetic.tsipras_params(config.data)
    dim, eta, p = params["dim"], params["eta"], params["p"]
    eps = 2.0 * eta
    an = config.analysis
    key = jax.random.PRNGKey(int(config.seed))
    x, y = synthetic.sample_tsipras(
        jax.random.fold_in(key, 99), int(an.get("num_monte_carlo", 20_000)), **params
    )
    report: dict = {
        "params": {"dim": dim, "eta": eta, "p": p, "eps": eps, "num_monte_carlo": int(x.shape[0])}
    }

    fixed = {}
    for name in ("averaging", "sign_x1"):
        if name == "averaging":
            wj = jnp.asarray(tradeoff.averaging_classifier(dim))
            cf = [tradeoff.averaging_accuracy(dim=dim, eta=eta, eps=e) for e in (0.0, eps)]
        else:
            wj = jnp.asarray(tradeoff.robust_feature_classifier(dim))
            cf = [tradeoff.robust_feature_accuracy(p=p, eps=e) for e in (0.0, eps)]
        mc = [tradeoff.empirical_linear_accuracy(wj, 0.0, x, y, eps=e) for e in (0.0, eps)]
        fixed[name] = {
            "standard_closed_form": cf[0],
            "robust_closed_form": cf[1],
            "standard_monte_carlo": mc[0][0],
            "standard_se": mc[0][1],
            "robust_monte_carlo": mc[1][0],
            "robust_se": mc[1][1],
            "within_3se": bool(
                all(
                    abs(m[0] - c) <= 3 * max(m[1], 1.0 / x.shape[0])
                    for m, c in zip(mc, cf, strict=True)
                )
            ),
        }
    report["classifiers"] = fixed

    alphas = [float(a) for a in an.alphas]
    sweep = tradeoff.mixture_sweep(alphas, dim=dim, eta=eta, p=p, eps=eps)
    mc_std, mc_rob = [], []
    for a in alphas:
        wj = jnp.asarray(tradeoff.mixture_classifier(a, dim))
        mc_std.append(tradeoff.empirical_linear_accuracy(wj, 0.0, x, y)[0])
        mc_rob.append(tradeoff.empirical_linear_accuracy(wj, 0.0, x, y, eps=eps)[0])
    report["bound_sweep"] = {k: v.tolist() for k, v in sweep.items()} | {
        "standard_monte_carlo": mc_std,
        "robust_monte_carlo": mc_rob,
        "all_satisfy_bound": bool(np.all(sweep["robust"] <= sweep["bound"] + 1e-6)),
    }

    trained = {}
    variants = {"adversarial": config}
    if an.get("train_standard", True):
        std_cfg = copy.deepcopy(config)
        with std_cfg.unlocked():
            std_cfg.train.objective = type(config.train.objective)({"name": "standard"})
        variants["standard"] = std_cfg
    dataset = None
    for name, cfg in variants.items():
        model = runs.train_or_load(cfg, os.path.join(workdir, name), dataset=dataset)
        trained[name] = _model_section(model, params, x, y, eps, jax.random.fold_in(key, 7))
        trained[name]["objective"] = cfg.train.objective.to_dict()
    report["trained"] = trained
    report["headline"] = {
        "averaging_standard": fixed["averaging"]["standard_closed_form"],
        "averaging_robust": fixed["averaging"]["robust_closed_form"],
        "all_mixtures_satisfy_bound": report["bound_sweep"]["all_satisfy_bound"],
        "at_share_on_x1": trained["adversarial"]["share_on_x1"],
        "at_standard": trained["adversarial"]["standard_monte_carlo"],
        "at_robust": trained["adversarial"]["robust_monte_carlo"],
    }

    fig_dir = os.path.join(workdir, "figures")
    plots.line_plot(
        os.path.join(fig_dir, "tradeoff_bound_sweep.png"),
        alphas,
        {
            "standard (closed form)": sweep["standard"],
            "robust eps=2eta (closed form)": sweep["robust"],
            "Theorem 1 bound": np.minimum(sweep["bound"], 1.0),
            "robust (Monte-Carlo)": mc_rob,
        },
        xlabel="alpha (weight on x_1 in w_alpha)",
        ylabel="accuracy",
        title=f"Tsipras toy: d={dim}, eta=3/sqrt(d), p={p}",
    )
    _weights_figure(os.path.join(fig_dir, "tradeoff_trained_weights.png"), variants, workdir)
    path = os.path.join(workdir, "tradeoff_toy.json")
    kit.write_report(path, report)
    return report["headline"] | report


def _weights_figure(path: str, variants: dict, workdir: str) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(variants), figsize=(5 * len(variants), 3.2), squeeze=False)
    for ax, name in zip(axes[0], variants, strict=True):
        w, _ = linear_weights(runs.load_trained(os.path.join(workdir, name)))
        ax.bar(np.arange(len(w)), w, width=1.0, color="tab:blue")
        ax.bar([0], [w[0]], width=max(len(w) // 100, 1), color="tab:red", label="x_1 (robust)")
        ax.set_title(f"{name}: w_1={w[0]:.3f}, sum|w_2..|={np.abs(w[1:]).sum():.3f}", fontsize=8)
        ax.set_xlabel("feature")
        ax.legend(fontsize=7)
    return plots.save(fig, path)
