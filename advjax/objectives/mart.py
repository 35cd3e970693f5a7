"""MART: misclassification-aware adversarial training (Wang et al. 2020).

``L = mean_i [ BCE(p(x'_i), y_i) + beta * KL(p(x_i) || p(x'_i)) * (1 - p_y(x_i)) ]``
(Wang, Zou, Yi, Bailey, Ma & Gu 2020, "Improving adversarial robustness requires
revisiting misclassified examples", the MART objective), with the boosted cross-entropy

``BCE(p(x'), y) = -log p_y(x') - log(1 - max_{k != y} p_k(x'))``

on the adversarial example ``x'`` (from the inner attack, a PGD on CE), and the KL term
weighted by how badly the clean example is classified, so misclassified examples are
regularised more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from advjax import losses
from advjax.attacks import ATTACKS
from advjax.objectives import Objective
from advjax.objectives.base import check_keys


def log_one_minus_prob(logits: jax.Array, k: jax.Array) -> jax.Array:
    """``log(1 - p_k)`` per example, as ``logsumexp_{j != k} z_j - logsumexp_j z_j``.

    Stable where ``p_k`` rounds to 1, unlike ``log1p(-softmax(z)_k)``.
    """
    is_k = jax.nn.one_hot(k, logits.shape[-1], dtype=bool)
    others = jnp.where(is_k, -jnp.inf, logits)
    return jax.nn.logsumexp(others, axis=-1) - jax.nn.logsumexp(logits, axis=-1)


def mart_terms(
    logits_clean: jax.Array, logits_adv: jax.Array, y: jax.Array
) -> dict[str, jax.Array]:
    """Per-example pieces of the MART loss (Wang et al. 2020).

    Args:
      logits_clean: logits at the clean inputs.
      logits_adv: logits at the adversarial inputs.
      y: integer labels.

    Returns:
      ``{"bce", "kl", "weight"}``, each of shape [batch]: the boosted cross-entropy on
      ``x'``, ``KL(p(x) || p(x'))`` and ``1 - p_y(x)``.
    """
    is_true = jax.nn.one_hot(y, logits_adv.shape[-1], dtype=bool)
    # The most likely wrong class; its choice is piecewise constant, so no gradient.
    runner_up = jnp.argmax(jnp.where(is_true, -jnp.inf, logits_adv), axis=-1)
    bce = losses.cross_entropy(logits_adv, y) - log_one_minus_prob(logits_adv, runner_up)
    kl = losses.kl_divergence(logits_clean, logits_adv)
    p_true = jnp.exp(-losses.cross_entropy(logits_clean, y))
    return {"bce": bce, "kl": kl, "weight": 1.0 - p_true}


def build_mart(objective_config) -> Objective:
    """MART (Wang et al. 2020): boosted CE plus the misclassification-weighted KL.

    The adversarial examples come from ``objective_config.attack`` (any attack of the
    attack library; the paper uses PGD-10 on CE, eps = 8/255, step 2/255 on CIFAR-10)
    run on the model in evaluation mode; both loss terms use train-mode logits, and the
    gradient flows through the weight ``1 - p_y(x)`` as well. The running BatchNorm
    statistics returned are those of the adversarial call.

    Args:
      objective_config: ``beta`` (>= 0, default 6.0, the paper's CIFAR-10 value) and
        ``attack`` (an attack config; the attack call scales its eps and step by
        ``batch["eps_scale"]``, and it respects ``forward.bounds``).

    Returns:
      The `Objective`.
    """
    check_keys(objective_config, {"beta", "attack"}, objective="mart")
    beta = float(objective_config.get("beta", 6.0))
    if beta < 0:
        raise ValueError(f"config key 'train.objective.beta': must be >= 0; got {beta}")
    if "attack" not in objective_config:
        raise ValueError("config key 'train.objective.attack': mart needs an attack config")
    attack = ATTACKS.get(objective_config.attack.name, key="train.objective.attack.name")(
        objective_config.attack
    )

    def loss_fn(params, forward, batch, key, carry):
        del carry
        x, y = batch["x"], batch["y"]
        eval_logits = lambda inputs: forward.eval(jax.lax.stop_gradient(params), inputs)  # noqa: E731
        x_adv = attack(
            eval_logits, x, y, key, bounds=forward.bounds, eps_scale=batch.get("eps_scale")
        )
        x_adv = jax.lax.stop_gradient(x_adv)
        logits_clean, _ = forward.train(params, x)
        logits_adv, state = forward.train(params, x_adv)
        terms = mart_terms(logits_clean, logits_adv, y)
        robust = jnp.mean(terms["kl"] * terms["weight"])
        loss = jnp.mean(terms["bce"]) + beta * robust
        metrics = {
            "loss": loss,
            "loss_bce": jnp.mean(terms["bce"]),
            "loss_robust": robust,
            "accuracy": jnp.mean(losses.accuracy(logits_clean, y)),
            "adv_accuracy": jnp.mean(losses.accuracy(logits_adv, y)),
        }
        return loss, {"model_state": state, "metrics": metrics}

    return Objective(loss_fn=loss_fn)
