"""Threat models: l_inf, l_2 and l_1 balls intersected with the input box [lo, hi].

This is the one module that knows about norms. Attacks and objectives call
`project`, `ascent_direction`, `random_init`, `lp_norm` and `dual_norm` with a
``norm`` name and stay norm-generic.

All functions take batched arrays (batch dimension first) and treat each example
separately; ``eps`` may be a scalar or a per-example vector of shape ``(batch,)``
(so an eps sweep can ``vmap`` over it).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NORMS = ("linf", "l2", "l1")

# Keeps divisions by a norm finite when the vector is exactly zero.
_TINY = 1e-12


def check_norm(norm: str, *, key: str = "norm") -> None:
    """Raises ValueError naming the config ``key`` when ``norm`` is not a known norm."""
    if norm not in NORMS:
        raise ValueError(f"config key '{key}': got {norm!r}; allowed: {list(NORMS)}")


def _flat(v: jax.Array) -> jax.Array:
    return v.reshape(v.shape[0], -1)


def _per_example(value: jax.Array | float, v: jax.Array) -> jax.Array:
    """Broadcasts a scalar or ``(batch,)`` value against batched ``v`` (trailing ones)."""
    value = jnp.asarray(value, dtype=v.dtype)
    value = jnp.broadcast_to(value, (v.shape[0],))
    return value.reshape((v.shape[0],) + (1,) * (v.ndim - 1))


def lp_norm(v: jax.Array, *, norm: str) -> jax.Array:
    """Per-example norm ``||v_b||_p`` of a batched array.

    Args:
      v: array of shape ``(batch, ...)``.
      norm: 'linf', 'l2' or 'l1'.

    Returns:
      Array of shape ``(batch,)``.
    """
    check_norm(norm)
    f = _flat(v)
    if norm == "linf":
        return jnp.max(jnp.abs(f), axis=1)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(f * f, axis=1))
    return jnp.sum(jnp.abs(f), axis=1)


def dual_of(norm: str) -> str:
    """Name of the dual norm (1/p + 1/q = 1): linf <-> l1, l2 <-> l2."""
    check_norm(norm)
    return {"linf": "l1", "l2": "l2", "l1": "linf"}[norm]


def dual_norm(v: jax.Array, *, norm: str) -> jax.Array:
    """Per-example dual norm ``||v||_q`` of the threat model ``norm``.

    For a linear function ``w^T delta`` the maximum over ``||delta||_p <= eps`` is
    ``eps * ||w||_q`` (Hoelder), which is why gradient-norm penalties and the linear
    optimal-attack tests use it.
    """
    return lp_norm(v, norm=dual_of(norm))


def clip_to_box(x_adv: jax.Array, bounds: tuple[float, float]) -> jax.Array:
    """Clips inputs into the box ``[lo, hi]``."""
    lo, hi = bounds
    return jnp.clip(x_adv, lo, hi)


# ----------------------------------------------------------------------------- projections


def project_linf_ball(delta: jax.Array, eps: jax.Array | float) -> jax.Array:
    """Euclidean projection onto ``{||d||_inf <= eps}``: coordinate-wise clipping."""
    e = _per_example(eps, delta)
    return jnp.clip(delta, -e, e)


def project_l2_ball(delta: jax.Array, eps: jax.Array | float) -> jax.Array:
    """Euclidean projection onto ``{||d||_2 <= eps}``: ``d * min(1, eps / ||d||_2)``."""
    e = _per_example(eps, delta)
    n = _per_example(lp_norm(delta, norm="l2"), delta)
    return delta * jnp.minimum(1.0, e / jnp.maximum(n, _TINY))


def _project_l1_ball_single(v: jax.Array, eps: jax.Array) -> jax.Array:
    # Sort-based projection (Duchi, Shalev-Shwartz, Singer, Chandra 2008, Fig. 1):
    # theta = (sum_{i<=rho} u_i - eps) / rho with u sorted descending and
    # rho = max{j : u_j - (sum_{i<=j} u_i - eps) / j > 0}.
    shape = v.shape
    a = jnp.abs(v.reshape(-1))
    u = jnp.sort(a)[::-1]
    css = jnp.cumsum(u)
    j = jnp.arange(1, u.shape[0] + 1, dtype=v.dtype)
    cond = u - (css - eps) / j > 0
    rho = jnp.maximum(jnp.sum(cond), 1)
    theta = (css[rho - 1] - eps) / rho.astype(v.dtype)
    w = jnp.sign(v.reshape(-1)) * jnp.maximum(a - theta, 0.0)
    inside = jnp.sum(a) <= eps
    return jnp.where(inside, v.reshape(-1), w).reshape(shape)


def project_l1_ball(delta: jax.Array, eps: jax.Array | float) -> jax.Array:
    """Exact Euclidean projection onto ``{||d||_1 <= eps}`` (sort-based, O(d log d)).

    Duchi et al. 2008, "Efficient projections onto the l1-ball", Algorithm 1.
    """
    e = jnp.broadcast_to(jnp.asarray(eps, delta.dtype), (delta.shape[0],))
    return jax.vmap(_project_l1_ball_single)(delta, e)


def _sum_relu_minus(sorted_u: jax.Array, suffix: jax.Array, lam: jax.Array) -> jax.Array:
    """``sum_i max(u_i - lam, 0)`` for every ``lam`` (u sorted ascending, u >= 0, lam >= 0)."""
    n = sorted_u.shape[0]
    num_above = n - jnp.searchsorted(sorted_u, lam, side="right")
    # suffix[k] = sum of the k largest entries of u.
    return suffix[num_above] - num_above.astype(lam.dtype) * lam


def _project_l1_box_single(v: jax.Array, eps: jax.Array, lo: jax.Array, hi: jax.Array):
    # Projection onto {||d||_1 <= eps} ∩ {lo <= d <= hi} with lo <= 0 <= hi (the box
    # around the clean point contains 0). The problem is separable given the multiplier
    # lam >= 0 of the l1 constraint: d_i(lam) = clip(soft_threshold(v_i, lam), lo_i, hi_i)
    # (cf. Croce & Hein 2021, "Mind the box", Sec. 3). g(lam) = ||d(lam)||_1 =
    # sum_i min(max(|v_i| - lam, 0), c_i), with c_i the box bound on v_i's side, is
    # piecewise linear and non-increasing with breakpoints |v_i| and |v_i| - c_i, so the
    # exact lam solving g(lam) = eps is found by sorting the breakpoints and
    # interpolating inside the bracketing segment.
    shape = v.shape
    v = v.reshape(-1)
    lo = lo.reshape(-1)
    hi = hi.reshape(-1)
    a = jnp.abs(v)
    c = jnp.where(v >= 0, hi, -lo)
    # For lam >= 0, max(u - lam, 0) is unchanged by u -> max(u, 0); this also maps an
    # infinite box (c = inf) to a harmless zero.
    u1 = jnp.sort(a)
    u2 = jnp.sort(jnp.maximum(a - c, 0.0))

    def suffix_sums(u):
        return jnp.concatenate([jnp.zeros((1,), u.dtype), jnp.cumsum(u[::-1])])

    s1, s2 = suffix_sums(u1), suffix_sums(u2)

    def g(lam):
        return _sum_relu_minus(u1, s1, lam) - _sum_relu_minus(u2, s2, lam)

    breaks = jnp.sort(jnp.concatenate([jnp.zeros((1,), v.dtype), u1, u2]))
    g_breaks = g(breaks)
    # Last breakpoint with g > eps; g(max breakpoint) = 0 < eps, so j + 1 exists.
    j = jnp.maximum(jnp.sum(g_breaks > eps) - 1, 0)
    b0, b1 = breaks[j], breaks[j + 1]
    g0, g1 = g_breaks[j], g_breaks[j + 1]
    lam = b0 + (g0 - eps) * (b1 - b0) / jnp.maximum(g0 - g1, _TINY)
    lam = jnp.where(g_breaks[0] <= eps, 0.0, lam)
    d = jnp.clip(jnp.sign(v) * jnp.maximum(a - lam, 0.0), lo, hi)
    # Float rounding can leave ||d||_1 a few ulps above eps; shrinking toward 0 keeps
    # the box (it contains 0) and makes the point feasible.
    n1 = jnp.sum(jnp.abs(d))
    d = d * jnp.minimum(1.0, eps / jnp.maximum(n1, _TINY))
    d = jnp.where(eps > 0, d, jnp.zeros_like(d))
    return d.reshape(shape)


def project_l1_box(
    delta: jax.Array, x: jax.Array, eps: jax.Array | float, bounds: tuple[float, float]
) -> jax.Array:
    """Exact Euclidean projection of ``delta`` onto ``{||d||_1 <= eps, lo <= x + d <= hi}``.

    Unlike l_inf, clipping after the l_1-ball projection is not the projection onto
    the intersection (and wastes budget on saturated pixels); this solves the
    intersection exactly (Croce & Hein 2021, "Mind the box: l1-APGD").

    Args:
      delta: perturbations, shape ``(batch, ...)``.
      x: clean inputs in the box, same shape.
      eps: scalar or ``(batch,)`` radius.
      bounds: ``(lo, hi)``.

    Returns:
      The projected perturbations.
    """
    lo, hi = bounds
    e = jnp.broadcast_to(jnp.asarray(eps, delta.dtype), (delta.shape[0],))
    box_lo = jnp.minimum(lo - x, 0.0)
    box_hi = jnp.maximum(hi - x, 0.0)
    return jax.vmap(_project_l1_box_single)(delta, e, box_lo, box_hi)


def project(
    delta: jax.Array,
    x: jax.Array,
    *,
    norm: str,
    eps: jax.Array | float,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Projects perturbations onto the threat model ``B_p(eps) ∩ {x + d in [lo, hi]}``.

    l_inf: exact (both sets are coordinate-wise boxes). l_2: ball projection, then
    clipping to the box; the box around ``x`` contains 0, so clipping never increases
    the norm and the result is feasible and idempotent (the usual PGD choice, Madry et
    al. 2018). l_1: exact projection onto the intersection (`project_l1_box`).

    Args:
      delta: perturbations ``(batch, ...)``.
      x: clean inputs ``(batch, ...)`` in the box.
      norm: 'linf', 'l2' or 'l1'.
      eps: scalar or ``(batch,)`` radius.
      bounds: input box ``(lo, hi)``.

    Returns:
      Feasible perturbations of the same shape.
    """
    check_norm(norm)
    lo, hi = bounds
    if norm == "l1":
        return project_l1_box(delta, x, eps, bounds)
    if norm == "linf":
        delta = project_linf_ball(delta, eps)
    else:
        delta = project_l2_ball(delta, eps)
    return jnp.clip(x + delta, lo, hi) - x


# ----------------------------------------------------------------------------- steps


def l1_top_k(num_features: int, sparsity: float) -> int:
    """Number of coordinates a sparse l_1 step moves: ``ceil((1 - sparsity) * d)``, >= 1."""
    return max(1, min(num_features, math.ceil((1.0 - sparsity) * num_features - 1e-9)))


def ascent_direction(
    grad: jax.Array,
    *,
    norm: str,
    l1_sparsity: float = 0.95,
    x_adv: jax.Array | None = None,
    bounds: tuple[float, float] | None = None,
) -> jax.Array:
    """Steepest-ascent direction of unit ``norm`` for a batched gradient.

    l_inf: ``sign(g)``; l_2: ``g / ||g||_2``; l_1: sign of ``g`` on the top
    ``(1 - l1_sparsity)`` fraction of coordinates by ``|g|``, scaled to unit l_1 norm
    (SLIDE, Tramer & Boneh 2019; APGD-L1, Croce & Hein 2021). With ``l1_sparsity``
    close to 1 a single coordinate moves, the exact l_1 steepest ascent. When
    ``x_adv`` and ``bounds`` are given, l_1 steps skip coordinates already at the box
    boundary whose gradient points outward (moving them would be clipped away).

    Args:
      grad: gradient ``(batch, ...)``.
      norm: 'linf', 'l2' or 'l1'.
      l1_sparsity: fraction of coordinates left untouched by an l_1 step.
      x_adv: current points, for the l_1 boundary mask.
      bounds: input box, for the l_1 boundary mask.

    Returns:
      Direction with ``||direction_b||_p = 1`` (0 where the gradient is 0).
    """
    check_norm(norm)
    if norm == "linf":
        return jnp.sign(grad)
    if norm == "l2":
        n = _per_example(lp_norm(grad, norm="l2"), grad)
        return grad / jnp.maximum(n, _TINY)
    g = grad
    if x_adv is not None and bounds is not None:
        lo, hi = bounds
        blocked = ((x_adv <= lo) & (g < 0)) | ((x_adv >= hi) & (g > 0))
        g = jnp.where(blocked, 0.0, g)
    f = _flat(g)
    k = l1_top_k(f.shape[1], l1_sparsity)
    kth = jax.lax.top_k(jnp.abs(f), k)[0][:, -1:]
    mask = (jnp.abs(f) >= kth) & (f != 0)
    step = jnp.where(mask, jnp.sign(f), 0.0)
    step = step / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1)
    return step.reshape(grad.shape)


# ----------------------------------------------------------------------------- random init


def random_init(
    key: jax.Array,
    x: jax.Array,
    *,
    norm: str,
    eps: jax.Array | float,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Uniform random perturbation inside the ball, projected onto the box.

    l_inf: ``U[-eps, eps]^d``. l_2: Gaussian direction, radius ``eps * U^(1/d)``
    (uniform in the ball). l_1: ``s * e / (sum(e) + e_{d+1})`` with ``e ~ Exp(1)^(d+1)``
    and random signs ``s`` is uniform in the unit l_1 ball (uniform spacings of the
    simplex), then scaled by ``eps``.

    Args:
      key: PRNG key for the whole batch.
      x: clean inputs ``(batch, ...)``.
      norm: 'linf', 'l2' or 'l1'.
      eps: scalar or ``(batch,)`` radius.
      bounds: input box.

    Returns:
      Perturbation ``delta`` with ``x + delta`` in the box and ``||delta||_p <= eps``.
    """
    check_norm(norm)
    e = _per_example(eps, x)
    d = math.prod(x.shape[1:])
    if norm == "linf":
        delta = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * e
    elif norm == "l2":
        k1, k2 = jax.random.split(key)
        z = jax.random.normal(k1, x.shape, x.dtype)
        z = z / jnp.maximum(_per_example(lp_norm(z, norm="l2"), z), _TINY)
        r = jax.random.uniform(k2, (x.shape[0],), x.dtype) ** (1.0 / d)
        delta = z * _per_example(r, z) * e
    else:
        k1, k2 = jax.random.split(key)
        expo = jax.random.exponential(k1, (x.shape[0], d + 1), x.dtype)
        signs = jax.random.rademacher(k2, (x.shape[0], d), x.dtype)
        point = signs * expo[:, :d] / jnp.sum(expo, axis=1, keepdims=True)
        delta = point.reshape(x.shape) * e
    return project(delta, x, norm=norm, eps=eps, bounds=bounds)
