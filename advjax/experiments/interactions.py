"""Multi-order interactions of a standard and an adversarially trained model (Ren et al.).

``python launch/main.py --config configs/interactions.py --workdir DIR --mode analyze``
trains (or restores) the two models named in ``config.analysis.models`` through
`advjax.runs.train_or_load`, draws a pool of test images (``analysis.pool_size``, seeded by
``config.seed``), reports both models' clean and PGD accuracy on it, picks images that both
classify correctly and for which the equal-strength attack reaches the logit-drop band on
both, and samples Delta v(i, j, S) on clean and adversarial images with shared pairs and
contexts (common random numbers, so differences between x and x_adv and between models are
paired), for every game output of ``analysis.outputs`` from the same forward passes. It
writes ``DIR/interactions.json`` and ``DIR/figures/*.png`` with, per output and model:

1. the attack's change per order, E[(I(x) - I(x_adv))^2] estimated without the sampling
   noise floor (`itx.squared_mean_unbiased` over the contexts; the plain squared mean and
   its floor are reported next to it), and its high-band minus low-band difference;
2. the interaction strength per order, E[I^2] (noise-corrected), its share in the low and
   the high band, the sign consistency E[I^2] / E[dv^2] and the paper's disentanglement
   ratio;
3. the exact decomposition of v(N) - v(empty) on a coarse grid (``analysis.exact_grid``):
   the attacking utility per order. The per-order term estimated from sampled pairs is
   reported only for pairs drawn uniformly from all pairs (``analysis.pairs = 'random'``);
   neighbouring pairs do not estimate it.

`advjax.findings.ren` turns the reports of several seeds into the paper's findings. The
math lives in `advjax.analysis.interactions` and `advjax.attacks.equal_strength`.
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
from advjax.compile import jit
from advjax.experiments import AnalysisError, kit
from advjax.models import as_model
from advjax.progress import progress_bar

PAIR_KINDS = ("neighbour", "random")
# Whose output is the game value: the true class (reference --out_type GT) or the class the
# model predicts on x_adv (--out_type Target), for both x and x_adv.
LABELS = ("true", "adv_prediction")


# ---------------------------------------------------------------------------------------------
# Config handling
# ---------------------------------------------------------------------------------------------


_check = kit.check


def validate_analysis(a: ml_collections.ConfigDict) -> None:
    """Checks the ``config.analysis`` section before any compute."""
    _check(len(a.grid) == 2 and min(a.grid) >= 2, "grid", tuple(a.grid), "need (rows, cols) >= 2")
    registry.one_of(a.baseline, itx.BASELINES, key="analysis.baseline")
    _check(len(a.outputs) >= 1, "outputs", list(a.outputs), f"need names from {itx.OUTPUTS}")
    for output in a.outputs:
        registry.one_of(output, itx.OUTPUTS, key="analysis.outputs")
    _check(int(a.pool_size) >= 0, "pool_size", a.pool_size, "must be >= 0 (0: all test images)")
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
        kit.check_config_file(a.models[name].config, f"models.{name}.config")
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


@jit
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


def _outputs(a) -> tuple[str, ...]:
    return tuple(str(o) for o in a.outputs)


def _game_settings(a, grid) -> tuple:
    """The static settings of the image game (hashable: a jit static argument)."""
    return (tuple(int(g) for g in grid), a.baseline, float(a.blur_sigma), _outputs(a),
            int(a.chunk_size))  # fmt: skip


def _image_game(model, x, label, channel_mean, settings):
    grid, baseline, blur_sigma, outputs, chunk_size = settings
    return itx.image_game(
        model,
        x,
        label,
        grid=grid,
        baseline=baseline,
        channel_mean=channel_mean,
        blur_sigma=blur_sigma,
        output=outputs,
        chunk_size=chunk_size,
    )


# Module level, with the model as data and the settings static: the standard and the
# robust model of one architecture share every compiled estimator.
@functools.partial(jit, static_argnames=("settings", "orders", "num_contexts"))
def _estimate(model, x, label, pairs, key, channel_mean, *, settings, orders, num_contexts):
    game = _image_game(model, x, label, channel_mean, settings)
    n = settings[0][0] * settings[0][1]
    deltas = itx.interaction_deltas(game, pairs, np.asarray(orders), key, num_contexts=num_contexts)
    ends = game(jnp.stack([jnp.zeros(n, bool), jnp.ones(n, bool)]))  # [2, K]
    return deltas, ends.T


@functools.partial(jit, static_argnames=("settings",))
def _exact_table(model, x, label, channel_mean, *, settings):
    masks = jnp.asarray(itx.all_masks(settings[0][0] * settings[0][1]))
    return _image_game(model, x, label, channel_mean, settings)(masks).T  # [K, 2^n]


def make_image_estimator(model, a, *, channel_mean, orders: np.ndarray):
    """(x, label, pairs, key) -> (Delta v [K, P, M, C], (v(empty), v(N)) [K, 2]) for one
    model, one row per output of ``a.outputs`` (all from the same forward passes).

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
    """(x, label) -> v(S) [K, 2^n] for all coalitions of the coarse ``exact_grid``."""
    model = as_model(model)
    settings = _game_settings(a, a.exact_grid)
    return lambda x, label: _exact_table(model, x, label, channel_mean, settings=settings)


def compute_interactions(
    logits_fns: dict, x: np.ndarray, y: np.ndarray, x_adv: dict, key: jax.Array, a, *, channel_mean
) -> dict:
    """Delta v on clean and adversarial images for every model, shared pairs and contexts.

    Returns:
      {output: {model: {'clean'|'adv': {'deltas' [I, P, M, C], 'ends' [I, 2],
      'exact' (list of `itx.Decomposition` per image on the coarse ``a.exact_grid``, empty
      without one)}}}} for every output of ``a.outputs``.
    """
    grid = tuple(int(g) for g in a.grid)
    n = grid[0] * grid[1]
    outputs = _outputs(a)
    orders = itx.orders_from_ratios(a.ratios, n)
    key_pairs, key_ctx = jax.random.split(key)
    out = {o: {} for o in outputs}
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
                one[cond] = {"deltas": np.asarray(deltas), "ends": np.asarray(ends, np.float64)}
                if exact_table is not None:
                    tables = np.asarray(exact_table(jnp.asarray(img), int(labels[k])), np.float64)
                    one[cond]["exact"] = [itx.decomposition_exact(t) for t in tables]
            mine[k] = one
        per_image = {}
        for part in distributed.allgather_objects(mine):
            per_image.update(part)
        for o_idx, o in enumerate(outputs):
            rec = {}
            for cond in ("clean", "adv"):
                rows = [per_image[k][cond] for k in range(len(x))]
                rec[cond] = {
                    "deltas": np.stack([r["deltas"][o_idx] for r in rows]),
                    "ends": np.stack([r["ends"][o_idx] for r in rows]),
                    "exact": [r["exact"][o_idx] for r in rows if "exact" in r],
                }
            out[o][name] = rec
    return out


# ---------------------------------------------------------------------------------------------
# Summaries and the findings
# ---------------------------------------------------------------------------------------------


def _mean_se(values) -> dict:
    v = np.asarray(values, np.float64).ravel()
    se = v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else float("nan")
    return {"mean": float(v.mean()), "stderr": float(se), "count": int(v.size)}


def _band_average(values: np.ndarray, labels: np.ndarray, band: str) -> np.ndarray:
    """Mean over the orders of ``band`` along the last axis (NaN if the band is empty)."""
    sel = labels == band
    return values[..., sel].mean(-1) if sel.any() else np.full(values.shape[:-1], np.nan)


def _per_image_curve(values: np.ndarray) -> dict:
    """{'mean', 'std', 'stderr'} [M] of [I, P, M] values: pairs averaged within an image,
    the interval over images (pairs of one image are not independent)."""
    return itx.mean_std_stderr(np.asarray(values, np.float64).mean(1))


def exact_order_ratios(num_players: int) -> np.ndarray:
    """r = m / (n - 2) of every order m = 0 .. n-2 of an exact game (the reference code's
    m = int((n - 2) r), inverted), so that the exact grid's orders share the bands."""
    return np.arange(num_players - 1) / max(num_players - 2, 1)


def summarize_model(rec: dict, a, n: int) -> dict:
    """The reported numbers of one model and one output (``rec`` from `compute_interactions`).

    Squared interactions and squared changes use `itx.squared_mean_unbiased` over the
    contexts (noise floor removed); the paper's noise-biased statistics (mean |I|, the
    disentanglement ratio) are reported next to them.
    """
    ratios = np.asarray(a.ratios, np.float64)
    orders = itx.orders_from_ratios(a.ratios, n)
    bands = tuple(float(b) for b in a.bands)
    labels = np.array(itx.order_bands(ratios, bands=bands))
    clean, adv = rec["clean"]["deltas"], rec["adv"]["deltas"]  # [I, P, M, C]
    m = {}
    for cond, d in (("clean", clean), ("adv", adv)):
        mean = d.mean(-1)
        m[f"strength_{cond}"] = itx.interaction_strength(mean, orders, n)  # the paper's |I|
        m[f"weighted_strength_{cond}"] = itx.interaction_strength(mean, orders, n, weighted=True)
        sq = itx.squared_mean_unbiased(d)  # [I, P, M], unbiased I^2
        m[f"strength_sq_{cond}"] = _per_image_curve(sq)
        m[f"strength_sq_{cond}_bands"] = itx.band_means(
            m[f"strength_sq_{cond}"]["mean"], ratios, bands=bands
        )
        m[f"disentanglement_{cond}"] = itx.disentanglement_ratio(mean, np.abs(d).mean(-1))
        m[f"disentanglement_{cond}_bands"] = itx.band_means(
            m[f"disentanglement_{cond}"], ratios, bands=bands
        )
        # Noise-free form of the sign consistency: E_pairs I^2 / E_pairs E_S Delta v^2.
        consistency = sq.mean((0, 1)) / np.maximum((d.astype(np.float64) ** 2).mean((0, 1, 3)),
                                                   1e-30)  # fmt: skip
        m[f"consistency_{cond}"] = consistency
        m[f"consistency_{cond}_bands"] = itx.band_means(consistency, ratios, bands=bands)
        m[f"median_sampling_stderr_{cond}"] = float(
            np.median(d.std(-1, ddof=1) / math.sqrt(d.shape[-1]))
        )
    # Finding 1: how much the attack changes I^(m), on shared contexts (paired differences).
    diff = clean.astype(np.float64) - adv.astype(np.float64)  # [I, P, M, C]
    change_sq = itx.squared_mean_unbiased(diff)  # unbiased (I(x) - I(x_adv))^2
    naive_sq = diff.mean(-1) ** 2  # biased upwards by Var / C
    m["change_sq"] = _per_image_curve(change_sq)
    m["change_sq_naive"] = _per_image_curve(naive_sq)
    m["change_sq_split_half"] = _per_image_curve(itx.split_half_product(diff))
    m["change_noise_floor"] = m["change_sq_naive"]["mean"] - m["change_sq"]["mean"]
    m["abs_change"] = _per_image_curve(np.abs(diff.mean(-1)))  # the noise-biased statistic
    m["change_sq_bands"] = itx.band_means(m["change_sq"]["mean"], ratios, bands=bands)
    per_image = change_sq.mean(1)  # [I, M]
    high, low = _band_average(per_image, labels, "high"), _band_average(per_image, labels, "low")
    m["finding1_high_minus_low_change_sq"] = _mean_se(high - low)
    m["finding1_high_over_low_change_sq"] = float(high.mean() / low.mean())
    naive_img = naive_sq.mean(1)
    m["finding1_naive_high_minus_low"] = _mean_se(
        _band_average(naive_img, labels, "high") - _band_average(naive_img, labels, "low")
    )
    # Relative to the clean strength of each order (scale-free across models).
    rel = m["change_sq"]["mean"] / np.maximum(np.abs(m["strength_sq_clean"]["mean"]), 1e-30)
    m["relative_change_sq"] = rel
    m["relative_change_sq_bands"] = itx.band_means(rel, ratios, bands=bands)
    # Attacking utility: v(N) - v(empty) on x minus on x_adv (fine grid).
    m["attacking_utility"] = _mean_se(
        itx.attacking_utility(rec["clean"]["ends"], rec["adv"]["ends"])
    )
    if a.pairs == "random":  # pairs uniform over all pairs: n (n - 1) x mean is unbiased
        m["utility_by_order_sampled"] = itx.attacking_utility_by_order(
            clean.mean(-1), adv.mean(-1), orders, n
        )
    # Finding 2: the share of the interaction strength in the low and the high band.
    sq_img = itx.squared_mean_unbiased(clean).mean(1)  # [I, M]
    total = sq_img.mean()
    m["low_share"] = float(_band_average(sq_img, labels, "low").mean() / total)
    m["high_share"] = float(_band_average(sq_img, labels, "high").mean() / total)
    m["low_strength_sq"] = _mean_se(_band_average(sq_img, labels, "low"))
    m["high_strength_sq"] = _mean_se(_band_average(sq_img, labels, "high"))
    if rec["clean"]["exact"]:
        ec, ea = rec["clean"]["exact"], rec["adv"]["exact"]
        ne = len(ec[0].mu)
        e_labels = np.array(itx.order_bands(exact_order_ratios(ne), bands=bands))
        change_terms = np.stack(
            [c.order_terms - d.order_terms for c, d in zip(ec, ea, strict=True)]
        )
        m["exact_coarse"] = {
            "num_players": int(ne),
            "ratios": exact_order_ratios(ne),
            "max_abs_residual": float(max(abs(d.residual) for d in ec + ea)),
            "order_terms_clean": _stack_stats([d.order_terms for d in ec]),
            "order_terms_change": _stack_stats(list(change_terms)),
            "mu_change": _mean_se([c.mu.sum() - d.mu.sum() for c, d in zip(ec, ea, strict=True)]),
            "utility": _mean_se([c.total - d.total for c, d in zip(ec, ea, strict=True)]),
            # Signed utility carried by the high band minus the low band, per image.
            "high_minus_low": _mean_se(
                change_terms[:, e_labels == "high"].sum(1)
                - change_terms[:, e_labels == "low"].sum(1)
            ),
            "band_sums": {
                b: _mean_se(change_terms[:, e_labels == b].sum(1))
                for b in ("low", "middle", "high")
            },
        }
    return m


def summarize(est: dict, a, n: int) -> dict:
    """All reported numbers of `compute_interactions` output, per output and model, and the
    robust-minus-standard differences of finding 2."""
    out = {}
    for output, by_model in est.items():
        models = {name: summarize_model(rec, a, n) for name, rec in by_model.items()}
        std, rob = models["standard"], models["robust"]

        def diff(key, band, std=std, rob=rob):
            return rob[key][band] - std[key][band]

        out[output] = {
            "models": models,
            "finding2": {
                "high_share_robust_minus_standard": rob["high_share"] - std["high_share"],
                "low_share_robust_minus_standard": rob["low_share"] - std["low_share"],
                "low_consistency_robust_minus_standard": diff("consistency_clean_bands", "low"),
                "low_disentanglement_robust_minus_standard": diff(
                    "disentanglement_clean_bands", "low"
                ),
            },
        }
    return out


def _stack_stats(rows) -> dict:
    arr = np.stack(rows)
    se = arr.std(0, ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else np.full(arr.shape[1], np.nan)
    return {"mean": arr.mean(0), "stderr": se}


# ---------------------------------------------------------------------------------------------
# Figures and output
# ---------------------------------------------------------------------------------------------


def _rms(curve: dict) -> dict:
    """sqrt of a mean-square curve (negative estimates shown as 0), SE by the delta method."""
    mean = np.maximum(np.asarray(curve["mean"]), 0.0)
    root = np.sqrt(mean)
    return {"mean": root, "stderr": np.asarray(curve["stderr"]) / np.maximum(2 * root, 1e-12)}


def write_figures(summary: dict, a, fig_dir: str, *, x, x_adv) -> list[str]:
    ratios = list(a.ratios)
    paths = []
    for output, s in summary.items():
        ms = s["models"]
        curves = {
            f"{name} {cond}": _rms(ms[name][f"strength_sq_{cond}"])
            for name in ms
            for cond in ("clean", "adv")
        }
        paths.append(itx.plot_order_curves(
            os.path.join(fig_dir, f"strength_{output}.png"), ratios, curves,
            ylabel="RMS I^(m) (noise-corrected)", title=f"interaction strength, v = {output}",
        ))  # fmt: skip
        curves = {}
        for name in ms:
            curves[f"{name} unbiased"] = _rms(ms[name]["change_sq"])
            curves[f"{name} naive"] = _rms(ms[name]["change_sq_naive"])
        paths.append(itx.plot_order_curves(
            os.path.join(fig_dir, f"attack_change_{output}.png"), ratios, curves,
            ylabel="RMS [I(x) - I(x_adv)]",
            title=f"change by the attack, v = {output} (naive: with noise floor)",
        ))  # fmt: skip
        curves = {
            f"{name} {cond}": ms[name][f"consistency_{cond}"]
            for name in ms
            for cond in ("clean", "adv")
        }
        paths.append(itx.plot_order_curves(
            os.path.join(fig_dir, f"consistency_{output}.png"), ratios, curves,
            ylabel="E I^2 / E dv^2", title=f"sign consistency across contexts, v = {output}",
        ))  # fmt: skip
        exact = {name: ms[name]["exact_coarse"] for name in ms if "exact_coarse" in ms[name]}
        if exact:
            first = next(iter(exact.values()))
            paths.append(itx.plot_order_curves(
                os.path.join(fig_dir, f"utility_by_order_{output}.png"), list(first["ratios"]),
                {name: e["order_terms_change"] for name, e in exact.items()},
                ylabel="sum_{i!=j} w^(m) [I(x) - I(x_adv)]",
                title=f"attacking utility per order, exact, n = {first['num_players']}",
            ))  # fmt: skip
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


def pool_indices(num_test: int, pool_size: int, seed: int) -> np.ndarray:
    """The test images scanned for examples: all in order (``pool_size`` 0) or a sorted random
    subset of ``pool_size`` drawn with ``seed`` (so that seeds see different images)."""
    if pool_size <= 0 or pool_size >= num_test:
        return np.arange(num_test)
    return np.sort(np.random.default_rng(seed).choice(num_test, pool_size, replace=False))


def robust_accuracy(models: dict, x: np.ndarray, y: np.ndarray, key: jax.Array, a, *, bounds):
    """Clean and PGD accuracy of every model on the pool (attack ``a.robust_eval``)."""
    from advjax import evaluation
    from advjax.attacks import build_attack

    cfg = a.robust_eval
    attack = build_attack(cfg)
    out = {}
    for k, (name, model) in enumerate(models.items()):
        out[name] = {
            "clean": evaluation.accuracy(model, x, y, bounds=bounds),
            "pgd": evaluation.accuracy(
                model, x, y, attack=attack, key=jax.random.fold_in(key, k), bounds=bounds
            ),
            "num_examples": int(len(x)),
            "attack": f"PGD-{int(cfg.num_steps)} {cfg.norm} eps {float(cfg.eps)} step "
            f"{float(cfg.step_size)}, {int(cfg.num_restarts)} restart(s), loss {cfg.loss}",
        }
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The interactions analysis (`--mode analyze`, ``analysis.name = 'interactions'``).

    Args:
      config: experiment config (configs/interactions.py).
      workdir: output folder; models train under ``workdir/models/<name>`` unless
        ``analysis.models.<name>.workdir`` points at a run folder (trained there if absent).

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
    pool = pool_indices(len(dataset.test_x), int(a.pool_size), int(config.seed))
    pool_x, pool_y = dataset.test_x[pool], dataset.test_y[pool]
    idx, x_adv, attack_stats = select_and_attack(
        fns, pool_x, pool_y, jax.random.fold_in(key, 0), a, bounds=dataset.info.bounds
    )
    if len(idx) < 2:
        raise AnalysisError(
            f"only {len(idx)} of {len(pool)} test images are correct for both models "
            "with an in-band attack: raise config.data.num_test or analysis.attack.eps"
        )
    accuracy = robust_accuracy(
        fns, pool_x, pool_y, jax.random.fold_in(key, 2), a, bounds=dataset.info.bounds
    )
    x, y = pool_x[idx], pool_y[idx]
    est = compute_interactions(
        fns, x, y, x_adv, jax.random.fold_in(key, 1), a, channel_mean=channel_mean
    )
    n = int(a.grid[0] * a.grid[1])
    summary = summarize(est, a, n)
    fig_dir = os.path.join(workdir, "figures")
    figures = write_figures(summary, a, fig_dir, x=x, x_adv=x_adv)
    report = {
        "num_images": int(len(idx)),
        "num_players": n,
        "settings": {
            "grid": list(a.grid),
            "ratios": list(a.ratios),
            "orders": itx.orders_from_ratios(a.ratios, n),
            "num_pairs": int(a.num_pairs),
            "pairs": a.pairs,
            "num_contexts": int(a.num_contexts),
            "baseline": a.baseline,
            "outputs": list(_outputs(a)),
            "label": a.label,
            "bands": list(a.bands),
            "attack": a.attack.to_dict(),
            "pool_size": int(len(pool)),
            "seed": int(config.seed),
            "exact_grid": list(a.exact_grid),
            "model_steps": {name: int(m.step) for name, m in models.items()},
            "model_configs": {name: a.models[name].config for name in models},
        },
        "robust_accuracy": accuracy,
        "attack": attack_stats,
        "image_indices": pool[idx],
        "by_output": summary,
        "figures": [os.path.relpath(p, workdir) for p in figures],
    }
    report["wall_seconds"] = time.time() - start
    report = _jsonable(report)
    kit.write_report(os.path.join(workdir, "interactions.json"), report)
    return report
