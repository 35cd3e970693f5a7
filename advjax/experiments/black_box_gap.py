"""Why a black-box attack fools points that the white-box attacks leave robust.

``python launch/main.py --config configs/black_box_gap.py --workdir DIR --mode analyze``
trains (or restores) the model of ``analysis.model`` through `advjax.runs.train_or_load`
and runs the components of its ensemble (``eval.attacks.<analysis.ensemble>`` of that
model's config) in order on the first ``analysis.num_examples`` test images, each on the
points still robust, as `advjax.evaluation` does (per-example keys, so a point's outcome
does not depend on its batch). The points that only the black-box component (Square)
fools are the evaluation's black-box gap (its ``black_box_not_stronger`` sanity check).
For them the analysis reports:

1. **Margins** ``z_y - max_{k != y} z_k``: clean, at the black-box point, and the lowest
   margin that any white-box component reached there; next to them the white-box margin
   of every point the white-box stage leaves robust (the figure ``margins.png``). Gap
   points with small white-box margins are points near the decision boundary on which
   the gradient ascent stalls short of it; large ones would be gradients that carry no
   information (masking in the strict sense).
2. **The straight path** from x to the black-box point: the margin at
   ``analysis.segment_points`` evenly spaced points (``segments.png``) and whether it falls
   monotonically, i.e. whether the black-box point lies in a pocket behind a barrier or
   in a direction the gradient does not point to.
3. **The gradient at x**: the fraction of input coordinates where the cross-entropy's
   input gradient is exactly zero (a sign step leaves them where they are), and the
   cosine between ``sign(grad)`` and the black-box perturbation.
4. **A stronger white-box stage**: APGD-CE and APGD-DLR with each restart count of
   ``analysis.restarts`` on the gap points; how many of them either fools, and so the gap
   that would be left after it (Square's draws are per example, so it fools the same
   points after any white-box stage that leaves them robust).
5. **The gap under other keys**: the whole ensemble again, component by component, under
   ``analysis.other_keys`` further keys; the gap's size under each key, and how many
   points are in the gap under some key (the union) and under every key. A gap that
   moves from key to key is made of points on which the attacks' outcomes depend on
   their random draws.

``analysis.components`` (default ``()``) replaces the ensemble's component list, e.g.
to dissect it with APGD-B (`advjax.attacks.boundary`) before Square.

Writes ``DIR/black_box_gap.json`` and ``DIR/figures/{margins,segments,examples}.png``.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advjax import data, losses, plots
from advjax.attacks import ATTACKS, Attack
from advjax.compile import jit
from advjax.experiments import AnalysisError, kit
from advjax.models import Model
from advjax.progress import progress_bar

_check = kit.check


def validate_analysis(a: ml_collections.ConfigDict) -> None:
    """The ``config.analysis`` section, before any compute."""
    kit.check_config_file(a.model.config, "model.config")
    _check(int(a.num_examples) >= 1, "num_examples", a.num_examples, "must be >= 1")
    _check(int(a.batch_size) >= 1, "batch_size", a.batch_size, "must be >= 1")
    _check(int(a.segment_points) >= 2, "segment_points", a.segment_points, "must be >= 2")
    restarts = list(a.restarts)
    _check(
        all(int(r) >= 1 for r in restarts),
        "restarts",
        restarts,
        "need restart counts >= 1 ([] to skip the stronger white-box stage)",
    )
    _check(int(a.num_shown) >= 0, "num_shown", a.num_shown, "must be >= 0")
    _check(int(a.other_keys) >= 0, "other_keys", a.other_keys, "must be >= 0 (0 to skip)")


def _model_config(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return kit.load_sub_config(a.model.config, a.model.get("overrides"))


def _ensemble(a: ml_collections.ConfigDict, model_config) -> Attack:
    attacks = model_config.eval.attacks
    if a.ensemble not in attacks:
        raise ValueError(
            f"config key 'analysis.ensemble': {a.ensemble!r} is not an attack of "
            f"{a.model.config}'s eval.attacks ({sorted(attacks.keys())})"
        )
    cfg = attacks[a.ensemble]
    if cfg.get("name") != "ensemble":
        raise ValueError(
            f"config key 'analysis.ensemble': eval.attacks.{a.ensemble} of {a.model.config} "
            f"is a {cfg.get('name')!r} attack, not an ensemble"
        )
    components = tuple(a.get("components", ()) or ())
    if components:
        cfg = dict(cfg.to_dict(), attacks=components)
    try:
        ensemble = ATTACKS.get("ensemble")(cfg)
    except ValueError as err:
        if not components:
            raise
        raise ValueError(f"config key 'analysis.components': {err}") from None
    kinds = [c.kind for c in ensemble.components]
    if "black_box" not in kinds or "white_box" not in kinds[: kinds.index("black_box")]:
        raise ValueError(
            f"config key 'analysis.ensemble': eval.attacks.{a.ensemble} of {a.model.config} "
            f"needs a black-box component after white-box ones, has {kinds}"
        )
    return ensemble


def validate(config: ml_collections.ConfigDict) -> None:
    """The analysis settings and the model's config, before any compute (called by
    `advjax.configlib.validate`)."""
    from advjax import configlib

    a = config.analysis
    validate_analysis(a)
    model_config = _model_config(a)
    configlib.validate(model_config)
    ensemble = _ensemble(a, model_config)
    if ensemble.norm != "linf":
        raise ValueError(
            f"config key 'analysis.ensemble': the analysis is written for l_inf ensembles, "
            f"got norm {ensemble.norm!r}"
        )


# ---------------------------------------------------------------------------------------------
# Per-point measurements (pure, jitted; the model travels as data)
# ---------------------------------------------------------------------------------------------


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``z_y - max_{k != y} z_k``: positive exactly when the point is classified right."""
    return -losses.margin(logits, y)


@functools.partial(jit, static_argnames=("attack", "bounds"))
def attack_points(attack: Attack, model: Model, x, y, keys, *, bounds):
    """``(x_adv, margin at x_adv, misclassified at x_adv)`` of one attack on one batch
    (per-example keys); misclassified as `advjax.evaluation` counts it (argmax != y)."""
    x_adv = attack(model, x, y, keys, bounds=bounds)
    logits = model.bind(None)(x_adv)
    return x_adv, margin(logits, y), jnp.argmax(logits, axis=1) != y


@jit
def _clean(model: Model, x, y):
    logits = model.bind(None)(x)
    return margin(logits, y), jnp.argmax(logits, axis=1) == y


@functools.partial(jit, static_argnames=("num",))
def segment_margins(model: Model, x, x_end, y, *, num: int) -> jax.Array:
    """The margin at ``x + t (x_end - x)`` for ``num`` evenly spaced t in [0, 1]:
    ``(batch, num)``."""
    logits_fn = model.bind(None)
    ts = jnp.linspace(0.0, 1.0, num)
    return jax.vmap(lambda t: margin(logits_fn(x + t * (x_end - x)), y), out_axes=1)(ts)


@jit
def gradient_stats(model: Model, x, y, delta):
    """Per example: the fraction of input coordinates where the cross-entropy's input
    gradient at ``x`` is exactly zero, the cosine between ``sign(grad)`` and ``delta``
    (0 where either is zero), and ``sign(grad)`` itself."""
    logits_fn = model.bind(None)
    grad = jax.grad(lambda z: jnp.sum(losses.cross_entropy(logits_fn(z), y)))(x)
    g = grad.reshape(grad.shape[0], -1)
    d = delta.reshape(delta.shape[0], -1)
    zero = jnp.mean(g == 0, axis=1)
    s = jnp.sign(g)
    norms = jnp.linalg.norm(s, axis=1) * jnp.linalg.norm(d, axis=1)
    cos = jnp.where(norms > 0, jnp.sum(s * d, axis=1) / jnp.where(norms > 0, norms, 1.0), 0.0)
    return zero, cos, jnp.sign(grad)


def _batched(fn, idx: np.ndarray, batch_size: int, pbar=None):
    """``fn(rows) -> tuple of arrays`` over ``idx`` in padded batches of one shape;
    the outputs concatenated along the batch axis (the first)."""
    outs = []
    for start in range(0, len(idx), batch_size):
        b = idx[start : start + batch_size]
        pad = np.concatenate([b, np.repeat(b[-1:], batch_size - len(b))])
        res = fn(pad)
        outs.append([np.asarray(r)[: len(b)] for r in res])
        if pbar is not None:
            pbar.update(len(b))
    if not outs:
        return None
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


def _example_keys(key: jax.Array, idx: np.ndarray) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(idx, jnp.uint32))


def run_components(
    ensemble: Attack, model: Model, x: np.ndarray, y: np.ndarray, key: jax.Array, *,
    bounds, batch_size: int, pbar=None,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:  # fmt: skip
    """The ensemble's components in order, each on the points still robust.

    Returns the clean margins, the clean-correct mask and, per component, ``{"name",
    "kind", "idx", "x_adv", "margin", "fooled"}`` for the points it ran on.
    """
    clean_margin, correct = _batched(
        lambda rows: _clean(model, jnp.asarray(x[rows]), jnp.asarray(y[rows])),
        np.arange(len(x)),
        batch_size,
    )
    robust = correct.copy()
    stages = []
    for c_id, comp in enumerate(ensemble.components):
        idx = np.flatnonzero(robust)
        keys = _example_keys(jax.random.fold_in(key, c_id), np.arange(len(x)))
        res = _batched(
            lambda rows, comp=comp, keys=keys: attack_points(
                comp, model, jnp.asarray(x[rows]), jnp.asarray(y[rows]), keys[rows],
                bounds=bounds,
            ),
            idx,
            batch_size,
            pbar,
        )  # fmt: skip
        if res is None:
            res = (x[:0], np.zeros(0, np.float32), np.zeros(0, bool))
        x_adv, m, fooled = res
        stages.append(
            dict(name=comp.name, kind=comp.kind, idx=idx, x_adv=x_adv, margin=m, fooled=fooled)
        )
        robust[idx[fooled]] = False
    return clean_margin, correct, stages


def first_black_box(stages: list[dict]) -> dict:
    """The first black-box stage of `run_components`' stages."""
    return next(s for s in stages if s["kind"] == "black_box")


def black_box_only(stages: list[dict]) -> np.ndarray:
    """The points the first black-box stage fools (those the white-box stages before
    it left robust)."""
    black = first_black_box(stages)
    return black["idx"][black["fooled"]]


def gap_over_keys(gaps: list[np.ndarray], n: int) -> dict:
    """The black-box-only points of one ensemble run per key (the first: the run the
    other measurements use): each run's count and fraction of the ``n`` points, and how
    many points are in some run's gap and in every run's."""
    sets = [set(np.asarray(g).tolist()) for g in gaps]
    return {
        "counts": [len(g) for g in sets],
        "fractions": [len(g) / n for g in sets],
        "in_some": len(set.union(*sets)),
        "in_every": len(set.intersection(*sets)),
    }


def white_box_best_margin(stages: list[dict], idx: np.ndarray, n: int) -> np.ndarray:
    """Per point of ``idx`` (indices into the ``n`` evaluated points): the lowest margin
    any white-box stage reached there (inf where none ran)."""
    best = np.full(n, np.inf, np.float32)
    for s in stages:
        if s["kind"] == "white_box":
            np.minimum.at(best, s["idx"], s["margin"])
    return best[idx]


def stronger_stage(
    model: Model, x, y, key, eps: float, restarts, *, bounds, batch_size: int
) -> dict:
    """For each restart count R: which points APGD-CE or APGD-DLR with R restarts fools,
    and the lowest margin either reached. For R >= 2 restart r draws the same key in
    every run, so a larger R only adds restarts (a single run draws its own key)."""
    out = {}
    for r in restarts:
        fooled = np.zeros(len(x), bool)
        best = np.full(len(x), np.inf, np.float32)
        for a_id, name in enumerate(("apgd_ce", "apgd_dlr")):
            attack = ATTACKS.get(name)(
                ml_collections.ConfigDict(dict(name=name, eps=eps, num_restarts=int(r)))
            )
            keys = _example_keys(jax.random.fold_in(key, a_id), np.arange(len(x)))
            res = _batched(
                lambda rows, attack=attack, keys=keys: attack_points(
                    attack, model, jnp.asarray(x[rows]), jnp.asarray(y[rows]), keys[rows],
                    bounds=bounds,
                ),
                np.arange(len(x)),
                batch_size,
            )  # fmt: skip
            m, wrong = res[1:] if res is not None else (np.zeros(0), np.zeros(0, bool))
            fooled |= wrong
            best = np.minimum(best, m)
        out[int(r)] = dict(fooled=fooled, best_margin=best)
    return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _summary(v: np.ndarray) -> dict:
    v = np.asarray(v, np.float64)
    if v.size == 0:
        return {"n": 0}
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"n": int(v.size), "min": q[0], "q25": q[1], "median": q[2], "q75": q[3], "max": q[4]}


def _figures(fig_dir, wb_all, wb_gap, seg, ts, x, delta, grad_sign, num_shown) -> list[str]:
    paths = []
    fig, ax = plots.plt.subplots(figsize=(5.5, 3.8))
    top = max(float(np.max(wb_all, initial=1.0)), 1.0)
    bins = np.linspace(0.0, min(top, 10.0), 41)
    for values, alpha, label in (
        (wb_all, 0.6, "robust after the white-box stage"),
        (wb_gap, 0.9, "fooled by the black-box attack only"),
    ):
        ax.hist(np.clip(values, 0, bins[-1]), bins=bins, alpha=alpha, label=label)
    ax.set_xlabel("lowest margin the white-box attacks reached (z_y - max other)")
    ax.set_ylabel("points")
    if len(wb_all):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(plots.save(fig, os.path.join(fig_dir, "margins.png")))
    if len(seg):
        paths.append(
            plots.line_plot(
                os.path.join(fig_dir, "segments.png"),
                ts,
                {f"point {k}": s for k, s in enumerate(seg[: num_shown or len(seg)])},
                xlabel="t along x + t (x_black_box - x)",
                ylabel="margin",
                title="margin on the straight path to the black-box point",
            )
        )
    if len(x) and num_shown:
        k = min(num_shown, len(x))
        grid = np.stack([x[:k], 0.5 + delta[:k], 0.5 + 0.5 * grad_sign[:k]], axis=1)
        paths.append(
            plots.image_grid(
                os.path.join(fig_dir, "examples.png"),
                grid,
                row_labels=[f"point {i}" for i in range(k)],
                col_labels=["x", "black-box delta", "sign of grad CE"],
            )
        )
    return paths


def analyse(
    model: Model, ensemble: Attack, x: np.ndarray, y: np.ndarray, key: jax.Array, *,
    bounds, a: ml_collections.ConfigDict, fig_dir: str,
) -> dict:  # fmt: skip
    """The measurements of the module docstring on ``x, y`` (``a``: the analysis section);
    figures go to ``fig_dir``. Returns the report without settings."""
    n, bs = len(x), int(a.batch_size)
    num_runs = 1 + int(a.other_keys)
    total = n * len(ensemble.components) * num_runs
    other_gaps = []
    with progress_bar(total=total, desc="black-box gap", unit="pt") as bar:
        clean_margin, clean, stages = run_components(
            ensemble, model, x, y, jax.random.fold_in(key, 0), bounds=bounds, batch_size=bs,
            pbar=bar,
        )  # fmt: skip
        for k in range(1, num_runs):
            other = run_components(
                ensemble, model, x, y, jax.random.fold_in(jax.random.fold_in(key, 2), k),
                bounds=bounds, batch_size=bs, pbar=bar,
            )[2]  # fmt: skip
            other_gaps.append(black_box_only(other))
    black = first_black_box(stages)
    gap_idx = black_box_only(stages)
    x_black, black_margin = black["x_adv"][black["fooled"]], black["margin"][black["fooled"]]
    after_white = black["idx"]  # the points the white-box stages before it leave robust
    wb_all = white_box_best_margin(stages, after_white, n)
    wb_gap = white_box_best_margin(stages, gap_idx, n)

    ts = np.linspace(0.0, 1.0, int(a.segment_points))
    seg = np.zeros((0, len(ts)), np.float32)
    zero_frac = cos = np.zeros(0, np.float32)
    grad_sign = np.zeros((0,) + x.shape[1:], np.float32)
    stronger = {}
    if len(gap_idx):
        xg, yg, xb = jnp.asarray(x[gap_idx]), jnp.asarray(y[gap_idx]), jnp.asarray(x_black)
        seg = np.asarray(segment_margins(model, xg, xb, yg, num=len(ts)))
        zero_frac, cos, grad_sign = map(np.asarray, gradient_stats(model, xg, yg, xb - xg))
        stronger = stronger_stage(
            model, x[gap_idx], y[gap_idx], jax.random.fold_in(key, 1), ensemble.eps,
            list(a.restarts), bounds=bounds, batch_size=min(bs, len(gap_idx)),
        )  # fmt: skip
    monotone = np.all(np.diff(seg, axis=1) <= 1e-6, axis=1)
    fooled_upto = np.cumsum([int(s["fooled"].sum()) for s in stages])
    figures = _figures(
        fig_dir, wb_all, wb_gap, seg, ts, x[gap_idx], x_black - x[gap_idx], grad_sign,
        int(a.num_shown),
    )  # fmt: skip
    return {
        "num_examples": int(n),
        "eps": ensemble.eps,
        "components": [s["name"] for s in stages],
        "clean_accuracy": float(np.mean(clean)),
        "robust_after": {
            s["name"]: float(np.sum(clean) - fooled_upto[k]) / n for k, s in enumerate(stages)
        },
        "newly_fooled": {s["name"]: int(s["fooled"].sum()) for s in stages},
        "black_box_only": {
            "attack": black["name"],
            "count": int(len(gap_idx)),
            "fraction": float(len(gap_idx) / n),
            "indices": gap_idx.tolist(),
            "clean_margin": _summary(clean_margin[gap_idx]),
            "black_box_margin": _summary(black_margin),
            "white_box_best_margin": _summary(wb_gap),
            "segment_margins": seg.tolist(),
            "segment_monotone_fraction": float(np.mean(monotone)) if len(seg) else None,
            "zero_gradient_fraction": _summary(zero_frac),
            "sign_gradient_cosine": _summary(cos),
        },
        "gap_over_keys": gap_over_keys([gap_idx] + other_gaps, n),
        "robust_after_white_box": {
            "count": int(len(after_white)),
            "white_box_best_margin": _summary(wb_all),
            "fraction_below_0.5": float(np.mean(wb_all < 0.5)) if len(wb_all) else None,
        },
        "stronger_white_box": {
            str(r): {
                "fooled_of_black_box_only": int(v["fooled"].sum()),
                "gap_left": float((len(gap_idx) - int(v["fooled"].sum())) / n),
                "best_margin": _summary(v["best_margin"]),
            }
            for r, v in stronger.items()
        },
        "figures": figures,
    }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The black-box gap analysis (`--mode analyze`, ``analysis.name = 'black_box_gap'``).

    Returns the report dict also written to ``workdir/black_box_gap.json``.
    """
    from advjax import runs

    a = config.analysis
    start = time.time()
    model_config = _model_config(a)
    ensemble = _ensemble(a, model_config)
    model_dir = a.model.workdir or os.path.join(workdir, "model")
    trained = runs.train_or_load(model_config, model_dir)
    model = trained.model
    if model.takes_key:
        raise AnalysisError(
            "the model is randomised: the black-box gap analysis needs a deterministic model"
        )
    dataset = data.load_dataset(model_config.data)
    n = min(int(a.num_examples), len(dataset.test_x))
    report = analyse(
        model, ensemble, dataset.test_x[:n], dataset.test_y[:n], jax.random.key(int(config.seed)),
        bounds=tuple(dataset.info.bounds), a=a, fig_dir=os.path.join(workdir, "figures"),
    )  # fmt: skip
    report["figures"] = [os.path.relpath(p, workdir) for p in report["figures"]]
    report["settings"] = {
        "model_config": a.model.config,
        "model_workdir": model_dir,
        "model_step": int(trained.step),
        "ensemble": a.ensemble,
        "restarts": [int(r) for r in a.restarts],
        "other_keys": int(a.other_keys),
        "segment_points": int(a.segment_points),
        "seed": int(config.seed),
    }
    report["wall_seconds"] = time.time() - start
    report = jax.tree.map(lambda v: float(v) if isinstance(v, np.floating) else v, report)
    kit.write_report(os.path.join(workdir, "black_box_gap.json"), report)
    return report
