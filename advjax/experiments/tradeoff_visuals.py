"""What robust models look like (Tsipras et al. 2019, section 4; analysis 'tradeoff_visuals').

For a standard and an adversarially trained model of the same architecture (trained
through `advjax.runs.train_or_load`, or restored from ``analysis.standard_workdir`` /
``analysis.robust_workdir``) on the first test images, this writes PNG grids to
``workdir/figures/`` and numbers to ``workdir/tradeoff_visuals.json``:

* ``gradients.png``: loss gradients ``grad_x CE(f(x), y)``, min-max scaled per image
  (Tsipras et al.'s display). Numbers: share of |gradient| on the digit
  (`advjax.saliency.foreground_mass`) and the correlation of |gradient| with
  the image. Robust models give gradients aligned with the object, standard ones noise.
* ``adversarial_untargeted.png``: large-eps attacks (PGD on CE, no random start, final
  iterate; l_2 eps 4-6 on MNIST), which on robust models look like another class.
* ``adversarial_targeted_<model>.png``: the same attack toward every class. Numbers:
  success rate and the share of adversarial images closer (l_2) to the mean training
  image of the target class than to that of the source class.
* ``interpolation_<model>.png``: ``x + t * delta`` for t in [0, 1] with delta the
  untargeted perturbation: on robust models the image morphs smoothly between classes.
  Numbers: the predicted class along each path.
"""

from __future__ import annotations

import copy
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advjax import data, plots, runs, saliency
from advjax.attacks.pgd import pgd
from advjax.compile import jit
from advjax.experiments import kit


def interpolation_path(x: jax.Array, delta: jax.Array, num_points: int, bounds) -> jax.Array:
    """``clip(x + t * delta)`` for ``t`` in linspace(0, 1, num_points): [B, T, ...]."""
    t = jnp.linspace(0.0, 1.0, num_points).reshape((1, num_points) + (1,) * (x.ndim - 1))
    return jnp.clip(x[:, None] + t * delta[:, None], *bounds)


def closer_to_target_mean(
    x_adv: np.ndarray, source: np.ndarray, target: np.ndarray, class_means: np.ndarray
) -> np.ndarray:
    """Whether each image is nearer (l_2) to its target-class mean than to its source's."""
    flat = x_adv.reshape(len(x_adv), -1)
    means = class_means.reshape(len(class_means), -1)
    d_target = np.linalg.norm(flat - means[target], axis=1)
    d_source = np.linalg.norm(flat - means[source], axis=1)
    return d_target < d_source


def gradient_image_correlation(grads: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Pearson correlation between |gradient| (summed over channels) and pixel intensity."""
    g = np.abs(grads).sum(-1).reshape(len(grads), -1)
    v = x.mean(-1).reshape(len(x), -1)
    g = g - g.mean(1, keepdims=True)
    v = v - v.mean(1, keepdims=True)
    denom = np.linalg.norm(g, axis=1) * np.linalg.norm(v, axis=1)
    return (g * v).sum(1) / np.maximum(denom, 1e-30)


def _standard_config(config) -> ml_collections.ConfigDict:
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.train.objective = ml_collections.ConfigDict({"name": "standard"})
        cfg.train.eps_ramp_fraction = 0.0
        cfg.analysis = ml_collections.ConfigDict({"name": ""})
    return cfg


def _robust_config(config) -> ml_collections.ConfigDict:
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.analysis = ml_collections.ConfigDict({"name": ""})
    return cfg


def validate(config) -> None:
    """Both models' training configs, before any compute (called by
    `advjax.configlib.validate`)."""
    from advjax import configlib

    configlib.validate(_standard_config(config))
    configlib.validate(_robust_config(config))


def load_models(config, workdir: str) -> dict:
    """The standard and robust `TrainedModel`s: restored, or trained if missing."""
    an = config.analysis
    out = {}
    for name, make in (("standard", _standard_config), ("robust", _robust_config)):
        given = an.get(f"{name}_workdir", "")
        if given:
            out[name] = runs.load_trained(given)
        else:
            out[name] = runs.train_or_load(make(config), os.path.join(workdir, name))
    return out


def pick_images(x: np.ndarray, y: np.ndarray, num_images: int, num_classes: int):
    """The first test image of each class in turn (0, 1, 2, ...) up to ``num_images``."""
    idx = []
    for k in range(num_images):
        hits = np.flatnonzero(y == k % num_classes)
        hits = [i for i in hits if i not in idx]
        if hits:
            idx.append(int(hits[0]))
    return np.asarray(idx)


def _model_visuals(model, x, y, an, key, bounds, num_classes, class_means) -> tuple[dict, dict]:
    logits_fn = model.logits_fn
    attack = dict(
        norm=an.norm,
        eps=float(an.eps),
        step_size=float(an.step_size),
        num_steps=int(an.num_steps),
        random_start=False,
        keep_best=False,
        bounds=bounds,
    )
    grads = jit(lambda xs, ys: saliency.gradient(logits_fn, xs, ys, output="loss"))(x, y)
    x_adv = jit(lambda xs, ys, k: pgd(logits_fn, xs, ys, k, **attack))(x, y, key)
    n = x.shape[0]
    targets = jnp.tile(jnp.arange(num_classes), n)
    x_rep = jnp.repeat(x, num_classes, axis=0)
    x_tgt = jit(lambda xs, ts, k: pgd(logits_fn, xs, ts, k, targeted=True, **attack))(
        x_rep, targets, jax.random.fold_in(key, 1)
    )
    path = interpolation_path(x, x_adv - x, int(an.num_interpolation), bounds)
    predict = jit(lambda xs: jnp.argmax(logits_fn(xs), -1))
    pred_clean = np.asarray(predict(x))
    pred_adv = np.asarray(predict(x_adv))
    pred_tgt = np.asarray(predict(x_tgt)).reshape(n, num_classes)
    pred_path = np.asarray(predict(path.reshape((-1,) + x.shape[1:]))).reshape(n, -1)

    off_diag = ~np.eye(num_classes, dtype=bool)[np.asarray(y)]  # target != source
    tgt = np.asarray(targets).reshape(n, num_classes)
    closer = closer_to_target_mean(
        np.asarray(x_tgt), np.repeat(np.asarray(y), num_classes), np.asarray(targets), class_means
    ).reshape(n, num_classes)
    l2 = np.linalg.norm(np.asarray(x_adv - x).reshape(n, -1), axis=1)
    numbers = {
        "clean_accuracy": float(np.mean(pred_clean == np.asarray(y))),
        "gradient_foreground_mass": float(
            np.mean(saliency.foreground_mass(grads, x, threshold=float(an.foreground_threshold)))
        ),
        "gradient_image_correlation": float(
            np.mean(gradient_image_correlation(np.asarray(grads), np.asarray(x)))
        ),
        "untargeted_success_rate": float(np.mean(pred_adv != np.asarray(y))),
        "untargeted_predictions": pred_adv.tolist(),
        "untargeted_l2_norm_max": float(l2.max()),
        "untargeted_linf_norm_max": float(np.abs(np.asarray(x_adv - x)).max()),
        "targeted_success_rate": float(np.mean((pred_tgt == tgt)[off_diag])),
        "targeted_closer_to_target_mean": float(np.mean(closer[off_diag])),
        "interpolation_predictions": pred_path.tolist(),
        "interpolation_class_changes": float(
            np.mean(np.sum(pred_path[:, 1:] != pred_path[:, :-1], axis=1))
        ),
    }
    arrays = {
        "grads": np.asarray(grads),
        "x_adv": np.asarray(x_adv),
        "x_tgt": np.asarray(x_tgt).reshape((n, num_classes) + x.shape[1:]),
        "path": np.asarray(path),
        "pred_adv": pred_adv,
        "pred_tgt": pred_tgt,
        "pred_path": pred_path,
    }
    return numbers, arrays


def run(config, workdir: str) -> dict:
    """Trains or restores both models, computes the visuals, writes PNGs and JSON."""
    an = config.analysis
    models = load_models(config, workdir)
    dataset = data.load_dataset(config.data)
    bounds = tuple(dataset.info.bounds)
    num_classes = dataset.info.num_classes
    idx = pick_images(dataset.test_x, dataset.test_y, int(an.num_images), num_classes)
    x = jnp.asarray(dataset.test_x[idx])
    y = jnp.asarray(dataset.test_y[idx])
    class_means = np.stack(
        [dataset.train_x[dataset.train_y == k].mean(0) for k in range(num_classes)]
    )
    key = jax.random.PRNGKey(int(config.seed))

    report: dict = {
        "attack": {
            "norm": an.norm,
            "eps": float(an.eps),
            "step_size": float(an.step_size),
            "num_steps": int(an.num_steps),
            "loss": "ce",
            "random_start": False,
        },
        "test_indices": idx.tolist(),
        "labels": np.asarray(y).tolist(),
        "models": {},
    }
    arrays = {}
    for name, model in models.items():
        numbers, arrs = _model_visuals(model, x, y, an, key, bounds, num_classes, class_means)
        numbers["objective"] = model.config.train.objective.to_dict()
        report["models"][name] = numbers
        arrays[name] = arrs

    fig_dir = os.path.join(workdir, "figures")
    report["figures"] = [
        os.path.relpath(p, workdir)
        for p in _figures(fig_dir, np.asarray(x), np.asarray(y), arrays, an)
    ]
    std, rob = report["models"]["standard"], report["models"]["robust"]
    report["headline"] = {
        "gradient_foreground_mass": {
            "standard": std["gradient_foreground_mass"],
            "robust": rob["gradient_foreground_mass"],
        },
        "gradient_image_correlation": {
            "standard": std["gradient_image_correlation"],
            "robust": rob["gradient_image_correlation"],
        },
        "targeted_closer_to_target_mean": {
            "standard": std["targeted_closer_to_target_mean"],
            "robust": rob["targeted_closer_to_target_mean"],
        },
    }
    kit.write_report(os.path.join(workdir, "tradeoff_visuals.json"), report)
    flat = {f"{m}_{k}": v for k, d in report["headline"].items() for m, v in d.items()}
    return flat | report


def _figures(fig_dir: str, x: np.ndarray, y: np.ndarray, arrays: dict, an) -> list[str]:
    n = len(x)
    std, rob = arrays["standard"], arrays["robust"]
    paths = [
        plots.image_grid(
            os.path.join(fig_dir, "gradients.png"),
            np.stack([x, std["grads"], rob["grads"]], axis=1),
            row_labels=[f"y={int(k)}" for k in y],
            col_labels=["input", "standard grad", "robust grad"],
            normalize_each=True,
            title="Loss gradients w.r.t. the input (min-max scaled per image)",
        ),
        plots.image_grid(
            os.path.join(fig_dir, "adversarial_untargeted.png"),
            np.stack([x, std["x_adv"], rob["x_adv"]], axis=1),
            row_labels=[
                f"y={int(y[i])}: std->{int(std['pred_adv'][i])}, rob->{int(rob['pred_adv'][i])}"
                for i in range(n)
            ],
            col_labels=["input", "standard", "robust"],
            title=f"Untargeted {an.norm} eps={float(an.eps):g} (PGD-{int(an.num_steps)} on CE)",
        ),
    ]
    for name, arrs in arrays.items():
        num_classes = arrs["x_tgt"].shape[1]
        paths.append(
            plots.image_grid(
                os.path.join(fig_dir, f"adversarial_targeted_{name}.png"),
                np.concatenate([x[:, None], arrs["x_tgt"]], axis=1),
                row_labels=[f"y={int(k)}" for k in y],
                col_labels=["input"] + [f"->{t}" for t in range(num_classes)],
                title=f"{name} model: targeted {an.norm} eps={float(an.eps):g}",
            )
        )
        t_values = np.linspace(0.0, 1.0, arrs["path"].shape[1])
        paths.append(
            plots.image_grid(
                os.path.join(fig_dir, f"interpolation_{name}.png"),
                arrs["path"],
                row_labels=["".join(str(int(p)) for p in row) for row in arrs["pred_path"]],
                col_labels=[f"t={t:.2f}" for t in t_values],
                title=f"{name} model: x + t * delta (row label: predicted class along t)",
            )
        )
    return paths
