"""The one ascent core: every inner maximisation in advjax is a configuration of it.

Madry et al. 2018, Eq. 2: ``x_{t+1} = P_{B(x, eps) ∩ box}(x_t + alpha * s(grad_x L(x_t)))``
with ``s`` the steepest-ascent direction of the threat model (sign for l_inf,
normalised gradient for l_2, sparse signs for l_1; `advjax.geometry`). A run is
configured by

* ``start``: 'none' (the clean point), 'uniform' (uniform in the ball, Madry et al.),
  'gaussian' (``start_scale * N(0, I)`` projected, the TRADES start of Zhang et al.),
  'clean_first' (the first restart at the clean point, further ones uniform), or an
  explicit ``init_delta`` (Free AT's carried perturbation);
* ``loss``: a name of `advjax.losses.attack_loss` ('ce', 'margin', 'dlr', 'kl') or a
  callable ``loss(outputs, y, clean_outputs) -> per-example value`` (regression's
  squared error, a pairwise KL to minimise as its negative);
* the geometry step `ascent_step` (direction, step length, projection);
* ``keep``: 'best' (the per-example worst case over iterates: a successful point beats
  any other, then the higher loss) or 'last' (the final iterate, as TRADES' and
  FGSM-RS' reference code do).

Restarts are a ``vmap`` axis with the per-example worst case over them. Everything is
pure and traceable: shapes are static, ``eps`` and ``step_size`` may be traced (eps
sweeps and the training ramp vmap or scale them), and per-example PRNG keys make
results independent of how examples are batched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from advjax import geometry, losses
from advjax.attacks import example_keys, fold_in_each, resolve_unroll

LogitsFn = Callable[[jax.Array], jax.Array]
LossFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]

STARTS = ("none", "uniform", "gaussian", "clean_first")
KEEPS = ("best", "last")
STEP_SCHEDULES = ("constant", "cosine", "linear")


class AscentResult(NamedTuple):
    """Per-example outcome of `ascent`."""

    delta: jax.Array  # [B, ...] the kept perturbation (x + delta lies in the box)
    loss: jax.Array  # [B] its loss
    success: jax.Array  # [B] bool, misclassified (or on target); False for non-label losses


def default_step_size(eps, num_steps: int):
    """The one default step rule, ``2.5 * eps / num_steps`` (Madry et al. 2018, Sec. 4)."""
    return 2.5 * eps / max(int(num_steps), 1)


def ramped(eps, step_size, eps_scale):
    """The training eps ramp, in one place: radius and step length scaled together.

    `Attack.__call__` applies it through ``eps_scale`` (the step follows the radius);
    objectives that call the core or its step directly (Free AT, squared-loss AT) use
    this function. ``eps_scale`` None leaves both unchanged.
    """
    if eps_scale is None:
        return eps, step_size
    return eps * eps_scale, step_size * eps_scale


def expand(v: jax.Array, like: jax.Array) -> jax.Array:
    """``v [B]`` broadcastable against ``like [B, ...]``."""
    return v.reshape((like.shape[0],) + (1,) * (like.ndim - 1))


def is_success(logits: jax.Array, y: jax.Array, *, targeted: bool) -> jax.Array:
    """Per-example attack success: misclassified (untargeted) or predicted target."""
    pred = jnp.argmax(logits, axis=1)
    return pred == y if targeted else pred != y


def better(
    loss_new: jax.Array, succ_new: jax.Array, loss_old: jax.Array, succ_old: jax.Array
) -> jax.Array:
    """Whether a candidate is a worse case for the model than the incumbent.

    Success first (a misclassified point beats any other), then the higher loss.
    """
    return (succ_new & ~succ_old) | ((succ_new == succ_old) & (loss_new > loss_old))


def schedule_factor(step: jax.Array, num_steps: int, schedule: str) -> jax.Array:
    """Multiplier of the step length at ``step``: constant, cosine or linear decay."""
    if schedule == "constant" or num_steps <= 1:
        return jnp.ones((), jnp.float32)
    frac = step.astype(jnp.float32) / num_steps
    if schedule == "cosine":
        return 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return 1.0 - frac


def start_delta(
    keys: jax.Array,
    x: jax.Array,
    eps: jax.Array,
    *,
    start: str,
    norm: str,
    bounds: tuple[float, float],
    start_scale: float = 0.001,
) -> jax.Array:
    """The initial perturbation of one run, one key per example (see module docstring)."""
    if start == "none":
        return jnp.zeros_like(x)
    if start == "uniform":
        return jax.vmap(
            lambda k, xi, ei: geometry.random_init(k, xi[None], norm=norm, eps=ei, bounds=bounds)[0]
        )(keys, x, eps)
    if start == "gaussian":
        noise = jax.vmap(lambda k, xi: start_scale * jax.random.normal(k, xi.shape, xi.dtype))(
            keys, x
        )
        return geometry.project(noise, x, norm=norm, eps=eps, bounds=bounds)
    raise ValueError(f"unknown start {start!r}; allowed: {list(STARTS)}")


def ascent_step(
    delta: jax.Array,
    grad: jax.Array,
    x: jax.Array,
    step_size: jax.Array,
    *,
    norm: str,
    eps: jax.Array,
    bounds: tuple[float, float],
    l1_sparsity: float = 0.95,
) -> jax.Array:
    """One steepest-ascent step of length ``step_size`` [B], projected to the threat model."""
    direction = geometry.ascent_direction(
        grad, norm=norm, l1_sparsity=l1_sparsity, x_adv=x + delta, bounds=bounds
    )
    return geometry.project(
        delta + expand(step_size, delta) * direction, x, norm=norm, eps=eps, bounds=bounds
    )


def _scorer(loss, y, clean_logits, *, targeted: bool):
    """``outputs -> (per-example loss, success)`` for a loss name or callable."""
    if callable(loss):
        return lambda out: (loss(out, y, clean_logits), jnp.zeros((y.shape[0],), bool))
    target = y if targeted else None

    def score(logits):
        lv = losses.attack_loss(loss, logits, y, target=target, clean_logits=clean_logits)
        if loss == "kl":
            return lv, jnp.zeros(lv.shape, bool)
        return lv, is_success(logits, y, targeted=targeted)

    return score


def _run(
    logits_fn: LogitsFn,
    x: jax.Array,
    delta: jax.Array,
    eps: jax.Array,
    step_size: jax.Array,
    score,
    *,
    norm: str,
    num_steps: int,
    bounds: tuple[float, float],
    step_schedule: str,
    l1_sparsity: float,
    keep: str,
    need_final_score: bool,
    unroll: bool,
) -> AscentResult:
    """One ascent run from ``delta``."""

    def objective(d):
        lv, succ = score(logits_fn(x + d))
        return jnp.sum(lv), (lv, succ)

    grad_fn = jax.grad(objective, has_aux=True)
    keep_best = keep == "best"

    def body(i, carry):
        d, best_d, best_l, best_s = carry
        g, (lv, s) = grad_fn(d)
        if keep_best:
            upd = better(lv, s, best_l, best_s)
            best_d = jnp.where(expand(upd, d), d, best_d)
            best_l = jnp.where(upd, lv, best_l)
            best_s = jnp.where(upd, s, best_s)
        alpha = step_size * schedule_factor(i, num_steps, step_schedule)
        d = ascent_step(d, g, x, alpha, norm=norm, eps=eps, bounds=bounds, l1_sparsity=l1_sparsity)
        return d, best_d, best_l, best_s

    batch = x.shape[0]
    init = (delta, delta, jnp.full((batch,), -jnp.inf, x.dtype), jnp.zeros((batch,), bool))
    d, best_d, best_l, best_s = jax.lax.fori_loop(0, num_steps, body, init, unroll=unroll)
    if not (keep_best or need_final_score):
        return AscentResult(d, None, None)
    lv, s = score(logits_fn(x + d))
    if not keep_best:
        return AscentResult(d, lv, s)
    upd = better(lv, s, best_l, best_s)
    return AscentResult(
        jnp.where(expand(upd, d), d, best_d), jnp.where(upd, lv, best_l), jnp.where(upd, s, best_s)
    )


def worst_over_restarts(results: AscentResult, x: jax.Array) -> AscentResult:
    """Per-example worst case over a leading restart axis: any success, then the top loss."""
    succ, loss = results.success, results.loss
    any_succ = jnp.any(succ, axis=0)
    rank = jnp.where(any_succ[None], jnp.where(succ, loss, -jnp.inf), loss)
    best = jnp.argmax(rank, axis=0)

    def pick(v):
        return jnp.take_along_axis(v, expand(best, v[0])[None], axis=0)[0]

    return AscentResult(pick(results.delta), pick(loss), pick(succ))


def ascent(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str = "linf",
    eps: jax.Array | float,
    step_size: jax.Array | float,
    num_steps: int,
    loss: str | LossFn = "ce",
    targeted: bool = False,
    start: str = "uniform",
    start_scale: float = 0.001,
    init_delta: jax.Array | None = None,
    keep: str = "best",
    num_restarts: int = 1,
    bounds: tuple[float, float] = (0.0, 1.0),
    step_schedule: str = "constant",
    l1_sparsity: float = 0.95,
    unroll: bool | None = None,
) -> AscentResult:
    """Projected steepest ascent on ``loss`` inside ``B_norm(x, eps) ∩ [lo, hi]``.

    Args:
      logits_fn: ``x -> outputs`` of the model in evaluation mode.
      x: clean inputs ``[B, ...]`` in ``bounds``.
      y: labels ``[B]`` (target labels when ``targeted``; regression targets for a
        callable loss).
      key: one PRNG key for the batch, or per-example keys (`example_keys`).
      norm: 'linf', 'l2' or 'l1'.
      eps: radius, scalar or ``[B]``; may be traced.
      step_size: step length, scalar or ``[B]``; may be traced.
      num_steps: gradient steps (static).
      loss: a loss name or callable (module docstring); 'kl' compares with the clean
        outputs, which a callable receives as its third argument.
      targeted: move the prediction toward ``y``.
      start: 'none', 'uniform', 'gaussian' or 'clean_first' (module docstring).
      start_scale: standard deviation of the 'gaussian' start.
      init_delta: an explicit start (overrides ``start``; projected first).
      keep: 'best' or 'last' iterate.
      num_restarts: independent starts, a vmap axis; the per-example worst case is kept.
      bounds: the input box.
      step_schedule: 'constant', 'cosine' or 'linear' decay of the step length.
      l1_sparsity: fraction of coordinates an l_1 step leaves untouched.
      unroll: unroll the step loop (`advjax.attacks.resolve_unroll` when None).

    Returns:
      `AscentResult` with the kept ``delta``, its loss and success.
    """
    geometry.check_norm(norm)
    if start not in STARTS:
        raise ValueError(f"ascent: start {start!r}; allowed: {list(STARTS)}")
    if keep not in KEEPS:
        raise ValueError(f"ascent: keep {keep!r}; allowed: {list(KEEPS)}")
    if step_schedule not in STEP_SCHEDULES:
        raise ValueError(
            f"ascent: step_schedule {step_schedule!r}; allowed: {list(STEP_SCHEDULES)}"
        )
    if num_restarts < 1 or num_steps < 0:
        raise ValueError(
            f"need num_restarts >= 1 and num_steps >= 0, got {num_restarts}, {num_steps}"
        )
    batch = x.shape[0]
    keys = example_keys(key, batch)
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,))
    step_size = jnp.broadcast_to(jnp.asarray(step_size, x.dtype), (batch,))
    clean = None
    if loss == "kl" or callable(loss):
        clean = jax.lax.stop_gradient(logits_fn(x))
    score = _scorer(loss, y, clean, targeted=targeted)
    run_kw = dict(
        norm=norm,
        num_steps=num_steps,
        bounds=bounds,
        step_schedule=step_schedule,
        l1_sparsity=l1_sparsity,
        keep=keep,
        need_final_score=num_restarts > 1,
        unroll=resolve_unroll(unroll, num_steps, x),
    )

    def first_delta(k, restart):
        if init_delta is not None:
            return geometry.project(init_delta, x, norm=norm, eps=eps, bounds=bounds)
        kind = start
        if start == "clean_first":
            kind = "none" if restart == 0 else "uniform"
        return start_delta(k, x, eps, start=kind, norm=norm, bounds=bounds, start_scale=start_scale)

    if num_restarts == 1:
        return _run(logits_fn, x, first_delta(keys, 0), eps, step_size, score, **run_kw)
    restart_keys = jax.vmap(lambda r: fold_in_each(keys, r))(jnp.arange(num_restarts))
    if start == "clean_first" and init_delta is None:
        starts = jnp.concatenate(
            [
                first_delta(restart_keys[0], 0)[None],
                jax.vmap(lambda k: first_delta(k, 1))(restart_keys[1:]),
            ]
        )
    else:
        starts = jax.vmap(lambda k: first_delta(k, 1))(restart_keys)
    results = jax.vmap(lambda d: _run(logits_fn, x, d, eps, step_size, score, **run_kw))(starts)
    return worst_over_restarts(results, x)


def hparams_check(
    *,
    attack: str,
    start: Any = "uniform",
    keep: Any = "best",
    step_schedule: Any = "constant",
) -> None:
    """Raises ValueError naming the config key when a core option is not allowed."""
    for key, value, allowed in (
        ("start", start, STARTS),
        ("keep", keep, KEEPS),
        ("step_schedule", step_schedule, STEP_SCHEDULES),
    ):
        if value not in allowed:
            raise ValueError(
                f"attack {attack!r}: config key {key!r} got {value!r}; allowed: {list(allowed)}"
            )
