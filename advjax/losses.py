"""Losses on logits, per example, used by attacks (to ascend) and objectives (to descend).

Every function takes logits of shape ``(batch, classes)`` and integer labels of shape
``(batch,)`` and returns one value per example, shape ``(batch,)``. Untargeted forms
grow as the prediction moves away from ``y``; the ``*_targeted`` forms grow as it
moves toward ``target``. `attack_loss` selects one by name for the attack library.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

UNTARGETED_LOSSES = ("ce", "margin", "dlr", "kl")
TARGETED_LOSSES = ("ce", "margin", "dlr")

# Keeps the DLR denominator positive when the top logits tie.
_DLR_TINY = 1e-12


def _true_logit(logits: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, y[:, None].astype(jnp.int32), axis=1)[:, 0]


def _max_other(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``max_{j != y} z_j`` per example."""
    mask = jax.nn.one_hot(y, logits.shape[1], dtype=bool)
    return jnp.max(jnp.where(mask, -jnp.inf, logits), axis=1)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Softmax cross-entropy ``logsumexp(z) - z_y``."""
    return jax.nn.logsumexp(logits, axis=1) - _true_logit(logits, y)


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017, Eq. f_6).

    Positive exactly when ``y`` is not the top class, so an attack maximises it.
    """
    return _max_other(logits, y) - _true_logit(logits, y)


def margin_targeted(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Targeted CW margin ``z_t - max_{j != t} z_j``; positive when ``t`` is the top class."""
    return -margin(logits, target)


def cross_entropy_targeted(logits: jax.Array, target: jax.Array) -> jax.Array:
    """``-CE(z, t)``: grows as the prediction moves toward ``target``."""
    return -cross_entropy(logits, target)


def dlr(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Difference of logits ratio (Croce & Hein 2020, Eq. 6), untargeted.

    ``DLR = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` with ``z_pi`` the logits sorted
    in decreasing order; invariant to shifting and rescaling the logits. Needs at
    least 3 classes.
    """
    if logits.shape[1] < 3:
        raise ValueError(f"DLR needs at least 3 classes; logits have {logits.shape[1]}")
    top = jax.lax.top_k(logits, 3)[0]
    return -(_true_logit(logits, y) - _max_other(logits, y)) / (top[:, 0] - top[:, 2] + _DLR_TINY)


def dlr_targeted(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
    """Targeted DLR (Croce & Hein 2020, Eq. 7).

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``; needs at least 4 classes.
    """
    if logits.shape[1] < 4:
        raise ValueError(f"targeted DLR needs at least 4 classes; logits have {logits.shape[1]}")
    top = jax.lax.top_k(logits, 4)[0]
    return -(_true_logit(logits, y) - _true_logit(logits, target)) / (
        top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_TINY
    )


def kl_divergence(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """``KL(softmax(p) || softmax(q))`` per example (TRADES, Zhang et al. 2019, Eq. 5).

    For TRADES ``p`` holds the clean logits and ``q`` the adversarial ones.
    """
    logp = jax.nn.log_softmax(logits_p, axis=1)
    logq = jax.nn.log_softmax(logits_q, axis=1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=1)


def accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example correctness (float 0/1) of the top-1 prediction."""
    return (jnp.argmax(logits, axis=1) == y).astype(jnp.float32)


def check_loss(loss: str, *, targeted: bool, key: str = "loss") -> None:
    """Raises ValueError naming ``key`` if ``loss`` is not available for the mode."""
    allowed = TARGETED_LOSSES if targeted else UNTARGETED_LOSSES
    if loss not in allowed:
        mode = "targeted" if targeted else "untargeted"
        raise ValueError(
            f"config key '{key}': got {loss!r} for a {mode} attack; allowed: {list(allowed)}"
        )


def attack_loss(
    name: str,
    logits: jax.Array,
    y: jax.Array,
    *,
    target: jax.Array | None = None,
    clean_logits: jax.Array | None = None,
) -> jax.Array:
    """The per-example objective an attack ascends.

    Args:
      name: 'ce', 'margin', 'dlr' or 'kl'.
      logits: logits at the perturbed point.
      y: true labels.
      target: target labels for a targeted attack (then the loss grows toward them).
      clean_logits: logits at the clean point (needed by 'kl').

    Returns:
      Per-example loss ``(batch,)``.
    """
    check_loss(name, targeted=target is not None)
    if target is not None:
        if name == "ce":
            return cross_entropy_targeted(logits, target)
        if name == "margin":
            return margin_targeted(logits, target)
        if logits.shape[1] < 4:
            # Targeted DLR's denominator needs four logits; the margin keeps the
            # same scale invariance in the numerator for tiny label spaces.
            return margin_targeted(logits, target)
        return dlr_targeted(logits, y, target)
    if name == "ce":
        return cross_entropy(logits, y)
    if name == "margin":
        return margin(logits, y)
    if name == "dlr":
        return dlr(logits, y) if logits.shape[1] >= 3 else margin(logits, y)
    if clean_logits is None:
        raise ValueError("loss 'kl' needs the clean logits")
    return kl_divergence(jax.lax.stop_gradient(clean_logits), logits)
