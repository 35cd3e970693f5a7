"""Single-step adversarial training: FGSM with random start and "free" replays.

* ``fgsm_rs`` (Wong, Rice & Kolter 2020, "Fast is better than free", Algorithm 3):
  ``delta ~ U[-eps, eps]^d``; ``delta <- clip_eps(delta + alpha * sign(grad_delta
  CE(f(x + delta), y)))``; train on ``x + delta`` kept inside the input box. Their
  default ``alpha = 1.25 * eps``. Guard against catastrophic overfitting with the
  training loop's per-epoch PGD check on a held-out batch (``config.train``).
* ``free_at`` (Shafahi et al. 2019, "Adversarial training for free!", Algorithm 1):
  each minibatch is replayed ``m`` times; every replay takes one optimizer step on
  ``CE(f(x + delta), y)`` and ascends ``delta <- clip_eps(delta + eps * sign(g_x))`` with
  the input gradient ``g_x`` of the *same* backward pass. ``delta`` persists across
  replays and across minibatches (the training loop's ``carry``).

Both papers use l_inf; the l_2 forms (uniform start in the l_2 ball, normalised-gradient
step) come from `advjax.geometry` and follow the same rules. FGSM-RS is the ascent core
(`advjax.attacks.ascent`) with a uniform start, one step and the last iterate kept; Free
AT's update is the core's `ascent_step` primitive, since its input gradient comes from
the training backward pass and no ascent loop of its own runs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import geometry, losses
from advjax.attacks import Attack, build_attack
from advjax.attacks.ascent import ascent, ascent_step, ramped
from advjax.objectives import Objective
from advjax.objectives.base import check_keys
from advjax.registry import one_of


def fgsm_rs_perturbation(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str = "linf",
    eps: float,
    step_size: float,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """The FGSM-RS perturbation of Wong et al. 2020 (Algorithm 3, lines 3-5).

    The ascent core with ``start='uniform'`` (``delta ~ U(B(0, eps))``, projected to the
    box; one key per example from ``key``), a single steepest-ascent step of length
    ``step_size`` on the cross-entropy and ``keep='last'``: the stepped point is used
    even where it lowers the loss, as in the reference code.

    Args:
      logits_fn: ``x -> logits`` (the model in evaluation mode).
      x: clean inputs in ``bounds``.
      y: integer labels.
      key: PRNG key for the uniform start.
      norm: 'linf' (the paper) or 'l2'.
      eps: radius of the threat model (may be traced).
      step_size: ``alpha``, the length of the steepest-ascent step (may be traced).
      bounds: the input box.

    Returns:
      ``delta`` with ``||delta||_p <= eps`` and ``x + delta`` inside ``bounds``.
    """
    return ascent(
        logits_fn,
        x,
        y,
        key,
        norm=norm,
        eps=eps,
        step_size=step_size,
        num_steps=1,
        loss="ce",
        start="uniform",
        keep="last",
        bounds=bounds,
    ).delta


def fgsm_rs_attack(*, norm: str, eps: float, step_size: float) -> Attack:
    """The registry 'fgsm' `Attack` with a random start: `fgsm_rs_perturbation`'s config.

    Called with ``eps_scale`` it scales the radius and ``alpha`` together.
    """
    return build_attack(
        # step 0 only with eps = 0, where the default step (eps) is 0 as well.
        dict(name="fgsm", norm=norm, eps=eps, step_size=step_size or None, start="uniform")
    )


def free_at_step(
    forward_train: Callable,
    params,
    x: jax.Array,
    y: jax.Array,
    delta: jax.Array,
    *,
    norm: str = "linf",
    eps: float,
    step_size: float,
    bounds: tuple[float, float] = (0.0, 1.0),
):
    """One replay of Free AT (Shafahi et al. 2019, Algorithm 1, lines 5-8).

    A single forward and backward pass on ``mean_i CE(f(x_i + delta_i), y_i)`` gives
    both the parameter gradient and the input gradient ``g_x``; then
    ``delta <- Proj(delta + step_size * sign(g_x))``, the ascent core's `ascent_step`
    (steepest-ascent direction of ``norm``, projection to the ball and the box). The
    core's loop cannot run here: the step reuses the gradient of the training backward
    pass, which is what makes the replays "free".

    Args:
      forward_train: ``(params, x) -> (logits, new_model_state)``.
      params: model parameters.
      x: clean inputs.
      y: integer labels.
      delta: the persistent perturbation; it may come from another minibatch, so it is
        first projected onto this batch's threat model.
      norm: 'linf' (the paper) or 'l2'.
      eps: radius.
      step_size: ascent step on ``delta`` (``eps`` in the paper).
      bounds: the input box.

    Returns:
      ``(loss, param_grads, new_delta, logits, new_model_state)``.
    """
    batch = x.shape[0]
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,))
    step_size = jnp.broadcast_to(jnp.asarray(step_size, x.dtype), (batch,))
    delta = geometry.project(delta, x, norm=norm, eps=eps, bounds=bounds)

    def mean_ce(p, d):
        logits, state = forward_train(p, x + d)
        return jnp.mean(losses.cross_entropy(logits, y)), (logits, state)

    (loss, (logits, state)), (g_params, g_delta) = jax.value_and_grad(
        mean_ce, argnums=(0, 1), has_aux=True
    )(params, delta)
    new_delta = ascent_step(delta, g_delta, x, step_size, norm=norm, eps=eps, bounds=bounds)
    return loss, g_params, new_delta, logits, state


def attach_gradient(value: jax.Array, params, grads) -> jax.Array:
    """Returns ``value`` with its gradient with respect to ``params`` set to ``grads``.

    ``params - stop_gradient(params)`` is exactly zero, so the value is unchanged, and
    its derivative is the identity, so the train step's differentiation of the loss
    picks up the already computed ``grads`` without a second backward pass.
    """
    zero_dot = sum(
        jnp.vdot(p - jax.lax.stop_gradient(p), jax.lax.stop_gradient(g))
        for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(grads), strict=True)
    )
    return jax.lax.stop_gradient(value) + zero_dot


def _threat_model(objective_config) -> tuple[str, float]:
    norm = objective_config.get("norm", "linf")
    one_of(norm, ["linf", "l2"], key="train.objective.norm")
    if "eps" not in objective_config:
        raise ValueError("config key 'train.objective.eps': required")
    eps = float(objective_config.eps)
    if eps < 0:
        raise ValueError(f"config key 'train.objective.eps': must be >= 0; got {eps}")
    return norm, eps


def _step_size(objective_config, default: float) -> float:
    step_size = objective_config.get("step_size", None)
    step_size = default if step_size is None else float(step_size)
    if step_size < 0:
        raise ValueError(f"config key 'train.objective.step_size': must be >= 0; got {step_size}")
    return step_size


def build_fgsm_rs(objective_config) -> Objective:
    """FGSM adversarial training with a random start (Wong et al. 2020, Algorithm 3).

    ``L = mean_i CE(f(x_i + delta_i), y_i)`` with ``delta`` from `fgsm_rs_perturbation`
    (through `fgsm_rs_attack`: uniform start, one step, last iterate), computed with the
    model in evaluation mode and treated as a constant.

    Args:
      objective_config: ``eps``; optional ``step_size`` (alpha > 0, default
        ``1.25 * eps``) and ``norm`` ('linf' default, or 'l2'). The attack call scales
        both lengths by ``batch["eps_scale"]`` (the training loop's eps ramp-up); the
        input box is ``forward.bounds``.

    Returns:
      The `Objective`.
    """
    check_keys(objective_config, {"eps", "step_size", "norm"}, objective="fgsm_rs")
    norm, eps = _threat_model(objective_config)
    step_size = _step_size(objective_config, 1.25 * eps)
    if step_size == 0 and eps > 0:
        raise ValueError("config key 'train.objective.step_size': must be > 0 when eps > 0")
    attack = fgsm_rs_attack(norm=norm, eps=eps, step_size=step_size)

    def loss_fn(params, forward, batch, key, carry):
        del carry
        x, y = batch["x"], batch["y"]
        x_adv = attack(
            lambda inputs: forward.eval(jax.lax.stop_gradient(params), inputs),
            x,
            y,
            key,
            bounds=forward.bounds,
            eps_scale=batch.get("eps_scale"),
        )
        logits, state = forward.train(params, jax.lax.stop_gradient(x_adv))
        loss = jnp.mean(losses.cross_entropy(logits, y))
        metrics = {"loss": loss, "adv_accuracy": jnp.mean(losses.accuracy(logits, y))}
        return loss, {"model_state": state, "metrics": metrics}

    return Objective(loss_fn=loss_fn)


def build_free_at(objective_config) -> Objective:
    """Free adversarial training with ``replays = m`` (Shafahi et al. 2019, Algorithm 1).

    The training loop replays each minibatch ``m`` times (one optimizer update each) and
    threads the perturbation through ``carry``. Shafahi et al. divide the number of
    epochs by ``m`` so the number of gradient computations matches standard training
    (CIFAR-10: m = 8, eps = 8/255).

    Args:
      objective_config: ``eps``, ``replays`` (m >= 1, default 8); optional ``step_size``
        for ``delta`` (default ``eps``) and ``norm`` ('linf' default, or 'l2'). ``eps``
        and ``step_size`` are scaled by ``batch["eps_scale"]`` through
        `advjax.attacks.ascent.ramped` (no attack call runs here); the input box is
        ``forward.bounds``.

    Returns:
      The `Objective` (``replays=m``, ``uses_carry=True``).
    """
    check_keys(objective_config, {"eps", "step_size", "norm", "replays"}, objective="free_at")
    norm, eps = _threat_model(objective_config)
    step_size = _step_size(objective_config, eps)
    replays = int(objective_config.get("replays", 8))
    if replays < 1:
        raise ValueError(f"config key 'train.objective.replays': must be >= 1; got {replays}")

    def loss_fn(params, forward, batch, key, carry):
        del key
        x, y = batch["x"], batch["y"]
        delta = jnp.zeros_like(x) if carry is None else carry
        ramp_eps, ramp_step = ramped(eps, step_size, batch.get("eps_scale"))
        loss, g_params, new_delta, logits, state = free_at_step(
            forward.train,
            params,
            x,
            y,
            delta,
            norm=norm,
            eps=ramp_eps,
            step_size=ramp_step,
            bounds=forward.bounds,
        )
        metrics = {"loss": loss, "adv_accuracy": jnp.mean(losses.accuracy(logits, y))}
        aux = {"model_state": state, "metrics": metrics, "carry": new_delta}
        return attach_gradient(loss, params, g_params), aux

    return Objective(loss_fn=loss_fn, replays=replays, uses_carry=True)
