"""Benchmark of the interaction estimators: model evaluations per second and agreement.

Compares, on the small MNIST CNN with a 7x7 grid (n = 49):

(a) the batched estimator `interaction_deltas` (masks built on device, one vmapped model call
    per chunk) with the model's raw forward throughput at the same batch size (the limit);
(b) a loop in the style of the reference code: for every (pair, order) the masks and masked
    images are built on the host and the model is called once on that batch;
(c) exact Shapley interaction values at n = 10 (2 x 5 grid) against the `shapiq` package's
    ExactComputer on the same game: values must agree to 1e-6; the time ratio is printed.

    .venv/bin/pip install shapiq   # bench only, never imported by advjax
    .venv/bin/python bench/interactions.py [--quick]

Writes bench/results/interactions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from advjax import data, models  # noqa: E402
from advjax.analysis import interactions as itx  # noqa: E402
from advjax.compile import jit  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "interactions.json")


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up (compilation) call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def build_model(seed: int = 0):
    info = data.DatasetInfo("mnist", (28, 28, 1), 10)
    module = models.build_model(ml_collections.ConfigDict({"name": "small_cnn"}), info)
    variables = module.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))
    return jit(lambda x: module.apply(variables, x, train=False))


def sample_image(seed: int = 0) -> np.ndarray:
    try:
        ds = data.load_dataset(ml_collections.ConfigDict({"name": "mnist", "num_test": 1}))
        return ds.test_x[0], int(ds.test_y[0])
    except Exception:  # noqa: BLE001 - any image works for throughput
        return np.random.default_rng(seed).uniform(size=(28, 28, 1)).astype(np.float32), 0


def reference_loop(logits_fn, x, label, pairs, orders, key_seed, *, num_contexts, cells, baseline):
    """One host-built batch of 4 C masked images per (pair, order), one model call each."""
    rng = np.random.default_rng(key_seed)
    n = cells.max() + 1
    out = np.zeros((len(pairs), len(orders), num_contexts))
    for p, (i, j) in enumerate(pairs):
        others = np.array([k for k in range(n) if k not in (i, j)])
        for o, m in enumerate(orders):
            masks = np.zeros((num_contexts, 4, n), bool)
            for c in range(num_contexts):
                s = rng.choice(others, size=m, replace=False)
                masks[c, :, s] = True
            masks[:, 0, [i, j]] = True
            masks[:, 1, i] = True
            masks[:, 2, j] = True
            present = masks.reshape(-1, n)[:, cells][..., None]
            images = np.where(present, x[None], baseline[None]).astype(np.float32)
            logits = np.asarray(logits_fn(images), np.float64)
            top = logits.max(1)
            logp = logits[:, label] - top - np.log(np.exp(logits - top[:, None]).sum(1))
            v = logp.reshape(num_contexts, 4)
            out[p, o] = v[:, 0] - v[:, 1] - v[:, 2] + v[:, 3]
    return out


def make_estimator(logits_fn, label, grid, pairs, orders, *, num_contexts, chunk):
    @jit
    def estimator(img, key):
        game = itx.image_game(logits_fn, img, label, grid=grid, chunk_size=chunk)
        return itx.interaction_deltas(game, pairs, orders, key, num_contexts=num_contexts)

    return estimator


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer pairs and repeats")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else 3
    num_pairs, num_contexts = (4, 16) if args.quick else (10, 32)
    chunks = (64, 128, 512)

    logits_fn = build_model()
    x, label = sample_image()
    grid = (7, 7)
    n = 49
    orders = itx.orders_from_ratios([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], n)
    pairs = itx.sample_pairs(jax.random.key(0), grid, num_pairs)
    evals = len(pairs) * len(orders) * num_contexts * 4
    report = {
        "setup": {
            "model": "small_cnn (random init)",
            "grid": list(grid),
            "num_players": n,
            "num_pairs": num_pairs,
            "num_orders": len(orders),
            "num_contexts": num_contexts,
            "model_evaluations_per_call": evals,
            "chunk_sizes": list(chunks),
            "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
        }
    }

    # (a) batched estimator vs raw forward passes at the same batch size, per chunk size.
    img = jnp.asarray(x)
    report["batched_vs_raw_forward"] = {}
    estimators = {}
    for chunk in chunks:
        estimators[chunk] = estimator = make_estimator(
            logits_fn, label, grid, pairs, orders, num_contexts=num_contexts, chunk=chunk
        )
        t_est = best_time(lambda est=estimator: est(img, jax.random.key(1)), repeats)
        num_calls = -(-evals // chunk)
        batches = jnp.broadcast_to(img, (num_calls, chunk, *img.shape)) + 0.0
        raw = jit(lambda b: jax.lax.map(logits_fn, b))
        t_raw = best_time(lambda raw=raw, b=batches: raw(b), repeats)
        est_rate, raw_rate = evals / t_est, num_calls * chunk / t_raw
        report["batched_vs_raw_forward"][f"chunk_{chunk}"] = {
            "estimator_evals_per_s": est_rate,
            "raw_forward_evals_per_s": raw_rate,
            "slowdown": raw_rate / est_rate,
            "goal_max_slowdown": 1.3,
            "estimator_seconds": t_est,
            "raw_seconds": t_raw,
        }
    estimator = estimators[chunks[0]]
    t_est = report["batched_vs_raw_forward"][f"chunk_{chunks[0]}"]["estimator_seconds"]

    # (b) reference-style loop: one host-built batch per (pair, order).
    cells = itx.grid_cells((28, 28), grid)
    baseline = np.full_like(x, float(np.mean(x)))
    pairs_np = np.asarray(pairs)
    start = time.perf_counter()
    reference_loop(
        logits_fn,
        x,
        label,
        pairs_np[:1],
        orders[:1],
        0,
        num_contexts=num_contexts,
        cells=cells,
        baseline=baseline,
    )  # compile for batch 4 C
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        reference_loop(
            logits_fn,
            x,
            label,
            pairs_np,
            orders,
            0,
            num_contexts=num_contexts,
            cells=cells,
            baseline=baseline,
        )
        times.append(time.perf_counter() - start)
    t_loop = min(times)
    # Sanity: both estimate the same I^(m)(i, j); compare within combined standard errors.
    ref = itx.summarize_deltas(
        jnp.asarray(
            reference_loop(
                logits_fn,
                x,
                label,
                pairs_np,
                orders,
                1,
                num_contexts=num_contexts,
                cells=cells,
                baseline=baseline,
            )
        )
    )
    ours = itx.summarize_deltas(estimator(img, jax.random.key(1)))
    se = np.hypot(np.asarray(ref.stderr), np.asarray(ours.stderr))
    z = np.abs(np.asarray(ref.mean) - np.asarray(ours.mean)) / np.maximum(se, 1e-12)
    ref_batch = jnp.broadcast_to(img, (4 * num_contexts, *img.shape)) + 0.0
    t_raw_small = best_time(lambda: logits_fn(ref_batch), repeats * 5)
    report["reference_style_loop"] = {
        "loop_evals_per_s": evals / t_loop,
        "loop_batch_size": 4 * num_contexts,
        "raw_forward_evals_per_s_at_loop_batch": 4 * num_contexts / t_raw_small,
        "speedup_of_batched_estimator": t_loop / t_est,
        "batched_chunk_size_for_speedup": chunks[0],
        "loop_seconds": t_loop,
        "fraction_of_estimates_within_3_se_of_batched": float(np.mean(z <= 3)),
    }

    # (c) exact Shapley interaction index at n = 10 against shapiq.
    small_grid = (2, 5)
    m10 = 10
    game = itx.image_game(logits_fn, img, label, grid=small_grid, chunk_size=1024)
    masks10 = jnp.asarray(itx.all_masks(m10))

    def ours():
        table = np.asarray(itx.evaluate(game, masks10), np.float64)
        return itx.shapley_interaction_exact(table), itx.shapley_values_exact(table)

    ours()
    start = time.perf_counter()
    sii_ours, sv_ours = ours()
    t_ours = time.perf_counter() - start
    try:
        import shapiq

        def shapiq_game(coalitions):
            values = itx.evaluate(game, jnp.asarray(np.asarray(coalitions, bool)))
            return np.asarray(values, np.float64)

        computer = shapiq.ExactComputer(shapiq_game, n_players=m10)
        start = time.perf_counter()
        sii_ref = computer("SII", order=2)
        t_ref = time.perf_counter() - start
        lookup = sii_ref.dict_values
        pairs10 = itx.all_pairs(m10)
        ref = np.array([lookup.get((int(i), int(j)), 0.0) for i, j in pairs10])
        mine = sii_ours[pairs10[:, 0], pairs10[:, 1]]
        sv_ref = computer("SV", order=1).dict_values
        sv_err = max(abs(sv_ref.get((i,), 0.0) - sv_ours[i]) for i in range(m10))
        report["shapiq_exact_sii_n10"] = {
            "shapiq_version": getattr(shapiq, "__version__", None) or _dist_version("shapiq"),
            "max_abs_diff_sii": float(np.max(np.abs(ref - mine))),
            "max_abs_diff_shapley_values": float(sv_err),
            "agree_to_1e-6": bool(np.max(np.abs(ref - mine)) < 1e-6 and sv_err < 1e-6),
            "advjax_seconds": t_ours,
            "shapiq_seconds": t_ref,
            "shapiq_over_advjax_time": t_ref / t_ours,
            "note": "both include the 1024 model evaluations; shapiq's SII call also "
            "returns order-1 terms and the empty set",
        }
    except ImportError as err:
        report["shapiq_exact_sii_n10"] = {"skipped": f"shapiq not installed ({err})"}

    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    print(json.dumps(report, indent=2, sort_keys=True))
    return report


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
