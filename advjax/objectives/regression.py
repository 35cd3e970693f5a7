"""Adversarial training of a one-output regression model with squared loss.

The training objective of the linear-regression setting of Moayeri et al. 2022 ("Explicit
Tradeoffs between Adversarial and Natural Distributional Robustness", as its abstract
states it): ``min_w E[max_{||delta||_p <= eps} (y - f(x + delta))^2]``. The inner maximum
is found by projected gradient ascent on the squared loss (Madry et al. 2018, Eq. 2, with
the loss of the regression model instead of cross-entropy); for a linear model
``f(x) = w^T x + b`` it reaches the closed form ``(|y - w^T x - b| + eps ||w||_q)^2``
(`advjax.analysis.tradeoff.adversarial_squared_loss`), so training lands on the
closed-form adversarial minimiser. The ascent is the core `advjax.attacks.ascent.ascent`
with the squared error as a callable loss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import geometry
from advjax.attacks.ascent import ascent, default_step_size, ramped
from advjax.objectives import Objective

_ATTACK_DEFAULTS = {
    "name": "pgd",
    "norm": "l2",
    "eps": 0.0,
    "step_size": None,
    "num_steps": 10,
    # The squared loss of a linear model is convex in delta with two local maxima (push the
    # residual up or down); the zero start follows the residual's sign to the global one.
    "random_start": False,
    "num_restarts": 1,
    "l1_sparsity": 1.0,
}


def _attack_values(cfg) -> dict:
    raw = dict(cfg) if cfg is not None else {}
    unknown = set(raw) - set(_ATTACK_DEFAULTS) - {"loss"}
    if unknown:
        raise ValueError(
            f"config key 'train.objective.attack.{sorted(unknown)[0]}': squared_at's PGD "
            f"takes {sorted(_ATTACK_DEFAULTS)}"
        )
    v = {k: raw.get(k, d) for k, d in _ATTACK_DEFAULTS.items()}
    if v["name"] != "pgd":
        raise ValueError(
            f"config key 'train.objective.attack.name': got {v['name']!r}; allowed: ['pgd']"
        )
    geometry.check_norm(v["norm"], key="train.objective.attack.norm")
    if float(v["eps"]) < 0 or int(v["num_steps"]) < 1 or int(v["num_restarts"]) < 1:
        raise ValueError(
            "config keys 'train.objective.attack.eps'/'num_steps'/'num_restarts': need "
            f"eps >= 0, num_steps >= 1, num_restarts >= 1; got {v['eps']}, {v['num_steps']}, "
            f"{v['num_restarts']}"
        )
    if v["step_size"] is None:
        v["step_size"] = default_step_size(float(v["eps"]), int(v["num_steps"]))
    return v


def squared_pgd(
    predict_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str,
    eps: float | jax.Array,
    step_size: float | jax.Array,
    num_steps: int,
    random_start: bool = False,
    num_restarts: int = 1,
    l1_sparsity: float = 1.0,
    bounds: tuple[float, float] = (-1.0e6, 1.0e6),
) -> jax.Array:
    """PGD maximisation of the per-example squared error ``(y - f(x + delta))^2``.

    The ascent core with a callable loss (the squared error of the one-output model):
    steepest-ascent steps of the threat model, projection onto the ball intersected with
    the box, and ``keep='best'``, the per-example best iterate over steps and restarts
    (restarts are a ``vmap`` axis). The first restart starts at ``x``
    (``start='clean_first'``) unless ``random_start``, further ones uniformly in the
    ball: for a linear model the zero start follows the residual's sign to the global
    maximum.

    Args:
      predict_fn: ``x -> predictions [B]`` (eval mode).
      x: inputs ``[B, ...]``.
      y: float targets ``[B]``.
      key: PRNG key for random starts.
      norm: 'linf', 'l2' or 'l1'.
      eps: radius.
      step_size: step length.
      num_steps: ascent steps.
      random_start: whether the first restart starts uniformly inside the ball instead of
        at ``x`` (further restarts always start at random).
      num_restarts: independent runs; the per-example worst case is kept.
      l1_sparsity: fraction of coordinates an l_1 step leaves untouched (1 = one).
      bounds: input box.

    Returns:
      Adversarial inputs ``x + delta*``.
    """
    result = ascent(
        predict_fn,
        x,
        y,
        key,
        norm=norm,
        eps=eps,
        step_size=step_size,
        num_steps=num_steps,
        loss=squared_error,
        start="uniform" if random_start else "clean_first",
        keep="best",
        num_restarts=num_restarts,
        bounds=bounds,
        l1_sparsity=l1_sparsity,
    )
    return x + result.delta


def squared_error(predictions: jax.Array, y: jax.Array, clean: jax.Array | None) -> jax.Array:
    """Per-example ``(y - f(x'))^2``: the ascent core's callable loss for `squared_pgd`."""
    del clean
    return (y - predictions) ** 2


def build_squared_at(cfg) -> Objective:
    """Squared-loss adversarial training of a one-output model (Moayeri et al. 2022 setting).

    Config keys:
      attack: ``{'name': 'pgd', 'norm', 'eps', 'step_size' (default 2.5 eps / num_steps),
        'num_steps', 'random_start', 'num_restarts', 'l1_sparsity'}``; ``eps = 0`` is least squares.

    Metrics: ``mse`` (clean) and ``adv_mse`` (at the PGD point).
    """
    allowed = {"name", "attack"}
    unknown = set(cfg.keys()) - allowed
    if unknown:
        raise ValueError(
            f"config key 'train.objective.{sorted(unknown)[0]}': objective 'squared_at' "
            f"takes ['attack']"
        )
    v = _attack_values(cfg.get("attack", None))

    def loss_fn(params, forward, batch, key, carry):
        del carry
        x, y = batch["x"], batch["y"].astype(jnp.float32)
        frozen = jax.lax.stop_gradient(params)
        predict = lambda inp: forward.eval(frozen, inp)[:, 0]
        ramp_eps, ramp_step = ramped(v["eps"], v["step_size"], batch.get("eps_scale"))
        if float(v["eps"]) > 0:
            x_adv = jax.lax.stop_gradient(
                squared_pgd(
                    predict,
                    x,
                    y,
                    key,
                    norm=v["norm"],
                    eps=ramp_eps,
                    step_size=ramp_step,
                    num_steps=int(v["num_steps"]),
                    random_start=bool(v["random_start"]),
                    num_restarts=int(v["num_restarts"]),
                    l1_sparsity=float(v["l1_sparsity"]),
                    bounds=tuple(forward.bounds),
                )
            )
        else:
            x_adv = x
        out, model_state = forward.train(params, jnp.concatenate([x_adv, x]))
        adv_pred, clean_pred = jnp.split(out[:, 0], 2)
        adv_mse = jnp.mean((y - adv_pred) ** 2)
        metrics = {
            "adv_mse": adv_mse,
            "mse": jnp.mean((y - jax.lax.stop_gradient(clean_pred)) ** 2),
        }
        return adv_mse, {"model_state": model_state, "metrics": metrics}

    return Objective(loss_fn=loss_fn)
