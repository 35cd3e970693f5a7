"""Benchmark: advjax's KSG estimator against scikit-learn's ``mutual_info_regression``.

Both implement Kraskov et al. (2004) estimator 1 with the same conventions (max-norm,
marginal counts within nextafter(eps, 0), digamma terms); scikit-learn also rescales
each variable to unit variance, adds 1e-10-scale noise and clips at 0. The inputs are
standardised float32 samples of a bivariate Gaussian with correlation rho; scikit-learn
gets the same values widened to float64. Agreement is measured against scikit-learn's
estimator core (``_compute_mi_cc``) on exactly those values, and advjax is called with
``clip_at_zero=True``; the public function's estimate (on its rescaled, noised copy) is
recorded too.

Times: per (n, rho), one compiling call of advjax (reported as compile time), then
interleaved rounds of advjax, ``mutual_info_regression`` and ``_compute_mi_cc`` in
alternating order; medians and the ratio advjax / scikit-learn. Nothing in the
environment is set: this is what a user gets. The machine's load average is recorded
before and after.

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
from sklearn.feature_selection._mutual_info import _compute_mi_cc  # noqa: E402

from advjax.analysis.mutual_information import ksg_mi  # noqa: E402

SIZES = (1000, 5000, 20000)
RHOS = (0.0, 0.5, 0.9)
K = 3


def sample(rho: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised float32 samples of a bivariate Gaussian with correlation rho."""
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal((2, n))
    x, z = u, rho * u + math.sqrt(1 - rho**2) * v
    standardise = lambda a: ((a - a.mean()) / a.std()).astype(np.float32)  # noqa: E731
    return standardise(x), standardise(z)


def seconds(fn) -> tuple[float, float]:
    t = time.perf_counter()
    value = fn()
    return float(value), time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/information.json")
    parser.add_argument("--chunk_size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    load_before = list(os.getloadavg())

    rows = []
    for n in SIZES:
        for rho in RHOS:
            x, z = sample(rho, n, seed=n + int(100 * rho))
            x64, z64 = x.astype(np.float64), z.astype(np.float64)
            ours_fn = lambda x=x, z=z: ksg_mi(  # noqa: E731
                x[:, None], z[:, None], k=K, chunk_size=args.chunk_size, clip_at_zero=True
            ).block_until_ready()
            public_fn = lambda x=x64, z=z64: mutual_info_regression(  # noqa: E731
                x[:, None], z, n_neighbors=K, random_state=0
            )[0]
            core_fn = lambda x=x64, z=z64: _compute_mi_cc(x, z, K)  # noqa: E731
            _, compile_seconds = seconds(ours_fn)
            times = {"advjax": [], "sklearn": [], "sklearn_core": []}
            fns = {"advjax": ours_fn, "sklearn": public_fn, "sklearn_core": core_fn}
            values = {}
            for r in range(args.rounds):
                names = list(fns) if r % 2 == 0 else list(fns)[::-1]
                for name in names:
                    values[name], t = seconds(fns[name])
                    times[name].append(t)
            med = {name: float(np.median(ts)) for name, ts in times.items()}
            rows.append(
                {
                    "n": n,
                    "rho": rho,
                    "truth": -0.5 * math.log(1 - rho**2),
                    "advjax": values["advjax"],
                    "sklearn_core_same_points": values["sklearn_core"],
                    "sklearn_public_noised": values["sklearn"],
                    "abs_difference": abs(values["advjax"] - values["sklearn_core"]),
                    "abs_difference_public": abs(values["advjax"] - values["sklearn"]),
                    "advjax_median_seconds": med["advjax"],
                    "advjax_first_call_seconds": compile_seconds,
                    "sklearn_median_seconds": med["sklearn"],
                    "sklearn_core_median_seconds": med["sklearn_core"],
                    "ratio_advjax_over_sklearn": med["advjax"] / med["sklearn"],
                    "ratio_advjax_over_sklearn_core": med["advjax"] / med["sklearn_core"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    result = {
        "benchmark": "KSG estimator 1 (k = 3): advjax.analysis.mutual_information.ksg_mi "
        "(method 'auto' = 'sorted' on CPU) vs sklearn.feature_selection.mutual_info_regression",
        "data": "bivariate standard Gaussian with correlation rho, each variable standardised, "
        "float32 (scikit-learn gets the same values as float64)",
        "k": K,
        "chunk_size": args.chunk_size,
        "rounds": args.rounds,
        "rows": rows,
        "max_abs_difference": max(r["abs_difference"] for r in rows),
        "max_ratio_advjax_over_sklearn": max(r["ratio_advjax_over_sklearn"] for r in rows),
        "max_ratio_advjax_over_sklearn_core": max(
            r["ratio_advjax_over_sklearn_core"] for r in rows
        ),
        "environment": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "sklearn": sklearn.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
        "note": "abs_difference compares advjax with scikit-learn's estimator core on the "
        "same points; abs_difference_public with mutual_info_regression, which rescales and "
        "adds 1e-10 noise first. First-call seconds include compilation. Times are medians "
        "of interleaved rounds on a shared CPU; compare ratios, not absolute values.",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    summary = ("max_abs_difference", "max_ratio_advjax_over_sklearn")
    print(json.dumps({key: result[key] for key in summary}))


if __name__ == "__main__":
    main()
