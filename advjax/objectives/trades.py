"""TRADES: the accuracy-robustness trade-off as a regularised loss (Zhang et al. 2019).

``L = mean_i [ CE(f(x_i), y_i) + beta * max_{x'_i in B(x_i, eps)} KL(p(x_i) || p(x'_i)) ]``
(Zhang et al. 2019, "Theoretically principled trade-off between robustness and
accuracy", the TRADES objective). The inner maximisation is the ascent core
(`advjax.attacks.ascent`) configured as the TRADES reference code: start at
``x + 0.001 * N(0, I)`` (projected), PGD on the KL to the clean distribution (held
fixed) with the model in evaluation mode, and the *last* iterate kept, not the best
one. The outer loss differentiates through both ``p(x)`` and ``p(x')``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import geometry, losses
from advjax.attacks import Attack, build_attack
from advjax.attacks.ascent import ascent
from advjax.objectives import Objective
from advjax.objectives.base import check_keys

# Scale of the Gaussian start of the inner maximisation (Zhang et al.'s code): at
# x' = x the KL term has zero gradient, so the ascent needs a nudge off the clean point.
_INIT_SCALE = 0.001


def trades_perturbation(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    key: jax.Array,
    *,
    norm: str = "linf",
    eps: float | jax.Array,
    step_size: float | jax.Array,
    num_steps: int,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Inner maximisation of TRADES: PGD on ``KL(p(x) || p(x + delta))``, last iterate.

    Zhang et al. 2019 (Algorithm 1 and the reference ``trades_loss``): ``delta_0 =
    0.001 * N(0, I)`` projected to the threat model, then ``num_steps`` projected
    steepest-ascent steps of length ``step_size`` on the KL to the (fixed) clean
    prediction; the final iterate is returned, as in the reference code (no best-iterate
    selection). The ascent core's Gaussian start draws one key per example from ``key``.

    Args:
      logits_fn: ``x -> logits`` (the model in evaluation mode).
      x: clean inputs.
      key: PRNG key for the Gaussian start.
      norm: threat model ('linf', 'l2' or 'l1'; Zhang et al. train with l_inf).
      eps: radius (may be traced).
      step_size: PGD step length (in ``norm``; may be traced).
      num_steps: PGD iterations.
      bounds: input box.

    Returns:
      ``delta`` inside the threat model.
    """
    labels = jnp.zeros((x.shape[0],), jnp.int32)  # KL needs no labels
    return ascent(
        logits_fn,
        x,
        labels,
        key,
        norm=norm,
        eps=eps,
        step_size=step_size,
        num_steps=num_steps,
        loss="kl",
        start="gaussian",
        start_scale=_INIT_SCALE,
        keep="last",
        bounds=bounds,
    ).delta


def kl_attack(
    *,
    norm: str,
    eps: float,
    step_size: float,
    num_steps: int,
    start: str = "gaussian",
    keep_best: bool = False,
) -> Attack:
    """PGD on ``KL(p(x) || p(x'))`` as a registry 'pgd' `Attack`.

    The defaults are TRADES' inner maximisation, `trades_perturbation` (Gaussian start of
    scale 0.001, last iterate; same draws); the Fisher/KL objective takes
    ``start='uniform'``, ``keep_best=True``. Called with ``eps_scale``, the attack
    scales the radius and the step length together (the training eps ramp), in the one
    place the attack library does it.
    """
    return build_attack(
        dict(
            name="pgd",
            norm=norm,
            eps=eps,
            step_size=step_size or None,  # 0 only with eps = 0: the default step, also 0
            num_steps=num_steps,
            num_restarts=1,
            loss="kl",
            start=start,
            start_scale=_INIT_SCALE,
            keep_best=keep_best,
        )
    )


def trades_loss(
    logits_clean: jax.Array, logits_adv: jax.Array, y: jax.Array, *, beta: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The outer TRADES loss from train-mode logits (Zhang et al. 2019).

    Returns:
      ``(loss, terms)`` with ``terms = {"loss_natural", "loss_robust"}`` batch means.
    """
    natural = jnp.mean(losses.cross_entropy(logits_clean, y))
    robust = jnp.mean(losses.kl_divergence(logits_clean, logits_adv))
    return natural + beta * robust, {"loss_natural": natural, "loss_robust": robust}


def build_trades(objective_config) -> Objective:
    """TRADES (Zhang et al. 2019) with a PGD-on-KL inner maximisation.

    Published settings: MNIST eps = 0.3, 40 steps of 0.01, beta = 1; CIFAR-10
    eps = 0.031, 10 steps of 0.007, beta = 6.

    The clean and adversarial batches go through the model in two separate train-mode
    calls, as in the reference, so BatchNorm normalises each with its own statistics;
    the running statistics returned are those of the clean call.

    Args:
      objective_config: ``beta`` (>= 0, default 6.0) and ``attack`` with ``eps``,
        ``step_size``, ``num_steps`` and optional ``norm`` (default 'linf'); the inner
        maximisation is always PGD on KL from the Gaussian start keeping the last
        iterate (`kl_attack`), so ``loss`` must be 'kl' if given and ``name``,
        ``random_start`` and ``num_restarts`` are ignored. The attack call scales
        ``eps`` and ``step_size`` by ``batch["eps_scale"]``; the input box is
        ``forward.bounds``.

    Returns:
      The `Objective`.
    """
    check_keys(objective_config, {"beta", "attack"}, objective="trades")
    beta = float(objective_config.get("beta", 6.0))
    if beta < 0:
        raise ValueError(f"config key 'train.objective.beta': must be >= 0; got {beta}")
    if "attack" not in objective_config:
        raise ValueError(
            "config key 'train.objective.attack': trades needs eps, step_size, num_steps"
        )
    attack = objective_config.attack
    if attack.get("loss", "kl") != "kl":
        raise ValueError(
            f"config key 'train.objective.attack.loss': TRADES maximises KL; got {attack.loss!r}"
        )
    norm = attack.get("norm", "linf")
    geometry.check_norm(norm, key="train.objective.attack.norm")
    eps, step_size = float(attack.eps), float(attack.step_size)
    num_steps = int(attack.num_steps)
    if eps < 0 or step_size < 0 or (step_size == 0 and eps > 0) or num_steps < 1:
        raise ValueError(
            "config keys 'train.objective.attack.eps'/'step_size'/'num_steps': need eps >= 0, "
            f"step_size > 0 (0 only with eps = 0), num_steps >= 1; got {eps}, {step_size}, "
            f"{num_steps}"
        )
    inner = kl_attack(norm=norm, eps=eps, step_size=step_size, num_steps=num_steps)

    def loss_fn(params, forward, batch, key, carry):
        del carry
        x, y = batch["x"], batch["y"]
        x_adv = inner(
            lambda inputs: forward.eval(jax.lax.stop_gradient(params), inputs),
            x,
            y,
            key,
            bounds=forward.bounds,
            eps_scale=batch.get("eps_scale"),
        )
        logits_clean, state = forward.train(params, x)
        logits_adv, _ = forward.train(params, jax.lax.stop_gradient(x_adv))
        loss, terms = trades_loss(logits_clean, logits_adv, y, beta=beta)
        metrics = {
            "loss": loss,
            **terms,
            "accuracy": jnp.mean(losses.accuracy(logits_clean, y)),
            "adv_accuracy": jnp.mean(losses.accuracy(logits_adv, y)),
        }
        return loss, {"model_state": state, "metrics": metrics}

    return Objective(loss_fn=loss_fn)
