"""Benchmark: advjax's KSG estimator against scikit-learn's ``mutual_info_regression``.

Both implement Kraskov et al. (2004) estimator 1. scikit-learn standardises each variable
to unit variance, adds 1e-10-scale noise to break ties and clips the estimate at 0; the
data here are standardised first so both see the same points. advjax searches
neighbours exactly by streaming O(N^2) distances over query chunks (jitted); scikit-learn
uses KD-trees (O(N log N)). For n in {1k, 5k, 20k} and rho in {0, 0.5, 0.9} this records
both estimates, the truth -log(1 - rho^2)/2, wall times (median of repeats, compilation
excluded and reported separately) and the log-log slope of time against n.

    .venv/bin/python bench/information.py [--out bench/results/information.json]

scikit-learn is a benchmark-only dependency (``pip install scikit-learn``); advjax never
imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import sklearn  # noqa: E402
from sklearn.feature_selection import mutual_info_regression  # noqa: E402

from advjax.analysis.mutual_information import ksg_mi  # noqa: E402

SIZES = (1000, 5000, 20000)
RHOS = (0.0, 0.5, 0.9)
K = 3


def sample(rho: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal((2, n))
    x, z = u, rho * u + math.sqrt(1 - rho**2) * v
    standardise = lambda a: (a - a.mean()) / a.std()  # noqa: E731
    return standardise(x), standardise(z)


def timed(fn, repeats: int) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return float(value), float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/information.json")
    parser.add_argument("--chunk_size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = []
    for n in SIZES:
        for rho in RHOS:
            x, z = sample(rho, n, seed=n + int(100 * rho))
            xs, zs = x.astype(np.float32)[:, None], z.astype(np.float32)[:, None]
            t = time.perf_counter()
            ksg_mi(xs, zs, k=K, chunk_size=args.chunk_size).block_until_ready()
            first_call = time.perf_counter() - t
            ours, t_ours = timed(
                lambda xs=xs, zs=zs: ksg_mi(
                    xs, zs, k=K, chunk_size=args.chunk_size
                ).block_until_ready(),
                args.repeats,
            )
            theirs, t_theirs = timed(
                lambda x=x, z=z: mutual_info_regression(
                    x[:, None], z, n_neighbors=K, random_state=0
                )[0],
                args.repeats,
            )
            truth = -0.5 * math.log(1 - rho**2)
            rows.append(
                {
                    "n": n,
                    "rho": rho,
                    "truth": truth,
                    "advjax_ksg": ours,
                    "sklearn": theirs,
                    "abs_difference": abs(max(ours, 0.0) - theirs),
                    "advjax_abs_error": abs(ours - truth),
                    "sklearn_abs_error": abs(theirs - truth),
                    "advjax_seconds": t_ours,
                    "advjax_first_call_seconds": first_call,
                    "sklearn_seconds": t_theirs,
                    "time_ratio_advjax_over_sklearn": t_ours / t_theirs,
                }
            )
            print(json.dumps(rows[-1]))

    def slope(key: str) -> float:
        ns = np.array(SIZES, float)
        ts = np.array([np.mean([r[key] for r in rows if r["n"] == n]) for n in SIZES])
        return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])

    result = {
        "benchmark": "KSG estimator 1 (k = 3): advjax.analysis.mutual_information.ksg_mi vs "
        "sklearn.feature_selection.mutual_info_regression",
        "data": "bivariate standard Gaussian with correlation rho, each variable standardised",
        "k": K,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "rows": rows,
        "max_abs_difference": max(r["abs_difference"] for r in rows),
        "time_growth_exponent": {
            "advjax": slope("advjax_seconds"),
            "sklearn": slope("sklearn_seconds"),
        },
        "environment": {
            "jax": jax.__version__,
            "sklearn": sklearn.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()),
        },
        "note": "Negative advjax estimates are compared after clipping at 0, as scikit-learn "
        "clips. Times on a shared CPU; compare ratios, not absolute values.",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("max_abs_difference", "time_growth_exponent")}))


if __name__ == "__main__":
    main()
