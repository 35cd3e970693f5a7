"""Multi-order interactions of a standard and an adversarially trained model (Ren et al.).

``python launch/main.py --config configs/interactions.py --workdir DIR --mode analyze``
trains (or restores) the two models named in ``config.analysis.models`` through
`advjax.runs.train_or_load`, picks test images that both classify correctly and for which
the equal-strength attack reaches the logit-drop band on both, and estimates I^(m)(i, j) on
clean and adversarial images with shared pairs and contexts (common random numbers, so
differences between x and x_adv and between models are paired). It writes
``DIR/interactions.json`` and ``DIR/figures/*.png`` and checks the paper's two findings:

1. the attack changes high-order interactions more than low-order ones (mean
   |I(x) - I(x_adv)| in the high band minus the low band, paired per image and pair; also
   relative to the clean strength of each order);
2. the adversarially trained model relies more on low-order interactions (larger low-order
   strength, larger low-order strength relative to its mean over orders, a higher
   low-order disentanglement ratio).

The math lives in `advjax.analysis.interactions` and `advjax.attacks.equal_strength`.
"""

from __future__ import annotations

import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advjax import data, distributed, plots, registry
from advjax.analysis import interactions as itx
from advjax.attacks import equal_strength
from advjax.experiments import AnalysisError, kit
from advjax.models import as_model
from advjax.progress import progress_bar

REPO = kit.REPO
PAIR_KINDS = ("neighbour", "random")
# Whose output is the game value: the true class (reference --out_type GT) or the class the
# model predicts on x_adv (--out_type Target), for both x and x_adv.
LABELS = ("true", "adv_prediction")


# ---------------------------------------------------------------------------------------------
# Config handling
# ---------------------------------------------------------------------------------------------


def _check(cond: bool, key: str, value, allowed: str) -> None:
    if not cond:
        raise ValueError(f"config key 'analysis.{key}': got {value!r}; {allowed}")


def validate_analysis(a: ml_collections.ConfigDict) -> None:
    """Checks the ``config.analysis`` section before any compute."""
    _check(len(a.grid) == 2 and min(a.grid) >= 2, "grid", tuple(a.grid), "need (rows, cols) >= 2")
    registry.one_of(a.baseline, itx.BASELINES, key="analysis.baseline")
    registry.one_of(a.output, itx.OUTPUTS, key="analysis.output")
    registry.one_of(a.pairs, PAIR_KINDS, key="analysis.pairs")
    registry.one_of(a.label, LABELS, key="analysis.label")
    for key in ("num_images", "num_pairs", "num_contexts", "chunk_size"):
        _check(int(a[key]) >= 1, key, a[key], "must be >= 1")
    _check(
        len(a.ratios) >= 1 and all(0 <= r <= 1 for r in a.ratios),
        "ratios",
        list(a.ratios),
        "need ratios m/n in [0, 1]",
    )
    itx.order_bands(a.ratios, bands=tuple(a.bands))
    lo, hi = a.attack.band
    _check(0 <= lo < hi, "attack.band", tuple(a.attack.band), "need 0 <= lo < hi")
    _check(a.attack.eps > 0 and a.attack.step_size > 0, "attack.eps", a.attack.eps, "eps, step > 0")
    _check(
        set(a.models.keys()) == {"standard", "robust"},
        "models",
        list(a.models.keys()),
        "need exactly 'standard' and 'robust'",
    )
    for name in ("standard", "robust"):
        spec = a.models[name].config
        path = spec.partition(":")[0]
        _check(
            os.path.exists(path) or os.path.exists(os.path.join(REPO, path)),
            f"models.{name}.config",
            spec,
            "no such config file",
        )
    if a.exact_grid:
        _check(
            a.exact_grid[0] * a.exact_grid[1] <= 12,
            "exact_grid",
            tuple(a.exact_grid),
            "exact enumeration needs at most 12 cells (or [] to skip)",
        )


def validate(config: ml_collections.ConfigDict) -> None:
    """The analysis settings and both models' configs, before any compute (called by
    `advjax.configlib.validate`)."""
    from advjax import configlib

    a = config.analysis
    validate_analysis(a)
    for name in ("standard", "robust"):
        entry = a.models[name]
        configlib.validate(_model_config(entry.config, entry.get("overrides")))


def _model_config(spec: str, overrides) -> ml_collections.ConfigDict:
    return kit.load_sub_config(spec, overrides)


def load_models(a: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains or restores ``analysis.models.{standard, robust}`` (`runs.train_or_load`)."""
    from advjax import runs

    models = {}
    for name in ("standard", "robust"):
        entry = a.models[name]
        model_dir = entry.workdir or os.path.join(workdir, "models", name)
        config = _model_config(entry.config, entry.get("overrides"))
        models[name] = runs.train_or_load(config, model_dir)
    return models


# ---------------------------------------------------------------------------------------------
# Orchestration over plain arguments (testable without trained checkpoints)
# ---------------------------------------------------------------------------------------------


@jax.jit
def _logits(model, x):
    return model(x)


def select_and_attack(
    logits_fns: dict, x: np.ndarray, y: np.ndarray, key: jax.Array, a, *, bounds
) -> tuple[np.ndarray, dict, dict]:
    """Images correct for every model whose equal-strength attack lands in the band on all.

    Returns:
      (indices of the kept images (at most ``a.num_images``), x_adv per model for those,
      attack statistics per model over the whole pool).
    """
    ok = np.ones(len(x), bool)
    results, stats = {}, {}
    for k, (name, fn) in enumerate(logits_fns.items()):
        correct = (
            np.concatenate(
                [
                    np.asarray(jnp.argmax(_logits(as_model(fn), x[s : s + 500]), -1))
                    for s in range(0, len(x), 500)
                ]
            )
            == y
        )
        res = equal_strength.equal_strength_pgd(
            fn,
            jnp.asarray(x),
            jnp.asarray(y),
            jax.random.fold_in(key, k),
            eps=float(a.attack.eps),
            step_size=float(a.attack.step_size),
            max_steps=int(a.attack.max_steps),
            band=tuple(float(b) for b in a.attack.band),
            norm=a.attack.norm,
            init_std=float(a.attack.init_std),
            bounds=tuple(bounds),
        )
        in_band = np.asarray(res.in_band)
        results[name] = res
        delta = np.asarray(res.x_adv) - x
        stats[name] = {
            "pool_clean_accuracy": float(correct.mean()),
            "pool_in_band_rate_of_correct": float(in_band[correct].mean())
            if correct.any()
            else 0.0,
            "mean_steps": float(np.asarray(res.steps)[correct].mean()) if correct.any() else 0.0,
        }
        ok &= correct & in_band
        stats[name]["_delta"] = delta
    idx = balanced_first(np.flatnonzero(ok), y, int(a.num_images))
    x_adv = {}
    for name, res in results.items():
        x_adv[name] = np.asarray(res.x_adv)[idx]
        delta = stats[name].pop("_delta")[idx].reshape(len(idx), -1)
        stats[name].update(
            drop_mean=float(np.asarray(res.drop)[idx].mean()) if len(idx) else float("nan"),
            linf_mean=float(np.abs(delta).max(1).mean()) if len(idx) else float("nan"),
            l2_mean=float(np.linalg.norm(delta, axis=1).mean()) if len(idx) else float("nan"),
        )
    return idx, x_adv, stats


def balanced_first(candidates: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` candidates taken round-robin over classes (in pool order).

    Without it the kept images follow whichever class the band is easiest to reach on.
    """
    rank = np.zeros(len(candidates), int)
    seen: dict[int, int] = {}
    for k, c in enumerate(labels[candidates]):
        rank[k] = seen.get(int(c), 0)
        seen[int(c)] = rank[k] + 1
    order = np.lexsort((candidates, rank))
    return np.sort(candidates[order][:count])


def _game_settings(a, grid) -> tuple:
    """The static settings of the image game (hashable: a jit static argument)."""
    return (tuple(int(g) for g in grid), a.baseline, float(a.blur_sigma), a.output,
            int(a.chunk_size))  # fmt: skip


def _image_game(model, x, label, channel_mean, settings):
    grid, baseline, blur_sigma, output, chunk_size = settings
    return itx.image_game(
        model,
        x,
        label,
        grid=grid,
        baseline=baseline,
        channel_mean=channel_mean,
        blur_sigma=blur_sigma,
        output=output,
        chunk_size=chunk_size,
    )


# Module level, with the model as data and the settings static: the standard and the
# robust model of one architecture share every compiled estimator.
@functools.partial(jax.jit, static_argnames=("settings", "orders", "num_contexts"))
def _estimate(model, x, label, pairs, key, channel_mean, *, settings, orders, num_contexts):
    game = _image_game(model, x, label, channel_mean, settings)
    n = settings[0][0] * settings[0][1]
    deltas = itx.interaction_deltas(game, pairs, np.asarray(orders), key, num_contexts=num_contexts)
    ends = game(jnp.stack([jnp.zeros(n, bool), jnp.ones(n, bool)]))
    return deltas, ends


@functools.partial(jax.jit, static_argnames=("settings",))
def _exact_table(model, x, label, channel_mean, *, settings):
    masks = jnp.asarray(itx.all_masks(settings[0][0] * settings[0][1]))
    return _image_game(model, x, label, channel_mean, settings)(masks)


def make_image_estimator(model, a, *, channel_mean, orders: np.ndarray):
    """(x, label, pairs, key) -> (Delta v [P, M, C], v(empty), v(N)) for one model.

    ``model`` is an `advjax.models.Model` (or a logits function); one compiled program
    serves every model of the same architecture.
    """
    model = as_model(model)
    settings = _game_settings(a, a.grid)
    orders_key = tuple(int(o) for o in np.asarray(orders).ravel())

    def estimate(x, label, pairs, key):
        return _estimate(
            model, x, label, pairs, key, channel_mean,
            settings=settings, orders=orders_key, num_contexts=int(a.num_contexts),
        )  # fmt: skip

    return estimate


def make_exact_table(model, a, *, channel_mean):
    """(x, label) -> v(S) for all 2^n coalitions of the coarse ``exact_grid``."""
    model = as_model(model)
    settings = _game_settings(a, a.exact_grid)
    return lambda x, label: _exact_table(model, x, label, channel_mean, settings=settings)


def compute_interactions(
    logits_fns: dict, x: np.ndarray, y: np.ndarray, x_adv: dict, key: jax.Array, a, *, channel_mean
) -> dict:
    """Delta v on clean and adversarial images for every model, shared pairs and contexts.

    Returns:
      {model: {'clean'|'adv': {'mean', 'stderr', 'mean_abs'} [I, P, M], 'ends_*' [I, 2]}},
      and 'exact' decompositions on the coarse grid when ``a.exact_grid`` is set.
    """
    grid = tuple(int(g) for g in a.grid)
    n = grid[0] * grid[1]
    orders = itx.orders_from_ratios(a.ratios, n)
    key_pairs, key_ctx = jax.random.split(key)
    out = {}
    # Images are independent (pairs and contexts come from fold_in(key, image)): in a
    # multi-process run each process estimates every P-th image and the records are
    # gathered, so every process holds the single-process result.
    pid, num_procs = distributed.process_index(), distributed.process_count()
    for name, fn in logits_fns.items():
        estimate = make_image_estimator(fn, a, channel_mean=channel_mean, orders=orders)
        exact_table = make_exact_table(fn, a, channel_mean=channel_mean) if a.exact_grid else None
        labels = np.asarray(y)
        if a.label == "adv_prediction":
            labels = np.asarray(jnp.argmax(_logits(as_model(fn), jnp.asarray(x_adv[name])), -1))
        mine = {}
        images = range(pid, len(x), num_procs)
        for k in progress_bar(images, desc=f"interactions [{name}]", unit="img"):
            pairs = itx.sample_pairs(
                jax.random.fold_in(key_pairs, k),
                grid,
                int(a.num_pairs),
                neighbours=a.pairs == "neighbour",
            )
            ctx = jax.random.fold_in(key_ctx, k)
            one = {}
            for cond, img in (("clean", x[k]), ("adv", x_adv[name][k])):
                deltas, ends = estimate(jnp.asarray(img), int(labels[k]), pairs, ctx)
                est = itx.summarize_deltas(deltas)
                one[cond] = {
                    f: np.asarray(getattr(est, f), np.float64)
                    for f in ("mean", "stderr", "mean_abs")
                }
                one[f"ends_{cond}"] = np.asarray(ends, np.float64)
                if exact_table is not None:
                    table = np.asarray(exact_table(jnp.asarray(img), int(labels[k])), np.float64)
                    one[f"exact_{cond}"] = itx.decomposition_exact(table)
            mine[k] = one
        per_image = {}
        for part in distributed.allgather_objects(mine):
            per_image.update(part)
        rec = {}
        for cond in ("clean", "adv"):
            rec[cond] = {
                f: np.stack([per_image[k][cond][f] for k in range(len(x))])
                for f in ("mean", "stderr", "mean_abs")
            }
            rec[f"ends_{cond}"] = np.stack([per_image[k][f"ends_{cond}"] for k in range(len(x))])
            rec[f"exact_{cond}"] = [
                per_image[k][f"exact_{cond}"]
                for k in range(len(x))
                if f"exact_{cond}" in per_image[k]
            ]
        out[name] = rec
    return out


# ---------------------------------------------------------------------------------------------
# Summaries and the two findings
# ---------------------------------------------------------------------------------------------


def _mean_se(values) -> dict:
    v = np.asarray(values, np.float64).ravel()
    se = v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else float("nan")
    return {"mean": float(v.mean()), "stderr": float(se), "count": int(v.size)}


def _band_average(values: np.ndarray, labels: np.ndarray, band: str) -> np.ndarray:
    """Mean over the orders of ``band`` along the last axis (NaN if the band is empty)."""
    sel = labels == band
    return values[..., sel].mean(-1) if sel.any() else np.full(values.shape[:-1], np.nan)


def summarize(est: dict, a, n: int) -> dict:
    """All reported numbers from `compute_interactions` output."""
    ratios = np.asarray(a.ratios, np.float64)
    orders = itx.orders_from_ratios(a.ratios, n)
    bands = tuple(float(b) for b in a.bands)
    labels = np.array(itx.order_bands(ratios, bands=bands))
    out = {"models": {}}
    for name, rec in est.items():
        clean, adv = rec["clean"], rec["adv"]
        m = {}
        for cond, r in (("clean", clean), ("adv", adv)):
            raw = itx.interaction_strength(r["mean"], orders, n)
            weighted = itx.interaction_strength(r["mean"], orders, n, weighted=True)
            m[f"strength_{cond}"] = raw
            m[f"weighted_strength_{cond}"] = weighted
            m[f"strength_{cond}_bands"] = itx.band_means(raw["mean"], ratios, bands=bands)
            m[f"disentanglement_{cond}"] = itx.disentanglement_ratio(r["mean"], r["mean_abs"])
            m[f"disentanglement_{cond}_bands"] = itx.band_means(
                m[f"disentanglement_{cond}"], ratios, bands=bands
            )
            m[f"median_sampling_stderr_{cond}"] = float(np.median(r["stderr"]))
        change = np.abs(clean["mean"] - adv["mean"])  # [I, P, M]
        m["abs_change"] = itx.mean_std_stderr(change)
        m["abs_change_bands"] = itx.band_means(m["abs_change"]["mean"], ratios, bands=bands)
        m["utility_by_order"] = itx.attacking_utility_by_order(
            clean["mean"], adv["mean"], orders, n
        )
        utility = itx.attacking_utility(rec["ends_clean"], rec["ends_adv"])
        m["attacking_utility"] = _mean_se(utility)
        # Finding 1, paired per (image, pair): high-order minus low-order |I(x) - I(x_adv)|,
        # raw and relative to the clean strength at the same orders.
        high, low = _band_average(change, labels, "high"), _band_average(change, labels, "low")
        m["finding1_high_minus_low_abs_change"] = _mean_se(high - low)
        per_img_h = _band_average(change.mean(1), labels, "high")
        per_img_l = _band_average(change.mean(1), labels, "low")
        m["finding1_high_over_low_ratio"] = float(per_img_h.mean() / per_img_l.mean())
        # The same relative to each order's clean strength (scale-free across models).
        rel = change.mean((0, 1)) / np.maximum(np.abs(clean["mean"]).mean((0, 1)), 1e-30)
        m["relative_change"] = rel
        m["relative_change_bands"] = itx.band_means(rel, ratios, bands=bands)
        weighted_change = m["utility_by_order"]["abs_mean"]
        m["utility_abs_bands"] = itx.band_means(weighted_change, ratios, bands=bands)
        # Finding 2, per image: low-order strength and its share of the total strength.
        strength_img = np.abs(clean["mean"]).mean(1)  # [I, M]
        m["low_strength_per_image"] = _mean_se(_band_average(strength_img, labels, "low"))
        m["low_relative_strength_per_image"] = _mean_se(
            _band_average(strength_img, labels, "low") / strength_img.mean(-1)
        )
        dis_img = np.abs(clean["mean"]).mean(1) / np.maximum(clean["mean_abs"].mean(1), 1e-30)
        m["low_disentanglement_per_image"] = _mean_se(_band_average(dis_img, labels, "low"))
        if rec["exact_clean"]:
            ec, ea = rec["exact_clean"], rec["exact_adv"]
            m["exact_coarse"] = {
                "max_abs_residual": float(max(abs(d.residual) for d in ec + ea)),
                "order_terms_clean": _stack_stats([d.order_terms for d in ec]),
                "order_terms_change": _stack_stats(
                    [c.order_terms - d.order_terms for c, d in zip(ec, ea, strict=True)]
                ),
                "mu_change": _mean_se(
                    [c.mu.sum() - d.mu.sum() for c, d in zip(ec, ea, strict=True)]
                ),
            }
        out["models"][name] = m
    std, rob = out["models"]["standard"], out["models"]["robust"]

    def diff(key):
        d, s = (
            rob[key]["mean"] - std[key]["mean"],
            math.hypot(rob[key]["stderr"], std[key]["stderr"]),
        )
        return {"robust_minus_standard": d, "stderr": s, "z": d / s if s > 0 else float("nan")}

    out["finding1"] = {
        name: {
            "high_minus_low_abs_change": out["models"][name]["finding1_high_minus_low_abs_change"],
            "high_over_low_ratio": out["models"][name]["finding1_high_over_low_ratio"],
            "relative_change_bands": out["models"][name]["relative_change_bands"],
            "holds": bool(out["models"][name]["finding1_high_minus_low_abs_change"]["mean"] > 0),
        }
        for name in est
    }
    out["finding2"] = {
        "low_strength": diff("low_strength_per_image"),
        "low_relative_strength": diff("low_relative_strength_per_image"),
        "low_disentanglement": diff("low_disentanglement_per_image"),
    }
    out["finding2"]["holds"] = bool(
        out["finding2"]["low_relative_strength"]["robust_minus_standard"] > 0
        and out["finding2"]["low_disentanglement"]["robust_minus_standard"] > 0
    )
    return out


def _stack_stats(rows) -> dict:
    arr = np.stack(rows)
    se = arr.std(0, ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else np.full(arr.shape[1], np.nan)
    return {"mean": arr.mean(0), "stderr": se}


# ---------------------------------------------------------------------------------------------
# Figures and output
# ---------------------------------------------------------------------------------------------


def write_figures(summary: dict, a, fig_dir: str, *, x, x_adv) -> list[str]:
    ratios = list(a.ratios)
    ms = summary["models"]
    paths = []
    for key, ylabel in (("strength", "mean |I^(m)|"), ("weighted_strength", "mean w^(m) |I^(m)|")):
        curves = {
            f"{name} {cond}": ms[name][f"{key}_{cond}"] for name in ms for cond in ("clean", "adv")
        }
        paths.append(
            itx.plot_order_curves(
                os.path.join(fig_dir, f"{key}.png"),
                ratios,
                curves,
                ylabel=ylabel,
                title="interaction strength vs order",
            )
        )
    curves = {f"{name} |I(x) - I(x_adv)|": ms[name]["abs_change"] for name in ms}
    paths.append(
        itx.plot_order_curves(
            os.path.join(fig_dir, "attack_change.png"),
            ratios,
            curves,
            ylabel="mean |I(x) - I(x_adv)|",
            title="interactions changed by the attack",
        )
    )
    curves = {
        f"{name}": {
            "mean": ms[name]["utility_by_order"]["mean"],
            "stderr": ms[name]["utility_by_order"]["stderr"],
        }
        for name in ms
    }
    paths.append(
        itx.plot_order_curves(
            os.path.join(fig_dir, "utility_by_order.png"),
            ratios,
            curves,
            ylabel="(n-1-m) mean [I(x) - I(x_adv)]",
            title="attacking utility per order",
        )
    )
    curves = {
        f"{name} {cond}": ms[name][f"disentanglement_{cond}"]
        for name in ms
        for cond in ("clean", "adv")
    }
    paths.append(
        itx.plot_order_curves(
            os.path.join(fig_dir, "disentanglement.png"),
            ratios,
            curves,
            ylabel="|E_S dv| / E_S |dv|",
            title="disentanglement ratio",
        )
    )
    shown = min(6, len(x))
    if shown:
        rows = [x[:shown]] + [x_adv[name][:shown] for name in x_adv]
        rows += [0.5 + 2 * (x_adv[name][:shown] - x[:shown]) for name in x_adv]
        labels = ["clean"] + [f"x_adv {n}" for n in x_adv] + [f"delta {n}" for n in x_adv]
        paths.append(
            plots.image_grid(
                os.path.join(fig_dir, "examples.png"), np.stack(rows), row_labels=labels
            )
        )
    return paths


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    return obj


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The interactions analysis (`--mode analyze`, ``analysis.name = 'interactions'``).

    Args:
      config: experiment config (configs/interactions.py).
      workdir: output folder; models train under ``workdir/models/<name>`` unless
        ``analysis.models.<name>.workdir`` points at a finished run.

    Returns:
      The report dict also written to ``workdir/interactions.json``.
    """
    a = config.analysis
    start = time.time()
    models = load_models(a, workdir)
    dataset = data.load_dataset(config.data)
    channel_mean = jnp.asarray(dataset.train_x.mean(axis=(0, 1, 2)), jnp.float32)
    fns = {name: m.model for name, m in models.items()}
    key = jax.random.key(int(config.seed))
    idx, x_adv, attack_stats = select_and_attack(
        fns,
        dataset.test_x,
        dataset.test_y,
        jax.random.fold_in(key, 0),
        a,
        bounds=dataset.info.bounds,
    )
    if len(idx) < 2:
        raise AnalysisError(
            f"only {len(idx)} of {len(dataset.test_x)} test images are correct for both models "
            "with an in-band attack: raise config.data.num_test or analysis.attack.eps"
        )
    x, y = dataset.test_x[idx], dataset.test_y[idx]
    est = compute_interactions(
        fns, x, y, x_adv, jax.random.fold_in(key, 1), a, channel_mean=channel_mean
    )
    n = int(a.grid[0] * a.grid[1])
    summary = summarize(est, a, n)
    fig_dir = os.path.join(workdir, "figures")
    figures = write_figures(summary, a, fig_dir, x=x, x_adv=x_adv)
    f1, f2 = summary["finding1"], summary["finding2"]
    report = {
        "finding1_holds_standard": f1["standard"]["holds"],
        "finding1_holds_robust": f1["robust"]["holds"],
        "finding2_holds": f2["holds"],
        "finding1_standard_high_minus_low": f1["standard"]["high_minus_low_abs_change"]["mean"],
        "finding1_robust_high_minus_low": f1["robust"]["high_minus_low_abs_change"]["mean"],
        "finding2_low_relative_strength_diff": f2["low_relative_strength"]["robust_minus_standard"],
        "finding2_low_relative_strength_z": f2["low_relative_strength"]["z"],
        "finding2_low_disentanglement_diff": f2["low_disentanglement"]["robust_minus_standard"],
        "num_images": int(len(idx)),
        "num_players": n,
        "wall_seconds": time.time() - start,
        "settings": {
            "grid": list(a.grid),
            "ratios": list(a.ratios),
            "orders": itx.orders_from_ratios(a.ratios, n),
            "num_pairs": int(a.num_pairs),
            "pairs": a.pairs,
            "num_contexts": int(a.num_contexts),
            "baseline": a.baseline,
            "output": a.output,
            "label": a.label,
            "bands": list(a.bands),
            "attack": a.attack.to_dict(),
            "pool_size": int(len(dataset.test_x)),
            "seed": int(config.seed),
            "exact_grid": list(a.exact_grid),
            "model_steps": {name: int(m.step) for name, m in models.items()},
            "model_configs": {name: a.models[name].config for name in models},
        },
        "attack": attack_stats,
        "image_indices": idx,
        **summary,
        "figures": [os.path.relpath(p, workdir) for p in figures],
    }
    report["wall_seconds"] = time.time() - start
    report = _jsonable(report)
    kit.write_report(os.path.join(workdir, "interactions.json"), report)
    return report
