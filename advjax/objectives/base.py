"""Standard training and PGD adversarial training (Madry et al. 2018).

Both are `advjax.objectives.Objective` builders: ``build_standard`` minimises the
cross-entropy on clean inputs; ``build_pgd_at`` solves the saddle-point problem of
Madry et al. 2018, Eq. 2.1, ``min_theta E[max_{delta in S} L(theta, x + delta, y)]``,
approximating the inner maximum with any attack of `advjax.ATTACKS` run on
the eval-mode model (so BatchNorm statistics never see the attack's iterates).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from advjax import losses
from advjax.objectives import Objective


def check_keys(cfg, allowed: set[str], *, objective: str) -> None:
    unknown = set(cfg.keys()) - allowed - {"name"}
    if unknown:
        raise ValueError(
            f"config key 'train.objective.{sorted(unknown)[0]}': objective {objective!r} "
            f"takes {sorted(allowed) or 'no options'}"
        )


def classification_metrics(logits: jax.Array, y: jax.Array, prefix: str = "") -> dict:
    return {f"{prefix}accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


def build_standard(cfg) -> Objective:
    """Empirical risk minimisation with cross-entropy on clean inputs."""
    check_keys(cfg, set(), objective="standard")

    def loss_fn(params, forward, batch, key, carry):
        del key, carry
        logits, model_state = forward.train(params, batch["x"])
        loss = jnp.mean(losses.cross_entropy(logits, batch["y"]))
        return loss, {
            "model_state": model_state,
            "metrics": classification_metrics(logits, batch["y"]),
        }

    return Objective(loss_fn=loss_fn)


def build_pgd_at(cfg) -> Objective:
    """PGD adversarial training (Madry et al. 2018, Eq. 2.1).

    Config keys:
      attack: an attack config (`advjax.ATTACKS`), e.g. PGD-40 l_inf eps 0.3, run on
        the eval-mode model; the attack call scales its eps (and step) by
        ``batch["eps_scale"]``.
      clean_weight: weight of the clean loss, ``(1 - w) * L(x_adv) + w * L(x)``
        (0 = pure adversarial training, as in Madry et al.; 0.5 = Goodfellow et al.).
    """
    from advjax.attacks import ATTACKS

    check_keys(cfg, {"attack", "clean_weight"}, objective="pgd_at")
    if "attack" not in cfg:
        raise ValueError("config key 'train.objective.attack': pgd_at needs an attack config")
    clean_weight = float(cfg.get("clean_weight", 0.0))
    if not 0.0 <= clean_weight <= 1.0:
        raise ValueError(f"config key 'train.objective.clean_weight': {clean_weight} not in [0, 1]")
    attack = ATTACKS.get(cfg.attack.name, key="train.objective.attack.name")(cfg.attack)

    def loss_fn(params, forward, batch, key, carry):
        del carry
        x, y = batch["x"], batch["y"]
        eval_logits = lambda inp: forward.eval(jax.lax.stop_gradient(params), inp)  # noqa: E731
        x_adv = attack(
            eval_logits, x, y, key, bounds=forward.bounds, eps_scale=batch.get("eps_scale")
        )
        x_adv = jax.lax.stop_gradient(x_adv)
        if clean_weight > 0:
            logits, model_state = forward.train(params, jnp.concatenate([x_adv, x]))
            adv_logits, clean_logits = jnp.split(logits, 2)
            loss = (1 - clean_weight) * jnp.mean(
                losses.cross_entropy(adv_logits, y)
            ) + clean_weight * jnp.mean(losses.cross_entropy(clean_logits, y))
        else:
            adv_logits, model_state = forward.train(params, x_adv)
            loss = jnp.mean(losses.cross_entropy(adv_logits, y))
        metrics = classification_metrics(adv_logits, y, "adv_")
        return loss, {"model_state": model_state, "metrics": metrics}

    return Objective(loss_fn=loss_fn)
