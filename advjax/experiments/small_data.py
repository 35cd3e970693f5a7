"""Standard accuracy against training-set size for several eps_train (analysis 'small_data').

Tsipras et al. 2019 ("Robustness may be at odds with accuracy", Fig. 1): with few
training examples, adversarial training can *raise* standard accuracy (it acts as a
data-dependent regulariser); with plenty of data, robust models fall below the standard
one. This experiment trains one model per (training-set size, eps_train, seed) through
the normal, resumable training loop (`advjax.runs.train_or_load`; eps_train = 0 is
standard training, eps_train > 0 is PGD-AT with ``analysis.norm``) and writes

* ``workdir/small_data.json``: standard (clean) test accuracy of every cell, its mean and
  standard deviation over seeds, robust accuracy at every nonzero eps_train, steps and
  wall time;
* ``workdir/figures/small_data_accuracy.png``: standard accuracy against training-set
  size, one curve per eps_train (Tsipras Fig. 1), and
  ``workdir/figures/small_data_robust.png``: robust accuracy at the largest eps_train.

Orchestration only: training is the library's loop, the inner maximisation and the
robust evaluation use the attack library's PGD.
"""

from __future__ import annotations

import copy
import math
import os
import time

import jax
import ml_collections
import numpy as np

from advjax import data, plots, runs
from advjax.attacks.ascent import default_step_size
from advjax.experiments import kit


def _eps_tag(eps: float) -> str:
    return f"{eps:g}".replace(".", "p")


def cell_config(config, *, size: int, eps: float, seed: int) -> ml_collections.ConfigDict:
    """The training config of one cell: ``size`` examples, eps_train ``eps``, ``seed``.

    The number of steps is ``max(analysis.min_steps, analysis.epochs * size / batch)`` so
    tiny training sets still get enough updates to fit; the batch is capped at ``size``.
    PGD-AT cells ramp eps up over ``analysis.eps_ramp_fraction`` of training (default 0).
    """
    an = config.analysis
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.analysis = ml_collections.ConfigDict({"name": ""})
        cfg.seed = int(seed)
        cfg.data.num_train = int(size)
        cfg.data.num_val = 0
        cfg.data.seed = int(seed)
        batch = min(int(config.train.batch_size), int(size))
        cfg.train.batch_size = batch
        steps = max(int(an.min_steps), math.ceil(float(an.epochs) * size / batch))
        cfg.train.num_steps = steps
        cfg.train.eval_every_steps = steps  # validate once, at the end
        cfg.train.val_attack = ml_collections.ConfigDict({"name": "none"})
        cfg.checkpoint.every_steps = max(steps // 2, 1)
        if eps > 0:
            # eps rises linearly over the first fraction of training (AT cells only, so the
            # standard cells' configs do not depend on it).
            cfg.train.eps_ramp_fraction = float(an.get("eps_ramp_fraction", 0.0))
            num_steps = int(an.attack_steps)
            cfg.train.objective = ml_collections.ConfigDict(
                dict(
                    name="pgd_at",
                    attack=dict(
                        name="pgd",
                        norm=an.norm,
                        eps=float(eps),
                        step_size=default_step_size(float(eps), num_steps),
                        num_steps=num_steps,
                        random_start=True,
                        num_restarts=1,
                        loss="ce",
                    ),
                )
            )
        else:
            cfg.train.objective = ml_collections.ConfigDict({"name": "standard"})
    return cfg


def _accuracies(model, x, y, *, norm: str, eps_list, attack_steps: int, batch_size: int, key):
    """Clean accuracy on ``x`` and PGD accuracy at every eps of ``eps_list``.

    One PGD attack (step ``2.5 eps / steps`` at every eps) through the shared evaluation
    kit, so every model of the sweep reuses the same compiled programs.
    """
    from advjax import evaluation
    from advjax.attacks import build_attack

    bounds = tuple(model.info.bounds)
    attack = build_attack({"name": "pgd", "norm": norm, "eps": 1.0, "num_steps": attack_steps})
    kw = dict(bounds=bounds, batch_size=batch_size)
    out = {"clean": evaluation.accuracy(model.model, x, y, **kw)}
    for e in eps_list:
        out[float(e)] = evaluation.accuracy(
            model.model, x, y, attack=attack, key=key, eps=float(e), **kw
        )
    return out


def validate(config) -> None:
    """The sweep's settings and one cell config per eps, before any compute (called by
    `advjax.configlib.validate`)."""
    from advjax import configlib

    an = config.analysis
    for key in ("sizes", "eps_train", "seeds"):
        if not len(an[key]):
            raise ValueError(f"config key 'analysis.{key}': got an empty list; need one or more")
    if min(an.sizes) < 1:
        raise ValueError(f"config key 'analysis.sizes': got {list(an.sizes)}; sizes must be >= 1")
    for eps in an.eps_train:
        configlib.validate(
            cell_config(config, size=int(an.sizes[0]), eps=float(eps), seed=int(an.seeds[0]))
        )


def run(config, workdir: str) -> dict:
    """Trains every cell of the sweep (or restores it) and writes the curves."""
    an = config.analysis
    sizes = [int(s) for s in an.sizes]
    eps_train = [float(e) for e in an.eps_train]
    seeds = [int(s) for s in an.seeds]
    robust_eps = [e for e in eps_train if e > 0]

    test_cfg = copy.deepcopy(config.data)
    with test_cfg.unlocked():
        test_cfg.num_train = 0
        test_cfg.num_val = 0
    dataset = data.load_dataset(test_cfg)
    x_test, y_test = dataset.test_x, dataset.test_y
    num_robust = int(an.num_robust_eval)

    cells = []
    for size in sizes:
        for eps in eps_train:
            for seed in seeds:
                cfg = cell_config(config, size=size, eps=eps, seed=seed)
                cell_dir = os.path.join(workdir, "runs", f"n{size}_eps{_eps_tag(eps)}_s{seed}")
                start = time.time()
                model = runs.train_or_load(cfg, cell_dir)
                train_seconds = time.time() - start
                clean = _accuracies(
                    model,
                    x_test,
                    y_test,
                    norm=an.norm,
                    eps_list=[],
                    attack_steps=1,
                    batch_size=int(config.eval.batch_size),
                    key=jax.random.PRNGKey(0),
                )["clean"]
                rob = (
                    _accuracies(
                        model,
                        x_test[:num_robust],
                        y_test[:num_robust],
                        norm=an.norm,
                        eps_list=robust_eps,
                        attack_steps=int(an.eval_attack_steps),
                        batch_size=min(int(config.eval.batch_size), num_robust),
                        key=jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), seed),
                    )
                    if num_robust > 0 and robust_eps
                    else {}
                )
                cells.append(
                    {
                        "size": size,
                        "eps_train": eps,
                        "seed": seed,
                        "standard_accuracy": clean,
                        "robust_accuracy": {f"{e:g}": rob[e] for e in robust_eps if e in rob},
                        "train_steps": int(cfg.train.num_steps),
                        "batch_size": int(cfg.train.batch_size),
                        "seconds": train_seconds,
                        "workdir": os.path.relpath(cell_dir, workdir),
                    }
                )
                print(
                    f"small_data: n={size} eps_train={eps:g} seed={seed}: "
                    f"standard accuracy {clean:.4f} ({train_seconds:.0f}s)"
                )

    def summary(metric):
        mean, std = {}, {}
        for eps in eps_train:
            rows_m, rows_s = [], []
            for size in sizes:
                vals = [metric(c) for c in cells if c["size"] == size and c["eps_train"] == eps]
                vals = [v for v in vals if v is not None]
                rows_m.append(float(np.mean(vals)) if vals else float("nan"))
                rows_s.append(float(np.std(vals)) if vals else float("nan"))
            mean[f"{eps:g}"], std[f"{eps:g}"] = rows_m, rows_s
        return mean, std

    std_mean, std_std = summary(lambda c: c["standard_accuracy"])
    report = {
        "sizes": sizes,
        "eps_train": eps_train,
        "norm": an.norm,
        "seeds": seeds,
        "num_test": int(len(x_test)),
        "num_robust_eval": min(num_robust, int(len(x_test))),
        "standard_accuracy_mean": std_mean,
        "standard_accuracy_std": std_std,
        "cells": cells,
    }
    if robust_eps:
        e_max = f"{max(robust_eps):g}"
        rob_mean, _ = summary(lambda c: c["robust_accuracy"].get(e_max))
        report["robust_accuracy_at_max_eps"] = {"eps": max(robust_eps), "mean": rob_mean}
    base = std_mean[f"{eps_train[0]:g}"]
    report["at_minus_standard"] = {
        f"{e:g}": [a - b for a, b in zip(std_mean[f"{e:g}"], base, strict=True)]
        for e in eps_train[1:]
    }

    fig_dir = os.path.join(workdir, "figures")
    figures = [
        accuracy_figure(
            os.path.join(fig_dir, "small_data_accuracy.png"),
            sizes,
            std_mean,
            std_std if len(seeds) > 1 else None,
            ylabel="standard (clean) test accuracy",
            title=f"Standard accuracy vs training-set size ({an.norm} eps_train)",
        )
    ]
    if robust_eps:
        figures.append(
            accuracy_figure(
                os.path.join(fig_dir, "small_data_robust.png"),
                sizes,
                report["robust_accuracy_at_max_eps"]["mean"],
                None,
                ylabel=f"robust accuracy ({an.norm} eps={max(robust_eps):g})",
                title="Robust accuracy vs training-set size",
            )
        )
    report["figures"] = [os.path.relpath(p, workdir) for p in figures]
    kit.write_report(os.path.join(workdir, "small_data.json"), report)
    flat = {
        f"standard_accuracy_eps{e}_n{n}": acc
        for e, accs in std_mean.items()
        for n, acc in zip(sizes, accs, strict=True)
    }
    return flat | report


def accuracy_figure(path, sizes, curves, errors, *, ylabel: str, title: str) -> str:
    """Accuracy against training-set size (log x axis), one line per eps_train."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, ys in curves.items():
        ys = np.asarray(ys, dtype=float)
        ax.plot(sizes, ys, marker="o", ms=3, label=f"eps_train = {label}")
        if errors:
            err = np.asarray(errors[label], dtype=float)
            ax.fill_between(sizes, ys - err, ys + err, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("training-set size")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save(fig, path)
