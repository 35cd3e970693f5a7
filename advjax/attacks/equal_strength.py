"""Equal-strength adversarial examples for the interaction analysis (Ren et al., 2103.07364).

To compare interactions on x and x_adv across models, every adversarial example is made to
lower the true-class logit by the same amount: untargeted PGD on the cross-entropy stops once
the drop z_y(x) - z_y(x_adv) lies in a band (lo, hi] (the reference code uses (8, 8.5]); a
step that overshoots past hi is undone and retried with half the step size. Each example
keeps its own step size and stops on its own; the batch is processed in one compiled loop.

The start and the step are the ascent core's primitives (`advjax.attacks.ascent`:
`start_delta` with ``start='gaussian'``, `ascent_step`); only the stopping rule, which
the core's fixed-length loop does not have, lives here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from advjax import geometry
from advjax.attacks import example_keys
from advjax.attacks.ascent import ascent_step, expand, start_delta
from advjax.compile import jit


class EqualStrengthResult(NamedTuple):
    """Output of `equal_strength_pgd`, one entry per example."""

    x_adv: jax.Array  # [B, ...] the last accepted iterate
    drop: jax.Array  # [B] z_y(x) - z_y(x_adv)
    in_band: jax.Array  # [B] bool, lo < drop <= hi
    steps: jax.Array  # [B] int, iterations spent (accepted and retried steps)
    step_size: jax.Array  # [B] final step size after halvings


def equal_strength_pgd(model: Any, x: jax.Array, y: jax.Array, key: jax.Array, **kwargs):
    """`_equal_strength_pgd` for an `advjax.models.Model` or a plain logits function.

    The model travels as data: models of one architecture share the compiled loop.
    """
    from advjax.models import as_model

    return _equal_strength_pgd(as_model(model), x, y, key, **kwargs)


@functools.partial(
    jit,
    static_argnames=("eps", "step_size", "max_steps", "band", "norm", "init_std", "bounds"),
)
def _equal_strength_pgd(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    step_size: float,
    max_steps: int = 100,
    band: tuple[float, float] = (8.0, 8.5),
    norm: str = "linf",
    init_std: float = 0.001,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> EqualStrengthResult:
    """PGD that stops when the true-class logit drop reaches ``band`` (Ren et al., Sec. 4).

    Starts at x + init_std * N(0, 1) projected to the threat model (as the reference
    ``attack_magnitude_untarget``; `start_delta` with ``start='gaussian'``, one key per
    example from ``key``), then repeats: take a step of the current size along the
    steepest ascent of the cross-entropy, projected onto the eps-ball and the box
    (`ascent_step`); if the drop z_y(x) - z_y(candidate) exceeds hi, reject the candidate
    and halve the step; otherwise accept it and stop once the drop exceeds lo. Every
    iteration (accepted or retried) counts towards ``max_steps``; the loop ends when all
    examples have stopped or the budget is spent.

    Args:
      logits_fn: batched eval-mode model x -> logits [B, K].
      x: clean inputs [B, ...] in ``bounds``.
      y: true labels [B] int.
      key: PRNG key for the random start.
      eps: radius of the threat model.
      step_size: initial step size.
      max_steps: iteration budget per example.
      band: (lo, hi) of the target logit drop.
      norm: 'linf' (reference default), 'l2' or 'l1' (see `advjax.geometry`).
      init_std: standard deviation of the Gaussian start.
      bounds: input box.

    Returns:
      `EqualStrengthResult`; examples with ``in_band`` False ran out of steps or budget.
      Compiled once per architecture and hyperparameters (all static).
    """
    geometry.check_norm(norm, key="analysis.attack.norm")
    lo, hi = band
    if not lo < hi:
        raise ValueError(f"config key 'analysis.attack.band': need lo < hi, got {band}")
    x = jnp.asarray(x, jnp.float32)
    batch = x.shape[0]
    rows = jnp.arange(batch)
    radius = jnp.full((batch,), eps, x.dtype)
    z_clean = logits_fn(x)[rows, y]

    def loss_and_true_logit(delta: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = logits_fn(x + delta)
        ce = jax.nn.logsumexp(logits, axis=-1) - logits[rows, y]
        return jnp.sum(ce), logits[rows, y]

    grad_fn = jax.grad(loss_and_true_logit, has_aux=True)

    d0 = start_delta(
        example_keys(key, batch),
        x,
        radius,
        start="gaussian",
        norm=norm,
        bounds=bounds,
        start_scale=init_std,
    )
    g0, z0 = grad_fn(d0)
    drop0 = z_clean - z0
    state = (
        jnp.int32(0),
        d0,
        g0,
        drop0,
        jnp.full((batch,), step_size, jnp.float32),
        (drop0 > lo) & (drop0 <= hi),
        jnp.zeros((batch,), jnp.int32),
    )

    def cond(state):
        it, *_, done, _ = state
        return (it < max_steps) & ~jnp.all(done)

    def body(state):
        it, delta, grad, drop, step, done, steps = state
        cand = ascent_step(delta, grad, x, step, norm=norm, eps=radius, bounds=bounds)
        cand_grad, z = grad_fn(cand)
        cand_drop = z_clean - z
        active = ~done
        accept = active & (cand_drop <= hi)
        delta = jnp.where(expand(accept, delta), cand, delta)
        grad = jnp.where(expand(accept, grad), cand_grad, grad)
        drop = jnp.where(accept, cand_drop, drop)
        step = jnp.where(active & ~accept, step / 2, step)
        done = done | (accept & (cand_drop > lo))
        return it + 1, delta, grad, drop, step, done, steps + active.astype(jnp.int32)

    _, delta, _, drop, step, done, steps = jax.lax.while_loop(cond, body, state)
    return EqualStrengthResult(x + delta, drop, done, steps, step)
