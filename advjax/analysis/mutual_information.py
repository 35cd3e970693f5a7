"""Mutual-information estimators: plug-in, Gaussian, KSG and variational lower bounds.

Used by the information-theoretic analysis (Shi et al., arXiv 1906.02494; see
``advjax/analysis/information.py``) to estimate I(Y; Z) between labels and a layer's
representation on clean and adversarial inputs, and usable on any paired samples.

Estimators (all in nats):

* ``plugin_mi_table`` / ``plugin_mi``: discrete variables, I = sum p(a,b) log p(a,b)/(p(a)p(b)),
  exact on a probability table and on the empirical table of integer samples.
* ``gaussian_mi``: closed form for jointly Gaussian variables,
  I = (log det S_x + log det S_z - log det S) / 2, from (streamed) sample covariances.
* ``ksg_mi``: Kraskov, Stoegbauer and Grassberger (2004), estimator 1,
  I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_z + 1) >, max-norm neighbourhoods, the
  same estimate as scikit-learn's ``mutual_info_regression`` on the same points. On CPU
  an exact slab-grid neighbour search and sort/binary-search marginal counts; on
  accelerators an exact all-pairs search streamed over query chunks. Memory is
  O(chunk_size * N) at most.
* ``variational_mi``: lower bounds with a small flax critic f(x, z), trained by optax and
  evaluated on held-out samples: Donsker-Varadhan (MINE, Belghazi et al. 2018, with the
  moving-average gradient correction), NWJ (Nguyen, Wainwright and Jordan 2010) and InfoNCE
  (van den Oord et al. 2018; capped at log K for K samples per block). The bounds are
  functions of a K x K score matrix S_ij = f(x_i, z_j): diagonal entries are samples of the
  joint, off-diagonal entries of the product of marginals (Poole et al. 2019).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import digamma, logsumexp

from advjax.compile import jit

BOUNDS = ("dv", "nwj", "infonce")
CRITICS = ("separable", "concat")


# --------------------------------------------------------------------------------------
# Streaming helper
# --------------------------------------------------------------------------------------


def chunked_map(fn: Callable[..., Any], *arrays: jax.Array, chunk_size: int) -> Any:
    """Applies ``fn`` to consecutive row chunks of ``arrays`` with ``lax.map`` and concatenates.

    The last chunk is padded by repeating the final row (static shapes), and padded rows are
    dropped from the output, so ``fn`` must act row-wise (row i of the output depends only
    on row i of the inputs and on closed-over constants).

    Args:
      fn: function of one chunk of each array, returning a pytree of arrays with the chunk
        as leading axis.
      *arrays: arrays sharing the leading (example) axis.
      chunk_size: rows per chunk; at most ``chunk_size`` rows are processed at once.

    Returns:
      The pytree ``fn`` would return on the full arrays.
    """
    n = arrays[0].shape[0]
    chunk = max(1, min(int(chunk_size), n))
    num_chunks = -(-n // chunk)
    pad = num_chunks * chunk - n

    def reshape(a):
        a = jnp.asarray(a)
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)
        return a.reshape((num_chunks, chunk) + a.shape[1:])

    out = jax.lax.map(lambda args: fn(*args), tuple(reshape(a) for a in arrays))
    return jax.tree_util.tree_map(lambda o: o.reshape((num_chunks * chunk,) + o.shape[2:])[:n], out)


def _as_2d(a: jax.Array) -> jax.Array:
    a = jnp.asarray(a)
    return a.reshape(a.shape[0], -1) if a.ndim != 1 else a[:, None]


# --------------------------------------------------------------------------------------
# Discrete plug-in estimator
# --------------------------------------------------------------------------------------


def plugin_mi_table(joint: jax.Array) -> jax.Array:
    """Mutual information of a joint probability (or count) table.

    I(A; B) = sum_ab p(a, b) log(p(a, b) / (p(a) p(b))) with 0 log 0 = 0; counts are
    normalised first.

    Args:
      joint: [num_a, num_b] non-negative table.

    Returns:
      Scalar mutual information in nats.
    """
    joint = jnp.asarray(joint)
    p = joint / jnp.sum(joint)
    pa = jnp.sum(p, axis=1, keepdims=True)
    pb = jnp.sum(p, axis=0, keepdims=True)
    safe = jnp.where(p > 0, p, 1.0)
    ratio = safe / jnp.where(p > 0, pa * pb, 1.0)
    return jnp.sum(jnp.where(p > 0, p * jnp.log(ratio), 0.0))


def joint_counts(a: jax.Array, b: jax.Array, *, num_a: int, num_b: int) -> jax.Array:
    """Contingency table of integer samples ``a`` in [0, num_a) and ``b`` in [0, num_b)."""
    a = jnp.asarray(a, jnp.int32).reshape(-1)
    b = jnp.asarray(b, jnp.int32).reshape(-1)
    return jnp.zeros((num_a, num_b), jnp.float32).at[a, b].add(1.0)


def plugin_mi(a: jax.Array, b: jax.Array, *, num_a: int, num_b: int) -> jax.Array:
    """Plug-in MI of paired integer samples: the MI of their empirical joint table."""
    return plugin_mi_table(joint_counts(a, b, num_a=num_a, num_b=num_b))


# --------------------------------------------------------------------------------------
# Gaussian estimator
# --------------------------------------------------------------------------------------


def gaussian_mi_from_covariance(cov: jax.Array, dim_x: int) -> jax.Array:
    """MI of a jointly Gaussian (X, Z) whose joint covariance is ``cov`` (X first, dim_x wide).

    I = (log det S_xx + log det S_zz - log det S) / 2.
    """
    cov = jnp.asarray(cov)
    _, logdet = jnp.linalg.slogdet(cov)
    _, logdet_x = jnp.linalg.slogdet(cov[:dim_x, :dim_x])
    _, logdet_z = jnp.linalg.slogdet(cov[dim_x:, dim_x:])
    return 0.5 * (logdet_x + logdet_z - logdet)


def gaussian_mi(
    x: jax.Array, z: jax.Array, *, chunk_size: int = 4096, ridge: float = 0.0
) -> jax.Array:
    """Gaussian MI estimate from samples: the closed form on the sample covariance.

    Exact for Gaussian data up to sampling error; for other data it is the MI of the
    Gaussian with the same second moments. The covariance is accumulated over chunks.

    Args:
      x: [n, ...] samples of X (flattened per row).
      z: [n, ...] samples of Z.
      chunk_size: rows accumulated at a time.
      ridge: added to the covariance diagonal (relative to its mean) for rank-deficient Z.

    Returns:
      Scalar MI estimate in nats.
    """
    x, z = _as_2d(x), _as_2d(z)
    joint = jnp.concatenate([x, z], axis=1).astype(jnp.result_type(x.dtype, jnp.float32))
    n, d = joint.shape
    mean = jnp.mean(joint, axis=0)
    centred = joint - mean
    chunk = max(1, min(chunk_size, n))
    num_chunks = -(-n // chunk)
    padded = jnp.concatenate([centred, jnp.zeros((num_chunks * chunk - n, d), joint.dtype)])

    def body(acc, block):
        return acc + block.T @ block, None

    scatter, _ = jax.lax.scan(
        body, jnp.zeros((d, d), joint.dtype), padded.reshape(num_chunks, chunk, d)
    )
    cov = scatter / (n - 1)
    cov = cov + ridge * jnp.mean(jnp.diag(cov)) * jnp.eye(d, dtype=cov.dtype)
    return gaussian_mi_from_covariance(cov, x.shape[1])


# --------------------------------------------------------------------------------------
# KSG estimator 1
# --------------------------------------------------------------------------------------

KSG_METHODS = ("auto", "sorted", "dense")


def ksg_mi(
    x: jax.Array,
    z: jax.Array,
    *,
    k: int = 3,
    chunk_size: int = 256,
    method: str = "auto",
    clip_at_zero: bool = False,
) -> jax.Array:
    """Kraskov-Stoegbauer-Grassberger estimator 1 of I(X; Z) (Phys. Rev. E 69, 066138, eq. 8).

    For each sample i, eps_i is the max-norm distance to its k-th nearest neighbour in the
    joint space (distance = max of the max-norm distances in X and in Z, ties counted with
    multiplicity); n_x(i) and n_z(i) count the other samples within distance
    nextafter(eps_i, 0) in X and in Z alone, i.e. strictly closer than eps_i when
    eps_i > 0 and exact duplicates when eps_i = 0 (scikit-learn's convention). Then
    I = psi(k) + psi(N) - mean_i [psi(n_x(i) + 1) + psi(n_z(i) + 1)], the definition of
    scikit-learn's ``mutual_info_regression`` for one feature (which also standardises its
    inputs, adds 1e-10-scale noise and clips at 0; see ``bench/information.py``).

    Two exact neighbour searches give the same estimate:

    * ``'sorted'`` (the default on CPU): samples are sorted by their first X coordinate
      and cut into slabs of about sqrt(k N); eps_i is the k-th smallest joint distance
      among the few samples next to sample i in the first Z coordinate within its own and
      two neighbouring slabs on each side, exact whenever every excluded sample is
      provably at least that far (see ``_slab_kth_distance``). The ~1% of samples where
      it is not (mostly in the tails) are searched among the 4 sqrt(k N) samples nearest
      in X order and in Z order, and the handful still unproven exhaustively. Marginal
      counts of a 1-D variable are two binary searches in its sorted values
      (O(N log N)); a multi-dimensional marginal is counted exhaustively in chunks.
      Every loop (bisection, k-th smallest, chunks) is a rolled XLA loop, so compiling
      takes about as long for any N.
    * ``'dense'`` (the default on accelerators): all N^2 pairs, streamed over query chunks.

    The estimator is not invariant to rescaling one variable relative to the other;
    standardise each variable first if their scales differ.

    Args:
      x: [N, ...] samples of X (rows flattened).
      z: [N, ...] samples of Z.
      k: number of neighbours.
      chunk_size: query rows per chunk. Peak memory is O(chunk_size * N * (d_x + d_z))
        for 'dense', the exhaustive fallback and multi-dimensional marginals, and
        O(chunk_size * (d_x + d_z)) per candidate for the slab search (120 candidates
        for k <= 6) and the window searches (4 sqrt(k N) candidates).
      method: 'auto', 'sorted' or 'dense'.
      clip_at_zero: return max(I, 0) as scikit-learn does. Off by default: the raw
        estimate is the one that averages without bias over repeated samples.

    Returns:
      Scalar MI estimate in nats.
    """
    x, z = _as_2d(x), _as_2d(z)
    n = x.shape[0]
    if z.shape[0] != n:
        raise ValueError(f"ksg_mi: x and z need the same number of rows, got {n} and {z.shape[0]}")
    if not 1 <= k < n:
        raise ValueError(f"ksg_mi: k must be in [1, {n - 1}], got {k}")
    if method not in KSG_METHODS:
        raise ValueError(f"ksg_mi: method got {method!r}; allowed: {list(KSG_METHODS)}")
    if method == "auto":
        method = "sorted" if jax.default_backend() == "cpu" else "dense"
    dtype = jnp.result_type(x.dtype, z.dtype, jnp.float32)
    x, z = x.astype(dtype), z.astype(dtype)
    chunk = max(1, min(int(chunk_size), n))
    if method == "dense":
        mi = _ksg_mi_jit(x, z, k=k, chunk_size=chunk)
    else:
        mi = _ksg_mi_sorted_jit(x, z, k=k, chunk_size=chunk, layout=ksg_layout(n, k))
    return jnp.maximum(mi, 0.0) if clip_at_zero else mi


def _kth_smallest(d: jax.Array, k: int, axis: int = -1) -> jax.Array:
    """k-th smallest entry of ``d`` along ``axis`` (ties counted with multiplicity).

    k passes (a ``fori_loop``) of a masked min and a count, each one fused reduction: the
    t-th pass finds the t-th smallest distinct value m_t and the result is the first m_t
    with #{d <= m_t} >= k. O(k n) per row; XLA's sort-based top_k costs O(n log n).
    """
    reduced = d.shape[: axis % d.ndim] + d.shape[axis % d.ndim + 1 :]

    def body(_, state):
        below, result, found = state
        m = jnp.min(jnp.where(d > jnp.expand_dims(below, axis), d, jnp.inf), axis=axis)
        enough = jnp.sum(d <= jnp.expand_dims(m, axis), axis=axis) >= k
        return m, jnp.where(~found & enough, m, result), found | enough

    init = (
        jnp.full(reduced, -jnp.inf, d.dtype),
        jnp.full(reduced, jnp.inf, d.dtype),
        jnp.zeros(reduced, bool),
    )
    return jax.lax.fori_loop(0, k, body, init)[1]


def _max_norm(a: jax.Array, b: jax.Array) -> jax.Array:
    """[q, m] max-norm distances between rows of a [q, d] and b [m, d]."""
    return jnp.max(jnp.abs(a[:, None, :] - b[None, :, :]), axis=-1)


def _dense_kth_distance(x, z, xq, zq, iq, k):
    """Exact eps for query rows (xq, zq) with indices iq against all samples."""
    joint = jnp.maximum(_max_norm(xq, x), _max_norm(zq, z))
    joint = jnp.where(iq[:, None] == jnp.arange(x.shape[0])[None, :], jnp.inf, joint)
    return _kth_smallest(joint, k)


def _dense_count(v, vq, radius):
    """#{j : ||v_j - vq_i||_max <= radius_i}, the query itself included if it is a sample."""
    return jnp.sum(_max_norm(vq, v) <= radius[:, None], axis=1)


def _first_true(sorted_values, query, predicate, *, lo=None, hi=None, steps=None):
    """Smallest j in [lo, hi) with predicate(sorted_values[j] - query) (hi if none), by bisection.

    ``predicate`` must be monotone in j, which holds for a threshold on the rounded
    difference: rounding is monotone, so fl(v_j - q) is non-decreasing in sorted v_j.
    Searching on the same rounded differences as a brute-force count keeps ties exact.
    Defaults search the whole array; ``steps`` bounds hi - lo when lo and hi are given.
    The halvings are one ``fori_loop``, vectorised over all queries.
    """
    n = sorted_values.shape[0]
    bounds = [jnp.shape(b) for b in (lo, hi) if b is not None]
    shape = jnp.broadcast_shapes(jnp.shape(query), *bounds)
    lo = jnp.broadcast_to(jnp.zeros((), jnp.int32) if lo is None else lo, shape)
    hi = jnp.broadcast_to(jnp.full((), n, jnp.int32) if hi is None else hi, shape)

    def body(_, state):
        lo, hi = state
        mid = (lo + hi) // 2
        ok = predicate(_take(sorted_values, jnp.minimum(mid, n - 1)) - query) & (mid < hi)
        hi = jnp.where(ok, mid, hi)
        return jnp.where(ok | (lo >= hi), lo, mid + 1), hi

    num_steps = max(1, math.ceil(math.log2((n if steps is None else steps) + 1)))
    return jax.lax.fori_loop(0, num_steps, body, (lo, hi))[0]


def _sorted_count(sorted_values, query, radius):
    """#{j : |v_j - q_i| <= radius_i} for 1-D samples, two binary searches per query."""
    first_inside = _first_true(sorted_values, query, lambda d: d >= -radius)
    first_beyond = _first_true(sorted_values, query, lambda d: d > radius)
    return first_beyond - first_inside


def _marginal_count(v, radius, chunk_size, sorted_values=None):
    """Samples within ``radius`` of each sample in one marginal, the sample itself excluded.

    ``sorted_values``: v[:, 0] in increasing order, if already at hand (1-D ``v``).
    """
    if v.shape[1] == 1:
        sorted_values = jnp.sort(v[:, 0]) if sorted_values is None else sorted_values
        counts = _sorted_count(sorted_values, v[:, 0], radius)
    else:
        counts = chunked_map(lambda vq, r: _dense_count(v, vq, r), v, radius, chunk_size=chunk_size)
    return counts - 1


def _ksg_from_counts(n_x, n_z, k, n):
    psi = digamma(n_x + 1.0) + digamma(n_z + 1.0)
    return digamma(float(k)) + digamma(float(n)) - jnp.mean(psi)


@functools.partial(jit, static_argnames=("k", "chunk_size"))
def _ksg_mi_jit(x: jax.Array, z: jax.Array, *, k: int, chunk_size: int) -> jax.Array:
    """KSG with all-pairs distances streamed over query chunks (suits accelerators)."""
    n = x.shape[0]

    def rows(xq, zq, iq):
        eps = _dense_kth_distance(x, z, xq, zq, iq, k)
        radius = jnp.nextafter(eps, jnp.zeros_like(eps))
        return _dense_count(x, xq, radius) - 1, _dense_count(z, zq, radius) - 1

    n_x, n_z = chunked_map(rows, x, z, jnp.arange(n), chunk_size=chunk_size)
    return _ksg_from_counts(n_x, n_z, k, n)


def ksg_layout(n: int, k: int) -> tuple[int, int, int, int]:
    """(slab, reach, per_side, width) of the sorted search for N samples and k neighbours.

    Slabs of about sqrt(k N) samples consecutive in the first X coordinate; a query looks
    at ``reach`` slabs on each side of its own and at ``per_side`` samples above and below
    it in the first Z coordinate within each. For independent variables the k-th
    neighbour distance spans about sqrt(k N) / 2 samples in either coordinate's order,
    so these sizes prove about 99% of the samples exact. Most of the rest lie in the
    tails of X or of Z, where eps is wide but few samples are near in that coordinate: a
    second search over the ``width`` samples nearest in X order and in Z order proves
    nearly all of them (all but 0-23 of 20000 Gaussian samples); the exhaustive search
    is left with those.
    """
    slab = int(min(n, max(2 * k + 2, math.ceil(math.sqrt(k * n)))))
    return slab, 2, int(max(2 * k, 12)), int(min(n, 4 * slab))


def _take(a: jax.Array, index: jax.Array) -> jax.Array:
    """a[index] for indices already clipped into range (skips XLA's bounds handling)."""
    return a.at[index].get(mode="promise_in_bounds")


def _slab_kth_distance(x, z, k, chunk_size, slab, reach, per_side):
    """eps from a few neighbours of each sample in a slab grid, and whether it is proven exact.

    Rows are sorted by x[:, 0] and cut into slabs of ``slab`` consecutive rows; within each
    slab a second order sorts by z[:, 0]. A query's candidates are the ``per_side``
    samples on either side of it in z[:, 0] within its own slab and the ``reach`` slabs on
    each side. Any other sample is, in the joint max-norm, at least as far as the nearest
    excluded neighbour in x[:, 0] (beyond the outer slabs) or in z[:, 0] (beyond the
    candidates of its slab); rounding is monotone, so if all those gaps are >= the
    candidates' k-th distance, that distance is the exact eps. A neighbouring slab's
    z-gap may be replaced by its distance in x[:, 0], whichever is larger.

    Every step is vectorised over [slab offset, candidate, query] (queries last, so that
    reductions over candidates are elementwise across queries); the only loops are the
    bisection and the k passes of ``_kth_smallest``, both rolled.
    """
    n = x.shape[0]
    num_slabs = -(-n // slab)
    perm = jnp.lexsort((z[:, 0], jnp.arange(n) // slab)).astype(jnp.int32)
    # Position of each sample in the slab order, and both variables side by side: the
    # joint max-norm is the max-norm over the concatenated coordinates.
    where_in_slab = jnp.zeros(n, jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32))
    joint_sorted = jnp.concatenate([x, z], axis=1)[perm]
    zkey, x_key = z[perm, 0], x[:, 0]
    offsets = jnp.arange(-reach, reach + 1, dtype=jnp.int32)[:, None]  # [O, 1]
    shifts = jnp.arange(-per_side, per_side, dtype=jnp.int32)[None, :, None]  # [1, S, 1]

    def rows(xq, zq, iq):
        z0, x0 = zq[:, 0], xq[:, 0]
        t = iq // slab + offsets  # [O, q]
        in_grid = (t >= 0) & (t < num_slabs)
        start = jnp.clip(t, 0, num_slabs - 1) * slab
        end = jnp.minimum(start + slab, n)
        pos = _first_true(zkey, z0, lambda d: d >= 0, lo=start, hi=end, steps=slab)
        idx = pos[:, None, :] + shifts  # [O, S, q]
        ok = in_grid[:, None] & (idx >= start[:, None]) & (idx < end[:, None])
        ok = ok & (idx != _take(where_in_slab, iq))
        idx = jnp.clip(idx, 0, n - 1)
        query = jnp.concatenate([xq, zq], axis=1)
        joint = jnp.max(jnp.abs(_take(joint_sorted, idx) - query), axis=-1)
        candidates = jnp.where(ok, joint, jnp.inf).reshape(-1, iq.shape[0])
        eps = _kth_smallest(candidates, k, axis=0)

        below, above = pos - per_side - 1, pos + per_side
        gap_below = jnp.abs(_take(zkey, jnp.clip(below, 0, n - 1)) - z0)
        gap_above = jnp.abs(_take(zkey, jnp.clip(above, 0, n - 1)) - z0)
        slab_gap = jnp.minimum(
            jnp.where(below >= start, gap_below, jnp.inf),
            jnp.where(above < end, gap_above, jnp.inf),
        )
        # Every sample of a neighbouring slab is at least this far in x[:, 0].
        nearest = jnp.clip(jnp.where(offsets < 0, end - 1, start), 0, n - 1)
        x_gap = jnp.abs(_take(x_key, nearest) - x0)
        slab_gap = jnp.where(offsets != 0, jnp.maximum(slab_gap, x_gap), slab_gap)
        gap = jnp.min(jnp.where(in_grid, slab_gap, jnp.inf), axis=0)
        s = iq // slab
        lower, upper = (s - reach) * slab - 1, (s + reach + 1) * slab
        gap_lower = jnp.abs(_take(x_key, jnp.clip(lower, 0, n - 1)) - x0)
        gap_upper = jnp.abs(_take(x_key, jnp.clip(upper, 0, n - 1)) - x0)
        gap = jnp.minimum(gap, jnp.where(lower >= 0, gap_lower, jnp.inf))
        gap = jnp.minimum(gap, jnp.where(upper < n, gap_upper, jnp.inf))
        return eps, (gap >= eps) & jnp.isfinite(eps)

    return chunked_map(rows, x, z, jnp.arange(n, dtype=jnp.int32), chunk_size=chunk_size)


def _refine(search, eps, exact, chunk_size):
    """Searches again, with ``search(iq) -> (eps, exact)``, the samples not yet proven exact.

    The number of such samples is data-dependent, so a while loop walks over chunks of
    their indices (listed first by a size-n nonzero) with static shapes throughout. Fill
    entries (index 0) repeat the search for sample 0, and a sample's eps is only replaced
    by a proven one, so they are harmless.
    """
    n = eps.shape[0]
    num_chunks = -(-n // chunk_size)
    (todo,) = jnp.nonzero(~exact, size=num_chunks * chunk_size, fill_value=0)
    count = jnp.sum(~exact)

    def body(state):
        c, eps, exact = state
        iq = jax.lax.dynamic_slice_in_dim(todo, c * chunk_size, chunk_size)
        found, proven = search(iq)
        proven = proven | exact[iq]
        eps = eps.at[iq].set(jnp.where(proven & ~exact[iq], found, eps[iq]))
        return c + 1, eps, exact.at[iq].set(proven)

    state = (jnp.zeros((), jnp.int32), eps, exact)
    return jax.lax.while_loop(lambda s: s[0] * chunk_size < count, body, state)[1:]


def _window_kth_distance(joint, key, pos, k, width):
    """eps among the ``width`` samples around each query in one order, and whether exact.

    Rows of ``joint`` (X and Z side by side) are in increasing order of the coordinate
    ``key`` and ``pos`` are the queries' rows; every sample outside a query's window is at
    least as far in ``key`` as the window's outer neighbours.
    """
    n = joint.shape[0]
    lo = jnp.clip(pos - width // 2, 0, n - width)
    window = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(joint, s, width))(lo)
    dist = jnp.max(jnp.abs(window - _take(joint, pos)[:, None, :]), axis=-1)
    dist = jnp.where(lo[:, None] + jnp.arange(width) == pos[:, None], jnp.inf, dist)
    eps = _kth_smallest(dist, k)
    q, hi = _take(key, pos), lo + width
    gap_lo = jnp.where(lo > 0, jnp.abs(_take(key, jnp.maximum(lo - 1, 0)) - q), jnp.inf)
    gap_hi = jnp.where(hi < n, jnp.abs(_take(key, jnp.minimum(hi, n - 1)) - q), jnp.inf)
    return eps, (jnp.minimum(gap_lo, gap_hi) >= eps) & jnp.isfinite(eps)


def _fill_inexact(x, z, eps, exact, k, chunk_size, width, z_order=None):
    """Exact eps for the samples whose slab search did not prove it (rows sorted by x[:, 0]).

    First the ``width`` samples around each in X order (which proves samples in the tails
    of X) and in Z order (tails of Z; ``z_order`` sorts z[:, 0]), both in one vmapped
    search; then, for the few still unproven, all samples.
    """
    n = x.shape[0]
    if width < n:
        joint = jnp.concatenate([x, z], axis=1)
        z_order = jnp.argsort(z[:, 0]) if z_order is None else z_order
        z_rank = jnp.zeros(n, jnp.int32).at[z_order].set(jnp.arange(n, dtype=jnp.int32))
        joints = jnp.stack([joint, joint[z_order]])
        keys = jnp.stack([x[:, 0], z[z_order, 0]])
        search = jax.vmap(functools.partial(_window_kth_distance, k=k, width=width))

        def windows(iq):
            found, proven = search(joints, keys, jnp.stack([iq, _take(z_rank, iq)]))
            return jnp.where(proven[0], found[0], found[1]), proven[0] | proven[1]

        eps, exact = _refine(windows, eps, exact, chunk_size)

    def exhaustive(iq):
        return _dense_kth_distance(x, z, x[iq], z[iq], iq, k), jnp.ones(iq.shape, bool)

    return _refine(exhaustive, eps, exact, chunk_size)[0]


@functools.partial(jit, static_argnames=("k", "chunk_size", "layout"))
def _ksg_mi_sorted_jit(
    x: jax.Array, z: jax.Array, *, k: int, chunk_size: int, layout: tuple[int, int, int, int]
) -> jax.Array:
    """KSG with a slab grid search for eps and binary searches for 1-D marginals."""
    n = x.shape[0]
    slab, reach, per_side, width = layout
    order = jnp.argsort(x[:, 0])
    x, z = x[order], z[order]
    eps, exact = _slab_kth_distance(x, z, k, chunk_size, slab, reach, per_side)
    # Few samples need the later searches: small chunks waste less on padding.
    z_order = jnp.argsort(z[:, 0])
    eps = _fill_inexact(x, z, eps, exact, k, min(chunk_size, 64), width, z_order)
    radius = jnp.nextafter(eps, jnp.zeros_like(eps))
    n_x = _marginal_count(x, radius, chunk_size, sorted_values=x[:, 0])
    n_z = _marginal_count(z, radius, chunk_size, sorted_values=z[z_order, 0])
    return _ksg_from_counts(n_x, n_z, k, n)


# --------------------------------------------------------------------------------------
# Variational lower bounds with a flax critic
# --------------------------------------------------------------------------------------


class SeparableCritic(nn.Module):
    """f(x, z) = g(x) . h(z): two MLP embeddings; all K x K scores with one matmul."""

    hidden: int = 64
    embed_dim: int = 32
    depth: int = 2

    def _mlp(self, v: jax.Array, name: str) -> jax.Array:
        for i in range(self.depth):
            v = nn.relu(nn.Dense(self.hidden, name=f"{name}_hidden{i}")(v))
        return nn.Dense(self.embed_dim, name=f"{name}_out")(v)

    @nn.compact
    def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """Returns the [K, K] score matrix S_ij = f(x_i, z_j)."""
        return self._mlp(x, "g") @ self._mlp(z, "h").T


class ConcatCritic(nn.Module):
    """f(x, z) = MLP([x, z]) evaluated on all K x K pairs (more expressive, K^2 cost)."""

    hidden: int = 64
    depth: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
        k = x.shape[0]
        pairs = jnp.concatenate(
            [
                jnp.broadcast_to(x[:, None, :], (k, k, x.shape[1])),
                jnp.broadcast_to(z[None, :, :], (k, k, z.shape[1])),
            ],
            axis=-1,
        )
        h = pairs
        for _ in range(self.depth):
            h = nn.relu(nn.Dense(self.hidden)(h))
        return nn.Dense(1)(h)[..., 0]


def _off_diagonal_mask(k: int) -> jax.Array:
    return ~jnp.eye(k, dtype=bool)


def dv_bound(scores: jax.Array) -> jax.Array:
    """Donsker-Varadhan bound E_p[f] - log E_{p x q}[e^f] from a K x K score matrix."""
    k = scores.shape[0]
    off = jnp.where(_off_diagonal_mask(k), scores, -jnp.inf)
    return jnp.mean(jnp.diag(scores)) - (logsumexp(off) - math.log(k * (k - 1)))


def nwj_bound(scores: jax.Array) -> jax.Array:
    """NWJ bound E_p[f] - e^{-1} E_{p x q}[e^f] from a K x K score matrix."""
    k = scores.shape[0]
    mask = _off_diagonal_mask(k)
    marg = jnp.sum(jnp.where(mask, jnp.exp(scores - 1.0), 0.0)) / (k * (k - 1))
    return jnp.mean(jnp.diag(scores)) - marg


def infonce_bound(scores: jax.Array) -> jax.Array:
    """InfoNCE bound mean_i [S_ii - log mean_j exp S_ij] (<= log K) from a K x K matrix."""
    k = scores.shape[0]
    return jnp.mean(jnp.diag(scores) - logsumexp(scores, axis=1)) + math.log(k)


BOUND_FNS = {"dv": dv_bound, "nwj": nwj_bound, "infonce": infonce_bound}


def make_critic(
    name: str = "separable", *, hidden: int = 64, embed_dim: int = 32, depth: int = 2
) -> nn.Module:
    """The critic module named ``name`` ('separable' or 'concat') with ``depth`` hidden layers.

    ``depth = 0`` with 'separable' is the bilinear critic f(x, z) = (A x + a) . (B z + b),
    the least prone to overfitting on small samples.
    """
    if name == "separable":
        return SeparableCritic(hidden=hidden, embed_dim=embed_dim, depth=depth)
    if name == "concat":
        return ConcatCritic(hidden=hidden, depth=max(depth, 1))
    raise ValueError(f"critic: got {name!r}; allowed: {list(CRITICS)}")


def fit_critic(
    key: jax.Array,
    x: jax.Array,
    z: jax.Array,
    *,
    bound: str = "infonce",
    critic: nn.Module | None = None,
    num_steps: int = 500,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    ema_decay: float = 0.99,
) -> dict:
    """Trains a critic to maximise a variational MI bound on minibatches of (x, z).

    For 'dv' the gradient of log E[e^f] uses a moving-average denominator (MINE's bias
    correction); 'nwj' and 'infonce' are unbiased in the minibatch and trained directly.
    The whole loop is one ``lax.scan``, compiled once per shape.

    Args:
      key: PRNG key (initialisation and minibatch sampling).
      x: [n, dx] samples of X.
      z: [n, dz] samples of Z, paired row-wise with x.
      bound: 'dv', 'nwj' or 'infonce'.
      critic: flax module returning a [K, K] score matrix; default `SeparableCritic`.
      num_steps: optimiser steps.
      batch_size: K, samples per minibatch.
      learning_rate: Adam learning rate.
      ema_decay: moving-average decay for the DV gradient correction.

    Returns:
      The trained critic variables.
    """
    if bound not in BOUND_FNS:
        raise ValueError(f"bound: got {bound!r}; allowed: {list(BOUNDS)}")
    critic = critic or SeparableCritic()
    x, z = _as_2d(x).astype(jnp.float32), _as_2d(z).astype(jnp.float32)
    batch_size = min(batch_size, x.shape[0])
    return _fit_critic_jit(
        key,
        x,
        z,
        critic=critic,
        bound=bound,
        num_steps=num_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        ema_decay=ema_decay,
    )


@jit(static_argnames=("critic", "bound", "num_steps", "batch_size", "learning_rate", "ema_decay"))
def _fit_critic_jit(key, x, z, *, critic, bound, num_steps, batch_size, learning_rate, ema_decay):
    n = x.shape[0]
    init_key, data_key = jax.random.split(key)
    params = critic.init(init_key, x[:batch_size], z[:batch_size])
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)
    mask = _off_diagonal_mask(batch_size)

    def objective(p, xb, zb, log_ema):
        scores = critic.apply(p, xb, zb)
        if bound == "dv":
            off = jnp.where(mask, scores, -jnp.inf)
            log_marg = logsumexp(off) - math.log(batch_size * (batch_size - 1))
            # MINE: grad log E[e^f] ~ grad E[e^f] / EMA(E[e^f]); kept in the log domain so
            # that a drifting critic offset cannot overflow.
            ratio = jnp.exp(log_marg - jax.lax.stop_gradient(log_ema))
            return -(jnp.mean(jnp.diag(scores)) - ratio), log_marg
        return -BOUND_FNS[bound](scores), jnp.zeros(())

    def step(carry, i):
        p, s, log_ema = carry
        idx = jax.random.choice(jax.random.fold_in(data_key, i), n, (batch_size,), replace=False)
        if bound == "dv":
            # The first step uses its own minibatch mean as the denominator.
            first = objective(p, x[idx], z[idx], jnp.zeros(()))[1]
            log_ema = jnp.where(i == 0, first, log_ema)
        (_, log_marg), grads = jax.value_and_grad(objective, has_aux=True)(
            p, x[idx], z[idx], log_ema
        )
        log_ema = jnp.logaddexp(math.log(ema_decay) + log_ema, math.log(1.0 - ema_decay) + log_marg)
        updates, s = optimizer.update(grads, s, p)
        return (optax.apply_updates(p, updates), s, log_ema), None

    (params, _, _), _ = jax.lax.scan(
        step, (params, opt_state, jnp.zeros(())), jnp.arange(num_steps)
    )
    return params


def evaluate_bound(
    critic: nn.Module,
    params: dict,
    x: jax.Array,
    z: jax.Array,
    *,
    bound: str = "infonce",
    block_size: int = 128,
) -> jax.Array:
    """Mean of a variational bound over disjoint K-sample blocks of held-out (x, z).

    Streams over blocks (``lax.map``), so memory is O(block_size^2). Rows beyond the last
    full block are dropped.
    """
    x, z = _as_2d(x).astype(jnp.float32), _as_2d(z).astype(jnp.float32)
    k = min(block_size, x.shape[0])
    num_blocks = x.shape[0] // k
    return _evaluate_bound_jit(
        params,
        x[: num_blocks * k].reshape(num_blocks, k, -1),
        z[: num_blocks * k].reshape(num_blocks, k, -1),
        critic=critic,
        bound=bound,
    )


@functools.partial(jit, static_argnames=("critic", "bound"))
def _evaluate_bound_jit(params, xb, zb, *, critic, bound):
    fn = BOUND_FNS[bound]
    return jnp.mean(jax.lax.map(lambda b: fn(critic.apply(params, b[0], b[1])), (xb, zb)))


def variational_mi(
    key: jax.Array,
    x: jax.Array,
    z: jax.Array,
    *,
    bound: str = "infonce",
    critic: str | nn.Module = "separable",
    hidden: int = 64,
    embed_dim: int = 32,
    depth: int = 2,
    num_steps: int = 500,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    holdout_fraction: float = 0.5,
) -> jax.Array:
    """Variational lower bound on I(X; Z): train a critic on one part, evaluate on the rest.

    Evaluating on held-out pairs keeps the estimate a lower bound in expectation (a critic
    overfit to its training pairs would overstate the MI). InfoNCE never exceeds
    log(batch_size).

    Args:
      key: PRNG key.
      x: [n, ...] samples of X (for discrete labels pass one-hot vectors).
      z: [n, ...] samples of Z.
      bound: 'dv' (MINE), 'nwj' or 'infonce'.
      critic: 'separable', 'concat' or a flax module returning [K, K] scores.
      hidden: critic hidden width.
      embed_dim: separable critic embedding width.
      depth: hidden layers of the critic's MLPs.
      num_steps: optimiser steps.
      batch_size: K for training and for evaluation blocks.
      learning_rate: Adam learning rate.
      holdout_fraction: fraction of rows kept for evaluation.

    Returns:
      Scalar MI lower-bound estimate in nats.
    """
    x, z = _as_2d(x), _as_2d(z)
    n = x.shape[0]
    perm_key, fit_key = jax.random.split(key)
    perm = jax.random.permutation(perm_key, n)
    n_eval = max(2, int(round(holdout_fraction * n)))
    eval_idx, train_idx = perm[:n_eval], perm[n_eval:]
    module = (
        make_critic(critic, hidden=hidden, embed_dim=embed_dim, depth=depth)
        if isinstance(critic, str)
        else critic
    )
    params = fit_critic(
        fit_key,
        x[train_idx],
        z[train_idx],
        bound=bound,
        critic=module,
        num_steps=num_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    return evaluate_bound(
        module, params, x[eval_idx], z[eval_idx], bound=bound, block_size=batch_size
    )


def one_hot_labels(y: jax.Array | np.ndarray, num_classes: int) -> jax.Array:
    """Float one-hot encoding, the form in which discrete labels enter a critic."""
    return jax.nn.one_hot(jnp.asarray(y), num_classes, dtype=jnp.float32)
