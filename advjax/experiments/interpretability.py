"""Interpretability and adversarial robustness (Noack et al. 2021): the MNIST comparison.

Trains (or restores) every model of ``config.analysis.models`` through the normal training
loop, in order: the teachers first (standard and l_2 PGD-AT), then the gradient-norm
baselines (input-gradient / double backprop, Jacobian) and the interpretation-regularised
(IR) students, whose SmoothGrad targets come from a teacher. Each model is then evaluated
with the paper's attacks (PGD-40 with random start, l_2 and l_inf budgets; the l_inf rows
are the cross-norm test for targets from an l_2 teacher), optionally with the attack
ensemble at the main eps, and its gradients are scored for interpretability: cosine to the
teachers' SmoothGrad maps and the share of |gradient| mass on the digit.

Writes ``workdir/interpretability.json`` and ``interpretability.md`` (results table),
``workdir/figures/*.png`` (saliency grids, cosine during training, robust accuracy vs eps),
and keeps each model's run in ``workdir/models/<name>/`` and the teacher maps in
``workdir/targets/``, so a second call reuses everything.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advjax import data, evaluation, plots, runs, saliency
from advjax.attacks.ascent import default_step_size
from advjax.compile import jit
from advjax.experiments import kit
from advjax.objectives import interpretation

NAME = "interpretability"


def _model_order(a) -> list[str]:
    """Teachers first (their maps are other models' targets), then the configured order."""
    names = list(a.models.keys())
    teachers = [n for n in names if n in _teachers(a).values()]
    return teachers + [n for n in names if n not in teachers]


def _teachers(a) -> dict[str, str]:
    """IR model name -> teacher model name."""
    return {n: m.teacher for n, m in a.models.items() if "teacher" in m}


def _targets_path(workdir: str, teacher_dir: str, split: str, tcfg: dict) -> str:
    tag = kit.config_hash(
        {k: tcfg[k] for k in ("method", "num_samples", "sigma", "include_clean", "seed")}
    )
    name = os.path.basename(teacher_dir)
    return os.path.join(workdir, "targets", f"{name}_{split}_{tag}.npz")


def _training_tag(sub: ml_collections.ConfigDict) -> str:
    """Hash of what determines a trained model, so changed settings get a fresh run folder."""
    d = sub.to_dict()
    for key in ("eval", "analysis", "checkpoint"):
        d.pop(key, None)
    for key in ("progress", "log_every_steps"):
        d["train"].pop(key, None)
    return kit.config_hash(d)[:8]


def _sub_configs(config, workdir: str) -> dict[str, tuple[ml_collections.ConfigDict, str]]:
    """Training config and run folder of every model, teachers first.

    A model's config is the shared sections plus its objective; its folder is
    ``workdir/models/<name>-<hash of the training config>``.
    """
    a = config.analysis
    out: dict[str, tuple[ml_collections.ConfigDict, str]] = {}
    for name in _model_order(a):
        sub = ml_collections.ConfigDict(config.to_dict())
        sub.analysis = ml_collections.ConfigDict({"name": ""})
        objective = a.models[name].to_dict()
        teacher = objective.pop("teacher", None)
        if teacher is not None:
            if teacher not in out:
                raise ValueError(
                    f"config key 'analysis.models.{name}.teacher': got {teacher!r}; "
                    f"allowed: {[n for n in a.models.keys() if n != name]}"
                )
            tcfg = {**interpretation.TARGET_DEFAULTS, **objective.get("targets", {})}
            tcfg["teacher_workdir"] = out[teacher][1]
            tcfg["path"] = _targets_path(workdir, out[teacher][1], "train", tcfg)
            objective["targets"] = tcfg
        sub.train.objective = ml_collections.ConfigDict(objective)
        out[name] = (sub, os.path.join(workdir, "models", f"{name}-{_training_tag(sub)}"))
    return out


def validate(config) -> None:
    """Every model's training config (teachers named, objectives built), before any
    compute (called by `advjax.configlib.validate`)."""
    from advjax import configlib

    for name, (sub, _) in _sub_configs(config, "").items():
        try:
            configlib.validate(sub)
        except ValueError as err:
            raise ValueError(f"analysis.models.{name}: {err}") from None


@functools.lru_cache(maxsize=8)
def _gradient_fn(module):
    """Jitted true-class logit gradients for any variables of ``module`` (compiled once)."""

    @jit
    def fn(variables, x, y):
        return saliency.gradient(lambda z: module.apply(variables, z, train=False), x, y)

    return fn


def _gradients(model: runs.TrainedModel, x: np.ndarray, y: np.ndarray, batch_size: int):
    fn = _gradient_fn(model.module)
    return saliency.map_in_batches(
        lambda xb, yb: fn(model.variables, xb, yb), x, y, batch_size=min(batch_size, len(x))
    )


def _training_curves(model_dir: str) -> dict[str, list[float]]:
    """First and last logged value of the alignment metrics (training batches and test)."""
    out = {}
    records = runs.read_metrics(model_dir)
    keys = sorted({k for r in records for k in r if k == "cos_target" or k.startswith("test_")})
    for k in keys:
        values = [r[k] for r in records if k in r]
        out[k] = [values[0], values[-1]]
    return out


@functools.partial(jit, static_argnames=("threshold",))
def _alignment(grads, x, targets: dict, *, threshold: float) -> dict:
    out = {"fg_mass": jnp.mean(saliency.foreground_mass(grads, x, threshold=threshold))}
    for teacher, t in targets.items():
        out[f"cos_{teacher}"] = jnp.mean(saliency.cosine_similarity(grads, t))
    return out


def _interpretability_metrics(
    grads: np.ndarray, x: np.ndarray, targets: dict[str, np.ndarray], threshold: float
) -> dict[str, float]:
    n = len(grads)
    out = _alignment(
        jnp.asarray(grads),
        jnp.asarray(x[:n]),
        {k: jnp.asarray(t[:n]) for k, t in targets.items()},
        threshold=float(threshold),
    )
    return {k: float(v) for k, v in out.items()}


def _test_targets(model, teacher, x, y, tcfg, path, bounds) -> np.ndarray:
    """Teacher maps on the metric subset of the test set (cached beside the train targets)."""
    fingerprint = interpretation.data_fingerprint(x, y)
    if os.path.exists(path):
        with np.load(path) as f:
            if str(f["fingerprint"]) == fingerprint:
                return np.asarray(f["target"])
    t = interpretation.compute_targets(
        model.logits_fn,
        x,
        y,
        method=tcfg["method"],
        num_samples=tcfg["num_samples"],
        sigma=tcfg["sigma"],
        include_clean=tcfg["include_clean"],
        chunk_size=tcfg["chunk_size"],
        batch_size=tcfg["batch_size"],
        seed=tcfg["seed"] + 1,
        bounds=bounds,
    )
    interpretation.save_targets(
        path, t, fingerprint=fingerprint, settings=dict(tcfg, teacher=teacher)
    )
    return t


def _evaluate(model, x, y, eval_cfg, cache: str, key) -> dict:
    """`advjax.evaluation.evaluate`, cached per (eval config, checkpoint step)."""
    tag = kit.config_hash({"eval": eval_cfg.to_dict(), "step": model.step, "n": len(x)})
    if os.path.exists(cache):
        with open(cache) as f:
            cached = json.load(f)
        if cached.get("tag") == tag:
            return cached["result"]
    result = evaluation.evaluate(
        eval_cfg, model.model, x, y, key=key, bounds=tuple(model.info.bounds)
    )
    kit.write_report(cache, {"tag": tag, "result": result})
    return result


def _ensemble_eval_config(config) -> ml_collections.ConfigDict | None:
    """The ensemble evaluation at the main eps, if configured and the attack is available."""
    a = config.analysis
    if not a.get("ensemble") or not len(a.ensemble.keys()):
        return None
    from advjax.attacks import ATTACKS

    try:
        for acfg in a.ensemble.values():
            ATTACKS.get(acfg.name)
    except (ImportError, AttributeError) as err:
        print(f"{NAME}: ensemble evaluation skipped ({err})")
        return None
    cfg = ml_collections.ConfigDict(config.eval.to_dict())
    attacks = a.ensemble.to_dict()
    # The PGD attacks at the same eps join, so the per-example worst case of each threat
    # model is reported too.
    for with_pgd in _ensemble_with(a):
        if with_pgd not in config.eval.attacks:
            raise ValueError(
                f"config key 'analysis.ensemble_with': got {with_pgd!r}; allowed: "
                f"{list(config.eval.attacks.keys())}"
            )
        attacks[with_pgd] = config.eval.attacks[with_pgd].to_dict()
    cfg.attacks = ml_collections.ConfigDict(attacks)
    cfg.num_examples = int(a.get("ensemble_examples", 0) or cfg.num_examples)
    cfg.eps_grid = []
    cfg.sanity_checks = False
    return cfg


def _ensemble_with(a) -> list[str]:
    """``analysis.ensemble_with``: one PGD attack name, a list of them, or none."""
    value = a.get("ensemble_with", "") or []
    return [value] if isinstance(value, str) else list(value)


def threat_model_key(norm: str, eps: float) -> str:
    """``"l2_1p5"`` for (l2, 1.5): the name of a threat model in rows and tables."""
    return f"{norm}_{eps:g}".replace(".", "p")


def _ordering(rows: dict[str, dict], attack_names: list[str], a) -> dict:
    """Checks Noack et al.'s ordering IR(robust teacher) > gradient-norm baselines > standard."""
    roles = a.roles.to_dict()
    ir_robust, baselines, standard = roles["ir_robust"], roles["baselines"], roles["standard"]
    if not baselines or not all(n in rows for n in [ir_robust, standard, *baselines]):
        return {"checked": False}
    per_attack = {}
    for attack in attack_names:
        acc = {n: rows[n]["robust"][attack] for n in rows}
        best_base = max(acc[b] for b in baselines)
        worst_base = min(acc[b] for b in baselines)
        per_attack[attack] = {
            "ir_robust_above_baselines": acc[ir_robust] > best_base,
            "baselines_above_standard": worst_base > acc[standard],
            "ir_robust_above_standard": acc[ir_robust] > acc[standard],
        }
    mean = {n: float(np.mean([rows[n]["robust"][k] for k in attack_names])) for n in rows}
    return {
        "checked": True,
        "roles": roles,
        "mean_robust_accuracy": mean,
        "per_attack": per_attack,
        "holds_on_mean": bool(
            mean[ir_robust] > max(mean[b] for b in baselines) > mean[standard]
            and min(mean[b] for b in baselines) > mean[standard]
        ),
        "holds_on_every_attack": bool(all(all(v.values()) for v in per_attack.values())),
    }


def _markdown(rows: dict[str, dict], attacks: dict[str, dict], report: dict) -> str:
    names = list(attacks)
    head = ["model", "objective", "clean"] + [
        f"{attacks[n]['norm']} {attacks[n]['eps']:g}" for n in names
    ]
    extra = sorted({k for r in rows.values() for k in r.get("ensemble", {}).get("worst_case", {})})
    n_ens = next((r["ensemble"]["num_examples"] for r in rows.values() if "ensemble" in r), 0)
    head += [f"ensemble + PGD {k} (first {n_ens})" for k in extra]
    metric_keys = sorted({k for r in rows.values() for k in r["interpretability"]})
    head += metric_keys
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, r["objective"], f"{100 * r['clean_accuracy']:.1f}"]
        cells += [f"{100 * r['robust'][n]:.1f}" for n in names]
        worst = r.get("ensemble", {}).get("worst_case", {})
        cells += [f"{100 * worst[k]:.1f}" if k in worst else "-" for k in extra]
        cells += [f"{r['interpretability'].get(k, float('nan')):.3f}" for k in metric_keys]
        lines.append("| " + " | ".join(cells) + " |")
    o = report["ordering"]
    text = [
        "# Interpretability and adversarial robustness (Noack et al.), MNIST",
        "",
        f"{report['num_eval_examples']} test images; accuracies in %; attacks: "
        + ", ".join(
            f"{n} = PGD-{attacks[n]['num_steps']} {attacks[n]['norm']} eps {attacks[n]['eps']:g} "
            f"step {attacks[n]['step_size']:g}"
            for n in names
        )
        + ". Interpretability metrics on "
        f"{report['num_metric_examples']} test images: cos_<teacher> = mean cosine between the "
        "model's true-logit gradient and the teacher's SmoothGrad map; fg_mass = share of "
        "|gradient| on pixels above the foreground threshold.",
        "",
        *lines,
        "",
    ]
    if o.get("checked"):
        text += [
            f"Ordering IR({o['roles']['ir_robust']}) > max/min baselines "
            f"({', '.join(o['roles']['baselines'])}) > {o['roles']['standard']}: "
            f"mean over attacks {'holds' if o['holds_on_mean'] else 'does not hold'}; "
            f"every attack {'holds' if o['holds_on_every_attack'] else 'does not hold'}.",
            "",
        ]
    return "\n".join(text)


def run(config, workdir: str) -> dict:
    """Runs the comparison of Noack et al. (issue point 6) and writes its record.

    Args:
      config: a config from ``configs/interpretability.py`` (``config.analysis`` holds the
        models, roles, metric and figure settings; ``config.eval`` the attacks).
      workdir: output folder.

    Returns:
      The report dict (also written to ``workdir/interpretability.json``).
    """
    start = time.time()
    a = config.analysis
    os.makedirs(workdir, exist_ok=True)
    fig_dir = os.path.join(workdir, "figures")
    dataset = data.load_dataset(config.data)
    bounds = tuple(dataset.info.bounds)
    n_eval = config.eval.num_examples or dataset.num_test
    eval_x, eval_y = dataset.test_x[:n_eval], dataset.test_y[:n_eval]
    n_metric = min(a.num_metric_examples, dataset.num_test)
    metric_x, metric_y = dataset.test_x[:n_metric], dataset.test_y[:n_metric]
    teachers = sorted(set(_teachers(a).values()))
    target_cfgs: dict[str, dict] = {}
    for student, teacher in _teachers(a).items():
        # Test-set maps use the SmoothGrad settings of the first student of each teacher.
        own = a.models[student].get("targets", None)
        own = own.to_dict() if own is not None else {}
        target_cfgs.setdefault(teacher, {**interpretation.TARGET_DEFAULTS, **own})
    test_targets: dict[str, np.ndarray] = {}

    def hook(model, step, epoch):
        del step, epoch
        n = min(a.hook_examples, n_metric)
        grads = _gradients(model, metric_x[:n], metric_y[:n], a.batch_size)
        metrics = _interpretability_metrics(
            grads, metric_x[:n], {k: v[:n] for k, v in test_targets.items()}, a.fg_threshold
        )
        return {f"test_{k}": v for k, v in metrics.items()}

    trained: dict[str, runs.TrainedModel] = {}
    train_seconds = {}
    subs = _sub_configs(config, workdir)
    for name in subs:
        t0 = time.time()
        sub, model_dir = subs[name]
        trained[name] = runs.train_or_load(sub, model_dir, eval_hook=hook, dataset=dataset)
        train_seconds[name] = round(time.time() - t0, 1)
        if name in teachers:
            tcfg = target_cfgs[name]
            test_targets[name] = _test_targets(
                trained[name],
                name,
                metric_x,
                metric_y,
                tcfg,
                _targets_path(workdir, model_dir, f"test{n_metric}", tcfg),
                bounds,
            )

    # Evaluation and interpretability metrics.
    eval_key = jax.random.fold_in(jax.random.key(config.seed), 7)
    ensemble_cfg = _ensemble_eval_config(config)
    # With `pgd_with_ensemble_only`, the PGD attacks that join an ensemble run only there
    # (on the ensemble's images) instead of twice.
    skipped = (
        _ensemble_with(a) if ensemble_cfg is not None and a.get("pgd_with_ensemble_only") else []
    )
    pgd_cfg = config.eval
    if skipped:
        pgd_cfg = ml_collections.ConfigDict(config.eval.to_dict())
        pgd_cfg.attacks = ml_collections.ConfigDict(
            {k: v for k, v in config.eval.attacks.to_dict().items() if k not in skipped}
        )
    rows: dict[str, dict] = {}
    evals: dict[str, dict] = {}
    for name, model in trained.items():
        t0 = time.time()
        mdir = subs[name][1]
        ev = _evaluate(
            model, eval_x, eval_y, pgd_cfg, os.path.join(mdir, f"{NAME}_eval.json"), eval_key
        )
        evals[name] = ev
        grads = _gradients(model, metric_x, metric_y, a.batch_size)
        row = {
            "objective": a.models[name].name,
            "clean_accuracy": ev["clean_accuracy"],
            "robust": {k: v["robust_accuracy"] for k, v in ev["attacks"].items()},
            "pgd_examples": {k: ev["num_examples"] for k in ev["attacks"]},
            "sanity_passed": ev.get("sanity_passed"),
            "interpretability": _interpretability_metrics(
                grads, metric_x, test_targets, a.fg_threshold
            ),
            "first_last_logged": _training_curves(mdir),
            "train_seconds_this_call": train_seconds[name],
        }
        if ensemble_cfg is not None:
            cache = os.path.join(mdir, f"{NAME}_ensemble_eval.json")
            ens = _evaluate(model, eval_x, eval_y, ensemble_cfg, cache, eval_key)
            row["ensemble"] = {k: v["robust_accuracy"] for k, v in ens["attacks"].items()}
            # Per threat model: the ensemble and the PGD attack at that (norm, eps) together.
            row["ensemble"]["worst_case"] = {
                threat_model_key(g["norm"], g["eps"]): g["robust_accuracy"]
                for g in ens["worst_case"]["threat_models"].values()
            }
            row["ensemble"]["num_examples"] = ens["num_examples"]
            row["ensemble"]["clean_accuracy"] = ens["clean_accuracy"]
            for k in skipped:  # PGD attacks run only beside the ensembles
                row["robust"][k] = ens["attacks"][k]["robust_accuracy"]
                row["pgd_examples"][k] = ens["num_examples"]
        row["robust"] = {k: row["robust"][k] for k in config.eval.attacks if k in row["robust"]}
        row["eval_seconds_this_call"] = round(time.time() - t0, 1)
        rows[name] = row
    order = list(a.get("order", None) or []) + [n for n in rows if n not in (a.get("order") or [])]
    rows = {n: rows[n] for n in order if n in rows}
    attacks = next(iter(rows.values()))["robust"]
    attack_meta = {
        k: {
            "norm": config.eval.attacks[k].norm,
            "eps": float(config.eval.attacks[k].eps),
            **_budget(config.eval.attacks[k]),
        }
        for k in attacks
    }

    # Figures.
    figures = []
    n_show = min(a.num_figure_examples, n_metric)
    show_x, show_y = metric_x[:n_show], metric_y[:n_show]
    maps = {f"target {t}": test_targets[t][:n_show] for t in teachers}
    maps.update({name: _gradients(trained[name], show_x, show_y, n_show) for name in rows})
    figures.append(
        saliency.saliency_grid(
            os.path.join(fig_dir, "saliency_gradients.png"),
            show_x,
            maps,
            signed=True,
            row_labels=[str(int(v)) for v in show_y],
            title="Teacher SmoothGrad targets and each model's true-logit gradient",
        )
    )
    figures.append(_methods_figure(trained[a.roles.ir_robust], show_x, show_y, a, fig_dir, bounds))
    figures += _curve_figures(subs, rows, attack_meta, fig_dir, test_targets)

    report = {
        "name": NAME,
        "data": dataset.info.to_dict() | {"num_train": dataset.num_train},
        "model": config.model.to_dict(),
        "train": {
            "batch_size": config.train.batch_size,
            "num_epochs": config.train.num_epochs,
            "optimizer": config.train.optimizer.to_dict(),
        },
        "objectives": {n: a.models[n].to_dict() for n in trained},
        "num_eval_examples": int(n_eval),
        "num_metric_examples": int(n_metric),
        "attacks": attack_meta,
        "ensemble": None
        if ensemble_cfg is None
        else {
            "attacks": a.ensemble.to_dict(),
            "with_pgd": _ensemble_with(a),
            "num_examples": int(ensemble_cfg.num_examples),
        },
        "seed": config.seed,
        "rows": rows,
        "figures": [os.path.relpath(p, workdir) for p in figures],
        "wall_seconds_this_call": round(time.time() - start, 1),
    }
    report["ordering"] = _ordering(rows, list(attacks), a)
    kit.write_report(os.path.join(workdir, f"{NAME}.json"), report)
    with open(os.path.join(workdir, f"{NAME}.md"), "w") as f:
        f.write(_markdown(rows, attack_meta, report))
    return report


def _budget(acfg) -> dict:
    steps = int(acfg.get("num_steps", 0))
    step = acfg.get("step_size", None)
    if step is None:
        step = default_step_size(float(acfg.eps), steps)
    return {
        "num_steps": steps,
        "step_size": float(step),
        "num_restarts": int(acfg.get("num_restarts", 1)),
        "random_start": bool(acfg.get("random_start", True)),
    }


@functools.partial(jit, static_argnames=("num_samples", "ig_steps", "bounds"))
def _all_maps(model, x, y, key, *, num_samples, ig_steps, bounds) -> dict:
    """Every saliency method of the figure in one compiled call (the model as data)."""
    kw = dict(num_samples=num_samples, sigma=0.15, bounds=bounds, chunk_size=10)
    return {
        "gradient": saliency.gradient(model, x, y),
        "SmoothGrad": saliency.smoothgrad(model, x, y, key, **kw),
        "SmoothGrad^2": saliency.smoothgrad(model, x, y, key, aggregate="squared", **kw),
        "VarGrad": saliency.smoothgrad(model, x, y, key, aggregate="vargrad", **kw),
        "IG (black)": saliency.integrated_gradients(model, x, y, num_steps=ig_steps, bounds=bounds),
    }


def _methods_figure(model, x, y, a, fig_dir, bounds) -> str:
    """Gradient, SmoothGrad, SmoothGrad-squared, VarGrad and IG of one model."""
    maps = _all_maps(
        model.model,
        jnp.asarray(x),
        jnp.asarray(y),
        jax.random.key(0),
        num_samples=int(a.figure_smoothgrad_samples),
        ig_steps=int(a.figure_ig_steps),
        bounds=tuple(float(b) for b in bounds),
    )
    maps = {k: np.asarray(v) for k, v in maps.items()}
    return saliency.saliency_grid(
        os.path.join(fig_dir, "saliency_methods.png"),
        x,
        maps,
        signed=True,
        title=f"Saliency methods on {a.roles.ir_robust}",
    )


def _curve_figures(subs, rows, attack_meta, fig_dir, test_targets) -> list[str]:
    figures = []
    for teacher in test_targets:
        key = f"test_cos_{teacher}"
        curves, steps = {}, None
        for name, (_, model_dir) in subs.items():
            recs = [r for r in runs.read_metrics(model_dir) if key in r]
            if recs:
                steps = [r["epoch"] for r in recs]
                curves[name] = [r[key] for r in recs]
        if curves:
            length = min(len(v) for v in curves.values())
            figures.append(
                plots.line_plot(
                    os.path.join(fig_dir, f"cosine_to_{teacher}_during_training.png"),
                    steps[:length],
                    {k: v[:length] for k, v in curves.items()},
                    xlabel="epoch",
                    ylabel=f"cos(grad, SmoothGrad of {teacher})",
                    title="Gradient alignment with the teacher's map (test images)",
                )
            )
    for norm in ("l2", "linf"):
        names = sorted(
            (k for k, v in attack_meta.items() if v["norm"] == norm),
            key=lambda k: attack_meta[k]["eps"],
        )
        if not names:
            continue
        eps = [0.0] + [attack_meta[k]["eps"] for k in names]
        curves = {
            m: [r["clean_accuracy"]] + [r["robust"][k] for k in names] for m, r in rows.items()
        }
        figures.append(
            plots.line_plot(
                os.path.join(fig_dir, f"robust_accuracy_{norm}.png"),
                eps,
                curves,
                xlabel=f"{norm} eps",
                ylabel="accuracy",
                title=f"PGD robust accuracy, {norm}",
            )
        )
    return figures
