"""l_1-APGD: APGD for the l_1 threat model with its adaptive sparsity (Croce & Hein 2021).

Croce & Hein 2021, "Mind the box: l_1-APGD for sparse adversarial attacks on image
classifiers", Sec. 3-4, as AutoAttack's reference code runs it (``autopgd_base.py``):

* the step moves the coordinates whose |gradient| is in the top ``k`` fraction (their
  sign, scaled to l_1 length ``eta``), then projects exactly onto the l_1 ball
  intersected with the box (`advjax.geometry.project_l1_box`); there is no momentum;
* ``eta`` starts at ``eps`` (alpha = 1) and ``k`` at 20% of the coordinates;
* every ``max(int(0.04 N), 1)`` steps (a checkpoint) the sparsity ``s`` of the best
  point so far, ``||x_max - x||_0``, sets ``k = s / (1.5 d)``; if ``s`` fell below 95%
  of its value at the last checkpoint the step returns to ``eps`` and the iterate
  restarts from the best point, otherwise ``eta`` is divided by 1.5; ``eta`` stays in
  ``[eps / 10, eps]``;
* with ``large_eps`` (AutoAttack's ``use_largereps``, on in its ``standard`` l_1
  version) the run is three stages at radii 3 eps, 2 eps and eps with 30%, 30% and 40%
  of the steps, each started from the previous stage's best point projected onto the
  smaller ball (the first from a Gaussian point projected onto the 3 eps ball), ``k``
  starting at the start's sparsity / 1.5; only the last stage's points count.

Without ``large_eps`` the start is a Gaussian point projected onto the eps ball and box.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import geometry, losses
from advjax.attacks import example_keys
from advjax.attacks.apgd import best_of_restarts, over_targets

LogitsFn = Callable[[jax.Array], jax.Array]

# The reference's constants (Croce & Hein 2021; autopgd_base.py).
STEP_FACTOR = 1.0  # eta = STEP_FACTOR * eps at the start and after a sparsity drop
INITIAL_TOP_FRACTION = 0.2
SPARSITY_DROP = 0.95
TOP_FRACTION_DIVISOR = 1.5
STEP_DECAY = 1.5
MIN_STEP_FRACTION = 0.1
CHECKPOINT_FRACTION = 0.04
LARGE_EPS_SCHEDULE = ((3.0, 0.3), (2.0, 0.3), (1.0, 0.4))


def _per_example(v: jax.Array, like: jax.Array) -> jax.Array:
    return v.reshape((like.shape[0],) + (1,) * (like.ndim - 1))


def _where(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(_per_example(mask, a) if a.ndim > 1 else mask, a, b)


def _l0(v: jax.Array) -> jax.Array:
    return jnp.sum(v.reshape(v.shape[0], -1) != 0, axis=1).astype(v.dtype)


def sparse_step(grad: jax.Array, top_fraction: jax.Array) -> jax.Array:
    """The l_1-APGD direction: sign of the gradient on its top ``top_fraction``
    coordinates by magnitude (ties included), scaled to unit l_1 norm, per example."""
    flat = grad.reshape(grad.shape[0], -1)
    d = flat.shape[1]
    ranked = jnp.sort(jnp.abs(flat), axis=1)
    index = jnp.clip(((1.0 - top_fraction) * d).astype(jnp.int32), 0, d - 1)
    threshold = jnp.take_along_axis(ranked, index[:, None], axis=1)
    signs = jnp.where(jnp.abs(flat) >= threshold, jnp.sign(flat), 0.0)
    signs = signs / (jnp.sum(jnp.abs(signs), axis=1, keepdims=True) + 1e-10)
    return signs.reshape(grad.shape)


def _single_run(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    x_start: jax.Array,
    eps: jax.Array,
    target: jax.Array | None,
    *,
    num_steps: int,
    loss: str,
    bounds: tuple[float, float],
    sparsity_from_start: bool,
):
    """One l_1-APGD run from ``x_start``: (x_max, found, f_max, x_found) per example."""
    d = math.prod(x.shape[1:])

    def objective(xa):
        logits = logits_fn(xa)
        lv = losses.attack_loss(loss, logits, y, target=target)
        return jnp.sum(lv), (lv, jnp.argmax(logits, axis=1) != y)

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def project(xa):
        return x + geometry.project_l1_box(xa - x, x, eps, bounds)

    x0 = jnp.clip(x_start, bounds[0], bounds[1])
    (_, (f0, s0)), g0 = grad_fn(x0)
    if sparsity_from_start:
        top = _l0(x0 - x) / d / TOP_FRACTION_DIVISOR
        sparsity = _l0(x0 - x)
    else:
        top = jnp.full((x.shape[0],), INITIAL_TOP_FRACTION, x.dtype)
        sparsity = jnp.full((x.shape[0],), float(d), x.dtype)
    period = max(int(CHECKPOINT_FRACTION * num_steps), 1)
    eta_max = STEP_FACTOR * eps
    state = {
        "x": x0, "g": g0,
        "x_max": x0, "g_max": g0, "f_max": f0,
        "eta": eta_max, "top": top, "sparsity": sparsity,
        "x_found": x0, "found": s0,
    }  # fmt: skip

    def body(i, s):
        x_new = project(s["x"] + _per_example(s["eta"], x) * sparse_step(s["g"], s["top"]))
        (_, (f_new, succ)), g_new = grad_fn(x_new)
        x_found = _where(succ, x_new, s["x_found"])
        up = f_new > s["f_max"]
        x_max = _where(up, x_new, s["x_max"])
        g_max = _where(up, g_new, s["g_max"])
        f_max = jnp.where(up, f_new, s["f_max"])

        at_ckpt = (i + 1) % period == 0
        current = _l0(x_max - x)
        dropped = current / s["sparsity"] < SPARSITY_DROP
        eta = jnp.clip(
            jnp.where(dropped, eta_max, s["eta"] / STEP_DECAY), eta_max * MIN_STEP_FRACTION, eta_max
        )
        restart = at_ckpt & dropped
        return {
            "x": _where(restart, x_max, x_new),
            "g": _where(restart, g_max, g_new),
            "x_max": x_max,
            "g_max": g_max,
            "f_max": f_max,
            "eta": jnp.where(at_ckpt, eta, s["eta"]),
            "top": jnp.where(at_ckpt, current / d / TOP_FRACTION_DIVISOR, s["top"]),
            "sparsity": jnp.where(at_ckpt, current, s["sparsity"]),
            "x_found": x_found,
            "found": s["found"] | succ,
        }

    s = jax.lax.fori_loop(0, num_steps, body, state)
    return s["x_max"], s["found"], s["f_max"], s["x_found"]


def _gaussian_start(keys, x, eps, bounds):
    noise = jax.vmap(lambda k, xi: jax.random.normal(k, xi.shape, xi.dtype))(keys, x)
    return x + geometry.project_l1_box(noise, x, eps, bounds)


def apgd_l1_run(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    keys: jax.Array,
    eps: jax.Array,
    target: jax.Array | None,
    *,
    num_steps: int,
    loss: str,
    bounds: tuple[float, float],
    large_eps: bool,
):
    """One l_1-APGD run (with the large-eps stages when ``large_eps``): returns, per
    example, (a misclassified point if one was found else the highest-loss point,
    success, highest loss) at radius ``eps``."""
    if not large_eps:
        start = _gaussian_start(keys, x, eps, bounds)
        x_max, found, f_max, x_found = _single_run(
            logits_fn, x, y, start, eps, target, num_steps=num_steps, loss=loss,
            bounds=bounds, sparsity_from_start=False,
        )  # fmt: skip
        return _where(found, x_found, x_max), found, f_max
    steps = [math.ceil(frac * num_steps) for _, frac in LARGE_EPS_SCHEDULE]
    steps[-1] = num_steps - sum(steps[:-1])
    current = _gaussian_start(keys, x, LARGE_EPS_SCHEDULE[0][0] * eps, bounds)
    for (scale, _), n in zip(LARGE_EPS_SCHEDULE, steps, strict=True):
        stage_eps = scale * eps
        current = x + geometry.project_l1_box(current - x, x, stage_eps, bounds)
        if n < 1:
            continue
        current, found, f_max, x_found = _single_run(
            logits_fn, x, y, current, stage_eps, target, num_steps=n, loss=loss,
            bounds=bounds, sparsity_from_start=True,
        )  # fmt: skip
    return _where(found, x_found, current), found, f_max


def apgd_l1(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: jax.Array | float,
    num_steps: int = 100,
    loss: str = "ce",
    num_restarts: int = 1,
    large_eps: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Untargeted l_1-APGD (Croce & Hein 2021) on the CE or DLR loss.

    AutoAttack's reference settings: ``num_steps=100``; its ``standard`` l_1 version
    runs APGD-CE with ``num_restarts=5`` and ``large_eps=True``.

    Args:
      logits_fn: eval-mode ``x -> logits``.
      x: clean inputs ``(batch, ...)`` in ``bounds``.
      y: true labels ``(batch,)``.
      key: one PRNG key or per-example keys.
      eps: scalar or ``(batch,)`` l_1 radius.
      num_steps: iterations N (static).
      loss: 'ce', 'dlr' or 'margin'.
      num_restarts: random restarts, worst case per example (a vmap axis).
      large_eps: the 3 eps / 2 eps / eps schedule (module docstring).
      bounds: input box.

    Returns:
      ``x_adv`` with ``||x_adv - x||_1 <= eps`` in the box.
    """
    keys = example_keys(key, x.shape[0])
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (x.shape[0],))

    def run(k):
        return apgd_l1_run(
            logits_fn, x, y, k, eps, None, num_steps=num_steps, loss=loss, bounds=bounds,
            large_eps=large_eps,
        )  # fmt: skip

    return best_of_restarts(run, keys, num_restarts)[0]


def apgd_l1_targeted(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: jax.Array | float,
    num_steps: int = 100,
    num_targets: int = 9,
    loss: str = "dlr",
    num_restarts: int = 1,
    large_eps: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """l_1-APGD-T: targeted l_1-APGD against the top ``num_targets`` other classes.

    AutoAttack's ``standard`` l_1 version: ``num_targets=5``, ``num_restarts=1``,
    ``large_eps=True``, 100 steps per target. Per example the first success over the
    targets (by decreasing clean logit, a ``lax.scan``) is kept.
    """
    batch = x.shape[0]
    keys = example_keys(key, batch)
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,))

    def run_for_target(t):
        def run(k):
            return apgd_l1_run(
                logits_fn, x, y, k, eps, t, num_steps=num_steps, loss=loss, bounds=bounds,
                large_eps=large_eps,
            )  # fmt: skip

        return run

    return over_targets(
        logits_fn, x, y, keys, num_targets=num_targets, num_restarts=num_restarts,
        run_for_target=run_for_target,
    )  # fmt: skip
