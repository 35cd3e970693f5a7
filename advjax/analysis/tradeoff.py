"""Closed-form robustness theory of linear models.

Two settings in which the adversarial risk of a linear predictor has a closed form:

* Tsipras et al. 2019, "Robustness May Be at Odds with Accuracy" (arXiv 1805.12152),
  section 2: the toy distribution with one robust feature ``x_1 = +-y`` and ``d`` weakly
  predictive Gaussian features ``N(eta * y, 1)``. Standard and l_inf-robust accuracies of any
  linear classifier follow from the normal CDF, and Theorem 1 bounds the robust accuracy of
  every classifier by ``p / (1 - p) * delta``.
* Linear regression with squared loss under l_p-bounded perturbations (the model analysed by
  Moayeri et al. 2022, "Explicit Tradeoffs between Adversarial and Natural Distributional
  Robustness"): the inner maximum is ``(|r| + eps * ||w||_q)^2`` with ``1/p + 1/q = 1``, and
  for Gaussian data its expectation is a convex function of ``w`` that optax minimises.

Norms are named as the attack library names threat models: ``'linf'``, ``'l2'``, ``'l1'``;
``dual_norm(w, norm)`` is the dual norm of the threat model's norm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.stats import norm as jax_normal

from advjax import geometry
from advjax.compile import jit

NORMS = geometry.NORMS
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def dual_norm(w: jax.Array, norm: str) -> jax.Array:
    """Dual norm ``||w||_q`` of the threat model's norm ``||.||_p`` (``1/p + 1/q = 1``).

    ``sup_{||delta||_p <= 1} w^T delta = ||w||_q``: l_inf -> l_1, l_2 -> l_2, l_1 -> l_inf
    (`advjax.geometry.dual_norm`). The l_2 case is evaluated so that its gradient at
    ``w = 0`` is zero rather than NaN, which the risk minimiser needs when it starts there.

    Args:
      w: weights, reduced over the last axis.
      norm: threat model, one of ``'linf'``, ``'l2'``, ``'l1'``.

    Returns:
      The dual norm over the last axis.
    """
    geometry.check_norm(norm)
    if norm == "l2":
        sq = jnp.sum(w * w, axis=-1)
        return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    flat = w.reshape((-1, w.shape[-1]))
    return geometry.dual_norm(flat, norm=norm).reshape(w.shape[:-1])


def dual_direction(w: jax.Array, norm: str) -> jax.Array:
    """Unit-``p``-norm direction ``u`` with ``w^T u = ||w||_q`` (a maximiser of ``w^T u``).

    The steepest-ascent direction of the linear function ``w^T delta``
    (`advjax.geometry.ascent_direction` with a single-coordinate l_1 step).

    Args:
      w: weights ``[d]``.
      norm: threat model.

    Returns:
      ``u`` of shape ``[d]``: ``sign(w)`` (l_inf), ``w / ||w||_2`` (l_2), or ``sign(w_j) e_j``
      at ``j = argmax |w_j|`` (l_1; ties share the unit mass).
    """
    return geometry.ascent_direction(w[None], norm=norm, l1_sparsity=1.0)[0]


# ---------------------------------------------------------------------------------------
# Squared loss under l_p perturbations (advjax's reconstruction of the Moayeri et al. 2022
# regression setting).
# ---------------------------------------------------------------------------------------


def adversarial_squared_loss(
    w: jax.Array, x: jax.Array, y: jax.Array, *, norm: str, eps: float, bias: float = 0.0
) -> jax.Array:
    """Exact inner maximum ``max_{||delta||_p <= eps} (y - w^T (x + delta) - b)^2``.

    Equals ``(|y - w^T x - b| + eps * ||w||_q)^2``: the adversary moves the prediction by
    ``eps * ||w||_q`` away from the target (Hoelder's inequality is tight).

    Args:
      w: weights ``[d]``.
      x: inputs ``[n, d]``.
      y: targets ``[n]``.
      norm: threat model.
      eps: radius.
      bias: intercept ``b``.

    Returns:
      Per-example losses ``[n]``.
    """
    r = y - x @ w - bias
    return (jnp.abs(r) + eps * dual_norm(w, norm)) ** 2


def worst_case_perturbation(
    w: jax.Array, x: jax.Array, y: jax.Array, *, norm: str, eps: float, bias: float = 0.0
) -> jax.Array:
    """The maximiser ``delta*`` of the squared loss of a linear predictor (closed form).

    ``delta* = -sign(r) * eps * u`` with ``r = y - w^T x - b`` and ``u`` the dual direction,
    so that ``w^T delta* = -sign(r) eps ||w||_q`` pushes the residual away from zero.

    Returns:
      Perturbations ``[n, d]`` with ``||delta||_p = eps``.
    """
    r = y - x @ w - bias
    s = jnp.where(r >= 0, 1.0, -1.0)
    return -(s[:, None] * eps) * dual_direction(w, norm)[None, :]


def residual_variance(
    w: jax.Array, *, cov_xx: jax.Array, cov_xy: jax.Array, var_y: float
) -> jax.Array:
    """``s^2(w) = Var(y - w^T x) = Var(y) - 2 w^T c + w^T Sigma w`` for zero-mean (x, y)."""
    return var_y - 2.0 * (w @ cov_xy) + w @ (cov_xx @ w)


def gaussian_adversarial_risk(
    w: jax.Array,
    *,
    cov_xx: jax.Array,
    cov_xy: jax.Array,
    var_y: float,
    norm: str,
    eps: float | jax.Array,
) -> jax.Array:
    """Population adversarial squared risk of ``w^T x`` for jointly Gaussian zero-mean (x, y).

    The residual ``r = y - w^T x`` is ``N(0, s^2)`` and ``E|r| = s sqrt(2/pi)``, so
    ``R_eps(w) = E (|r| + eps ||w||_q)^2 = s^2 + 2 sqrt(2/pi) eps ||w||_q s + eps^2 ||w||_q^2``.

    Args:
      w: weights ``[d]``.
      cov_xx: ``E[x x^T]`` ``[d, d]``.
      cov_xy: ``E[x y]`` ``[d]``.
      var_y: ``E[y^2]``.
      norm: threat model.
      eps: radius.

    Returns:
      The scalar risk.
    """
    s2 = residual_variance(w, cov_xx=cov_xx, cov_xy=cov_xy, var_y=var_y)
    s = jnp.sqrt(jnp.maximum(s2, 1e-30))
    t = eps * dual_norm(w, norm)
    return s2 + 2.0 * _SQRT_2_OVER_PI * t * s + t * t


def empirical_adversarial_risk(
    w: jax.Array, x: jax.Array, y: jax.Array, *, norm: str, eps: float | jax.Array
) -> jax.Array:
    """Sample mean of the exact inner maximum, the finite-sample counterpart of the risk."""
    return jnp.mean(adversarial_squared_loss(w, x, y, norm=norm, eps=eps))


def least_squares(cov_xx: jax.Array, cov_xy: jax.Array) -> jax.Array:
    """Ordinary least squares ``Sigma^{-1} c`` (the adversarial minimiser at ``eps = 0``)."""
    return jnp.linalg.solve(cov_xx, cov_xy)


def minimize_adversarial_risk(
    *,
    cov_xx: jax.Array,
    cov_xy: jax.Array,
    var_y: float,
    norm: str,
    eps_grid: Sequence[float] | jax.Array,
    num_steps: int = 6000,
    learning_rate: float = 0.05,
    chunk_size: int = 16,
) -> jax.Array:
    """Minimisers of the population adversarial risk over a sweep of radii (optax Adam).

    The risk is convex in ``w`` but not smooth where coordinates vanish (l_inf threat) or tie
    in magnitude (l_1 threat), so Adam runs with a learning rate that decays to zero and the
    last iterate is returned. Starts from ``w = 0`` for every radius; the sweep is a ``vmap``
    axis streamed in chunks of ``chunk_size`` radii.

    Args:
      cov_xx, cov_xy, var_y: second moments of the data (see `gaussian_adversarial_risk`).
      norm: threat model.
      eps_grid: radii.
      num_steps: optimisation steps.
      learning_rate: peak Adam learning rate (cosine decay to zero).
      chunk_size: radii solved at once.

    Returns:
      ``[len(eps_grid), d]`` minimisers.
    """
    geometry.check_norm(norm)
    cov_xx = jnp.asarray(cov_xx, jnp.float32)
    cov_xy = jnp.asarray(cov_xy, jnp.float32)
    eps_grid = jnp.atleast_1d(jnp.asarray(eps_grid, jnp.float32))
    schedule = optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.0)
    opt = optax.adam(schedule)
    risk = lambda w, e: gaussian_adversarial_risk(
        w, cov_xx=cov_xx, cov_xy=cov_xy, var_y=var_y, norm=norm, eps=e
    )

    def solve_one(e: jax.Array) -> jax.Array:
        w0 = jnp.zeros_like(cov_xy)

        def step(carry, _):
            w, state = carry
            g = jax.grad(risk)(w, e)
            updates, state = opt.update(g, state, w)
            return (optax.apply_updates(w, updates), state), None

        (w, _), _ = jax.lax.scan(step, (w0, opt.init(w0)), None, length=num_steps)
        return w

    n = eps_grid.shape[0]
    pad = (-n) % chunk_size
    padded = jnp.concatenate([eps_grid, jnp.zeros((pad,), eps_grid.dtype)])
    chunks = padded.reshape(-1, min(chunk_size, padded.shape[0]))
    out = jax.lax.map(jit(jax.vmap(solve_one)), chunks)
    return out.reshape(-1, cov_xy.shape[0])[:n]


def minimize_empirical_adversarial_risk(
    x: jax.Array,
    y: jax.Array,
    *,
    norm: str,
    eps: float,
    fit_bias: bool = True,
    num_steps: int = 3000,
    learning_rate: float = 0.05,
) -> tuple[jax.Array, jax.Array]:
    """Minimiser of the sample adversarial risk with the exact inner maximum (full batch).

    ``min_{w, b} mean_i (|y_i - w^T x_i - b| + eps ||w||_q)^2``: the finite-sample target that
    PGD adversarial training of the linear model should reach (Adam, cosine decay to 0).

    Returns:
      ``(w [d], b)``.
    """
    geometry.check_norm(norm)
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.0))

    def risk(params):
        w, b = params
        b = b if fit_bias else 0.0
        return jnp.mean(adversarial_squared_loss(w, x, y, norm=norm, eps=eps, bias=b))

    @jit
    def solve(params):
        def step(carry, _):
            p, st = carry
            updates, st = opt.update(jax.grad(risk)(p), st, p)
            return (optax.apply_updates(p, updates), st), None

        (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=num_steps)
        return p

    w, b = solve((jnp.zeros((x.shape[1],), jnp.float32), jnp.zeros((), jnp.float32)))
    return w, (b if fit_bias else jnp.zeros(()))


# ---------------------------------------------------------------------------------------
# Tsipras et al. 2019 toy model (section 2.1).
# ---------------------------------------------------------------------------------------


def averaging_classifier(dim: int) -> np.ndarray:
    """``w = [0, 1/d, ..., 1/d]``: the standard classifier of the toy model (length d + 1)."""
    w = np.full((dim + 1,), 1.0 / dim, np.float32)
    w[0] = 0.0
    return w


def robust_feature_classifier(dim: int) -> np.ndarray:
    """``w = e_1``, i.e. ``sign(x_1)``: the robust classifier of the toy model."""
    w = np.zeros((dim + 1,), np.float32)
    w[0] = 1.0
    return w


def mixture_classifier(alpha: float, dim: int) -> np.ndarray:
    """``w_alpha = alpha * e_1 + (1 - alpha) * [0, 1/d, ..., 1/d]``."""
    return (
        alpha * robust_feature_classifier(dim) + (1.0 - alpha) * averaging_classifier(dim)
    ).astype(np.float32)


def averaging_accuracy(*, dim: int, eta: float, eps: float = 0.0) -> float:
    """Accuracy of the averaging classifier under an l_inf adversary of radius ``eps``.

    ``(1/d) sum x_i ~ N(eta y, 1/d)`` and the adversary subtracts ``eps y`` from every
    coordinate, so the accuracy is ``Phi((eta - eps) sqrt(d))`` (Tsipras et al. eq. in 2.1):
    ``Phi(3) ~ 99.87%`` at ``eta = 3/sqrt(d)``, ``Phi(-3) ~ 0.13%`` at ``eps = 2 eta``.
    """
    return float(jax_normal.cdf((eta - eps) * math.sqrt(dim)))


def robust_feature_accuracy(*, p: float, eps: float = 0.0) -> float:
    """Accuracy of ``sign(x_1)`` under an l_inf adversary: ``p`` for ``eps < 1``, else 0."""
    return float(p) if eps < 1.0 else 0.0


def linear_accuracy(
    w: jax.Array,
    bias: float | jax.Array = 0.0,
    *,
    eta: float,
    p: float,
    eps: float | jax.Array = 0.0,
) -> jax.Array:
    """Closed-form l_inf-robust accuracy of ``sign(w^T x + b)`` on the Tsipras toy model.

    The worst-case margin of a linear classifier is ``y (w^T x + b) - eps ||w||_1``. Writing
    ``w = (a, v)``: given ``y`` and ``x_1 = s y`` (``s = +1`` w.p. ``p``), the margin is
    ``N(s a + y b + eta sum(v) - eps ||w||_1, ||v||_2^2)``, hence

    ``acc = 1/2 sum_y [p Phi(m(+1, y) / ||v||) + (1 - p) Phi(m(-1, y) / ||v||)]``,

    with the limit ``1[m > 0]`` when ``v = 0``. ``eps = 0`` gives the standard accuracy.
    Features are unbounded, so the adversary is not clipped to a box.

    Args:
      w: weights ``[d + 1]`` (robust feature first).
      bias: intercept.
      eta: mean of the weak features.
      p: probability that ``x_1 = y``.
      eps: l_inf radius.

    Returns:
      Scalar accuracy in [0, 1].
    """
    w = jnp.asarray(w, jnp.float32)
    a, v = w[0], w[1:]
    std = jnp.linalg.norm(v)
    base = eta * jnp.sum(v) - eps * jnp.sum(jnp.abs(w))
    acc = 0.0
    for y in (1.0, -1.0):
        for s, prob in ((1.0, p), (-1.0, 1.0 - p)):
            m = s * a + y * bias + base
            safe = jnp.where(std > 0, std, 1.0)
            pr = jnp.where(std > 0, jax_normal.cdf(m / safe), (m > 0).astype(jnp.float32))
            acc = acc + 0.5 * prob * pr
    return acc


def linear_margins(
    w: jax.Array, bias: float | jax.Array, x: jax.Array, y: jax.Array, *, eps: float = 0.0
) -> jax.Array:
    """Exact worst-case l_inf margins ``y (w^T x + b) - eps ||w||_1`` (``y`` in {-1, +1})."""
    return y * (x @ w + bias) - eps * jnp.sum(jnp.abs(w))


def empirical_linear_accuracy(
    w: jax.Array, bias: float | jax.Array, x: jax.Array, y: jax.Array, *, eps: float = 0.0
) -> tuple[float, float]:
    """Monte-Carlo l_inf-robust accuracy of a linear classifier and its standard error.

    A prediction counts as correct when the worst-case margin is positive (ties are errors,
    matching ``sign(0) != y``).

    Returns:
      ``(accuracy, standard_error)`` with ``se = sqrt(a (1 - a) / n)``.
    """
    correct = linear_margins(w, bias, x, y, eps=eps) > 0
    a = float(jnp.mean(correct))
    return a, math.sqrt(max(a * (1.0 - a), 0.0) / correct.shape[0])


def tsipras_bound(standard_accuracy: float | jax.Array, *, p: float) -> jax.Array:
    """Theorem 1 of Tsipras et al.: robust accuracy at ``eps >= 2 eta`` is at most this.

    Any classifier with standard accuracy ``1 - delta`` has l_inf robust accuracy at most
    ``p / (1 - p) * delta`` (the adversary maps the weak features' law given ``y`` onto their
    law given ``-y``).
    """
    delta = 1.0 - jnp.asarray(standard_accuracy)
    return p / (1.0 - p) * delta


def mixture_sweep(
    alphas: Sequence[float], *, dim: int, eta: float, p: float, eps: float
) -> dict[str, np.ndarray]:
    """Closed-form standard / robust accuracy and the Theorem-1 bound along ``w_alpha``.

    Returns:
      Dict of arrays over ``alphas``: ``alpha``, ``standard``, ``robust``, ``bound``.
    """
    std, rob = [], []
    for al in alphas:
        w = jnp.asarray(mixture_classifier(float(al), dim))
        std.append(float(linear_accuracy(w, eta=eta, p=p, eps=0.0)))
        rob.append(float(linear_accuracy(w, eta=eta, p=p, eps=eps)))
    std_a = np.asarray(std)
    return {
        "alpha": np.asarray(alphas, float),
        "standard": std_a,
        "robust": np.asarray(rob),
        "bound": np.asarray(tsipras_bound(std_a, p=p)),
    }
