"""Fisher / KL-regularised training (Shi et al., arXiv 1906.02494, METHODS.md section 1).

``L = mean_i [ CE(f(x_i), y_i) + beta * KL(p(x_i) || p(x_F,i)) ]`` with
``x_F = argmax_{x' in B_eps(x) and [lo, hi]} KL(p(x) || p(x'))``, found by projected
ascent on the KL from a uniform random start in the ball (Shi et al.'s LinfFisherSolver:
10 signed steps of 2/255 at eps = 8/255 on CIFAR-10, beta = 1 in ``fisher_reg.py`` and 5
in ``fisher_reg_visual.py``). Since KL(p(x) || p(x + delta)) = delta^T F(x) delta / 2 to
second order, x_F - x approximates the top eigenvector of the input Fisher information
F(x) scaled to the ball, and the penalty pushes the largest Fisher eigenvalues down.

It is TRADES (Zhang et al. 2019) with a uniform start and the KL-maximising iterate kept
(the registry 'pgd' `Attack` with ``loss='kl'``, ``start='uniform'``, ``keep_best=True``,
`advjax.objectives.trades.kl_attack`) instead of TRADES's Gaussian start and last iterate;
`advjax.analysis.information.kl_worst_case` solves the same inner problem for the
analysis, through the same ascent core.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from advjax import geometry, losses
from advjax.objectives import Objective
from advjax.objectives.trades import kl_attack

_ALLOWED_KEYS = {"beta", "attack"}
_ATTACK_KEYS = {
    "name",
    "norm",
    "eps",
    "step_size",
    "num_steps",
    "bounds",
    "random_start",
    "num_restarts",
    "loss",
}


def fisher_kl_loss(
    logits_clean: jax.Array, logits_fisher: jax.Array, y: jax.Array, *, beta: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CE(f(x), y) + beta * KL(p(x) || p(x_F)), batch means; gradients flow through both.

    Returns:
      ``(loss, {"loss_natural", "loss_fisher"})``.
    """
    natural = jnp.mean(losses.cross_entropy(logits_clean, y))
    fisher = jnp.mean(losses.kl_divergence(logits_clean, logits_fisher))
    return natural + beta * fisher, {"loss_natural": natural, "loss_fisher": fisher}


def build_fisher_kl(objective_config) -> Objective:
    """The Fisher-regularised objective of Shi et al. as an `advjax.objectives.Objective`.

    Config keys (``config.train.objective``):
      beta: weight of the KL term (>= 0; default 1.0).
      attack: inner maximisation: ``eps``, ``step_size``, ``num_steps`` and optional
        ``norm`` (default 'linf') and ``bounds`` (default the model's input box). Other
        attack-config keys (``name``, ``loss``, ...) are accepted and ignored: the inner
        problem is always KL ascent from a uniform start keeping the best iterate
        (`advjax.objectives.trades.kl_attack`), run on the eval-mode model; the attack
        call scales ``eps`` and ``step_size`` by ``batch["eps_scale"]``.

    The clean and the KL-maximising batches go through the model in two train-mode calls;
    the BatchNorm statistics returned are those of the clean call.

    Returns:
      The `Objective`.
    """
    unknown = set(objective_config.keys()) - _ALLOWED_KEYS - {"name"}
    if unknown:
        raise ValueError(
            f"config key 'train.objective.{sorted(unknown)[0]}': objective 'fisher_kl' "
            f"takes {sorted(_ALLOWED_KEYS)}"
        )
    beta = float(objective_config.get("beta", 1.0))
    if beta < 0:
        raise ValueError(f"config key 'train.objective.beta': must be >= 0; got {beta}")
    if "attack" not in objective_config:
        raise ValueError(
            "config key 'train.objective.attack': fisher_kl needs eps, step_size, num_steps"
        )
    attack = objective_config.attack
    unknown = set(attack.keys()) - _ATTACK_KEYS
    if unknown:
        raise ValueError(
            f"config key 'train.objective.attack.{sorted(unknown)[0]}': "
            f"allowed {sorted(_ATTACK_KEYS)}"
        )
    norm = attack.get("norm", "linf")
    geometry.check_norm(norm, key="train.objective.attack.norm")
    eps, step_size = float(attack.eps), float(attack.step_size)
    num_steps = int(attack.num_steps)
    for name, value, minimum in (
        ("eps", eps, 0),
        ("step_size", step_size, 0),
        ("num_steps", num_steps, 1),
    ):
        if value < minimum:
            raise ValueError(
                f"config key 'train.objective.attack.{name}': must be >= {minimum}; got {value}"
            )
    if step_size == 0 and eps > 0:
        raise ValueError("config key 'train.objective.attack.step_size': must be > 0 when eps > 0")
    inner = kl_attack(
        norm=norm,
        eps=eps,
        step_size=step_size,
        num_steps=num_steps,
        start="uniform",
        keep_best=True,
    )
    config_bounds = attack.get("bounds", None)

    def loss_fn(params, forward, batch, key, carry):
        del carry
        x, y = batch["x"], batch["y"]
        if config_bounds is not None:
            bounds = tuple(float(b) for b in config_bounds)
        else:
            bounds = tuple(getattr(forward, "bounds", (0.0, 1.0)))
        x_fisher = inner(
            lambda inputs: forward.eval(jax.lax.stop_gradient(params), inputs),
            x,
            y,
            key,
            bounds=bounds,
            eps_scale=batch.get("eps_scale"),
        )
        x_fisher = jax.lax.stop_gradient(x_fisher)
        logits_clean, model_state = forward.train(params, x)
        logits_fisher, _ = forward.train(params, x_fisher)
        loss, terms = fisher_kl_loss(logits_clean, logits_fisher, y, beta=beta)
        metrics = {
            "loss": loss,
            **terms,
            "accuracy": jnp.mean(jnp.argmax(logits_clean, -1) == y),
            "fisher_accuracy": jnp.mean(jnp.argmax(logits_fisher, -1) == y),
        }
        return loss, {"model_state": model_state, "metrics": metrics}

    return Objective(loss_fn=loss_fn)
