"""Gradient-norm regularisers: input-gradient (double backprop) and Jacobian penalties.

Both penalise how fast the model's output moves with the input, a cheap surrogate for
robustness that needs no inner maximisation:

* ``input_gradient`` (Drucker & LeCun 1992 "double backpropagation"; Ross & Doshi-Velez
  2018): cross-entropy plus ``weight`` times the squared l2 norm of the input
  gradient of each example's cross-entropy, averaged over the batch.
* ``jacobian`` (Hoffman, Roberts & Yaida 2019, "Robust learning with Jacobian
  regularization", joint loss and Algorithm 1): cross-entropy plus ``weight / 2`` times the
  squared Frobenius norm of the logits' input Jacobian, estimated with random
  projections onto the unit sphere of the logit space.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import losses
from advjax.objectives import Objective
from advjax.objectives.base import check_keys


def _flat_sq_norm(g: jax.Array) -> jax.Array:
    """Per-example squared l2 norm over every non-batch axis."""
    return jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=1)


def input_gradient_terms(
    forward_train: Callable, params, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, object]:
    """Cross-entropy and squared input-gradient norm of every example, in one forward pass.

    The gradient is taken of the *summed* cross-entropy with respect to the batch, which
    equals each example's own gradient ``grad_x CE(f(x_i), y_i)`` whenever examples do
    not interact (eval mode, or models without BatchNorm). The result stays
    differentiable in ``params`` (double backpropagation).

    Args:
      forward_train: ``(params, x) -> (logits, new_model_state)``.
      params: model parameters.
      x: inputs, batch first.
      y: integer labels, shape [batch].

    Returns:
      ``(ce, grad_sq_norm, logits, new_model_state)``; the first two have shape [batch].
    """

    def summed_ce(inputs):
        logits, state = forward_train(params, inputs)
        ce = losses.cross_entropy(logits, y)
        return jnp.sum(ce), (ce, logits, state)

    grad_x, (ce, logits, state) = jax.grad(summed_ce, has_aux=True)(x)
    return ce, _flat_sq_norm(grad_x), logits, state


def random_projection_frobenius(
    vjp_fn: Callable[[jax.Array], jax.Array],
    batch_size: int,
    num_classes: int,
    key: jax.Array,
    *,
    num_projections: int,
) -> jax.Array:
    """Estimates ``||J(x_i)||_F^2`` for every example (Hoffman et al. 2019, Algorithm 1).

    For ``v`` uniform on the unit sphere of R^C, ``E[C * ||v^T J||^2] = ||J||_F^2`` because
    ``E[v v^T] = I / C``. Each projection costs one vector-Jacobian product; projections
    run one at a time in a `lax.scan`, so memory does not grow with their number.

    Args:
      vjp_fn: maps logit cotangents [batch, C] to input cotangents (batch first), e.g.
        the function returned by `jax.vjp` of the batched logits.
      batch_size: number of examples.
      num_classes: C, the logit dimension.
      key: PRNG key for the projection directions.
      num_projections: ``n_proj`` in the paper (1 during training).

    Returns:
      The per-example estimates, shape [batch].
    """

    def one_projection(total, k):
        v = jax.random.normal(k, (batch_size, num_classes))
        v = v / jnp.linalg.norm(v, axis=1, keepdims=True)
        jv = vjp_fn(v)
        return total + num_classes * _flat_sq_norm(jv), None

    keys = jax.random.split(key, num_projections)
    total, _ = jax.lax.scan(one_projection, jnp.zeros((batch_size,)), keys)
    return total / num_projections


def _positive(value, *, key: str) -> float:
    value = float(value)
    if value < 0:
        raise ValueError(f"config key '{key}': must be >= 0; got {value}")
    return value


def build_input_gradient(objective_config) -> Objective:
    """Double-backprop input-gradient regularisation (Ross & Doshi-Velez 2018).

    ``L = mean_i CE(f(x_i), y_i) + weight * mean_i ||grad_x CE(f(x_i), y_i)||_2^2``.

    Ross & Doshi-Velez sum the squared gradient over the batch; averaging instead keeps
    ``weight`` independent of the batch size (the batch size only rescales it).

    Args:
      objective_config: ``weight`` (lambda >= 0, default 1.0).

    Returns:
      The `Objective`.
    """
    check_keys(objective_config, {"weight"}, objective="input_gradient")
    weight = _positive(objective_config.get("weight", 1.0), key="train.objective.weight")

    def loss_fn(params, forward, batch, key, carry):
        del key, carry
        ce, grad_sq, logits, state = input_gradient_terms(
            forward.train, params, batch["x"], batch["y"]
        )
        penalty = jnp.mean(grad_sq)
        loss = jnp.mean(ce) + weight * penalty
        metrics = {
            "loss": loss,
            "loss_natural": jnp.mean(ce),
            "input_grad_sq_norm": penalty,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"]),
        }
        return loss, {"model_state": state, "metrics": metrics}

    return Objective(loss_fn=loss_fn)


def build_jacobian(objective_config) -> Objective:
    """Jacobian regularisation by random projections (Hoffman et al. 2019, Alg. 1).

    ``L = mean_i CE(f(x_i), y_i) + (weight / 2) * mean_i ||J(x_i)||_F^2`` with
    ``J(x) = d logits / d x`` and the Frobenius norm estimated from ``num_projections``
    random unit vectors in logit space (Hoffman et al. show that ``n_proj = 1`` suffices
    for training). The default ``weight`` is a starting point, not a published value.

    Args:
      objective_config: ``weight`` (lambda_JR >= 0, default 0.01) and
        ``num_projections`` (n_proj >= 1, default 1).

    Returns:
      The `Objective`.
    """
    check_keys(objective_config, {"weight", "num_projections"}, objective="jacobian")
    weight = _positive(objective_config.get("weight", 0.01), key="train.objective.weight")
    num_projections = int(objective_config.get("num_projections", 1))
    if num_projections < 1:
        raise ValueError(
            f"config key 'train.objective.num_projections': must be >= 1; got {num_projections}"
        )

    def loss_fn(params, forward, batch, key, carry):
        del carry
        x, y = batch["x"], batch["y"]
        logits, vjp_fn, state = jax.vjp(
            lambda inputs: forward.train(params, inputs), x, has_aux=True
        )
        frob = random_projection_frobenius(
            lambda v: vjp_fn(v)[0],
            x.shape[0],
            logits.shape[-1],
            key,
            num_projections=num_projections,
        )
        ce = losses.cross_entropy(logits, y)
        penalty = jnp.mean(frob)
        loss = jnp.mean(ce) + 0.5 * weight * penalty
        metrics = {
            "loss": loss,
            "loss_natural": jnp.mean(ce),
            "jacobian_frobenius_sq": penalty,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
        }
        return loss, {"model_state": state, "metrics": metrics}

    return Objective(loss_fn=loss_fn)
