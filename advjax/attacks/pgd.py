"""Projected gradient descent (PGD) in any norm, and FGSM/FGM as its one-step case.

Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks",
Eq. 2: ``x_{t+1} = P_{B(x, eps) ∩ box}(x_t + alpha * s(grad_x L(x_t, y)))`` with ``s``
the steepest-ascent direction of the threat model (sign for l_inf, normalised
gradient for l_2, sparse signs for l_1; see `advjax.geometry`). Random restarts are a
``vmap`` axis and the result is the per-example worst case over restarts (and, by
default, over iterates): a misclassified point beats any correctly classified one,
then the higher loss wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from advjax import geometry, losses
from advjax.attacks import (
    WHITE_BOX,
    Attack,
    check_choice,
    check_number,
    config_values,
    eps_scaled,
    freeze,
)
from advjax.attacks import ascent as ascent_core

LogitsFn = Callable[[jax.Array], jax.Array]

PGD_TARGETED_LOSSES = ("ce", "margin")
# Kept for callers of the earlier module layout.
STEP_SCHEDULES = ascent_core.STEP_SCHEDULES
is_success = ascent_core.is_success
better = ascent_core.better


def pgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str = "linf",
    eps: jax.Array | float,
    step_size: jax.Array | float,
    num_steps: int,
    loss: str = "ce",
    random_start: bool = True,
    num_restarts: int = 1,
    targeted: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
    step_schedule: str = "constant",
    l1_sparsity: float = 0.95,
    keep_best: bool = True,
    unroll: bool | None = None,
) -> jax.Array:
    """Projected gradient ascent on ``loss`` inside ``B_norm(x, eps) ∩ [lo, hi]``.

    Madry et al. 2018, Eq. 2, with the steepest-ascent step of the threat model and
    ``num_restarts`` random starts whose per-example worst case is returned.

    Args:
      logits_fn: ``x -> logits``, eval-mode model closure (may close over traced params).
      x: clean inputs ``(batch, ...)`` in ``bounds``.
      y: labels ``(batch,)``; target labels when ``targeted``.
      key: one PRNG key for the batch, or per-example keys (see `example_keys`).
      norm: 'linf', 'l2' or 'l1'.
      eps: radius, scalar or ``(batch,)``; may be traced (eps sweeps vmap over it).
      step_size: step length ``alpha``, scalar or ``(batch,)``.
      num_steps: number of gradient steps (static).
      loss: 'ce', 'margin', 'dlr' or 'kl' (KL to the clean prediction, TRADES);
        targeted attacks take 'ce' or 'margin'.
      random_start: start uniformly inside the ball (else at ``x``).
      num_restarts: independent random starts (a vmap axis).
      targeted: move the prediction toward ``y`` instead of away from it.
      bounds: input box ``(lo, hi)``.
      step_schedule: 'constant', 'cosine' or 'linear' decay of ``alpha`` over steps.
      l1_sparsity: fraction of coordinates an l_1 step leaves untouched.
      keep_best: return the worst-case iterate (success first, then loss) instead of
        the last one; costs one extra forward pass.
      unroll: unroll the step loop (about 2x faster on XLA:CPU, jax-ml/jax#12868);
        ``None`` decides by size and memory safety (`advjax.attacks.resolve_unroll`).

    Returns:
      Adversarial inputs ``x_adv`` with the shape of ``x``.
    """
    geometry.check_norm(norm)
    losses.check_loss(loss, targeted=targeted)
    if targeted and loss not in PGD_TARGETED_LOSSES:
        raise ValueError(
            f"attack 'pgd': config key 'loss' got {loss!r} for a targeted attack; "
            f"allowed: {list(PGD_TARGETED_LOSSES)}"
        )
    result = ascent_core.ascent(
        logits_fn,
        x,
        y,
        key,
        norm=norm,
        eps=eps,
        step_size=step_size,
        num_steps=num_steps,
        loss=loss,
        targeted=targeted,
        start="uniform" if random_start else "none",
        keep="best" if keep_best else "last",
        num_restarts=num_restarts,
        bounds=bounds,
        step_schedule=step_schedule,
        l1_sparsity=l1_sparsity,
        unroll=unroll,
    )
    lo, hi = bounds
    return jnp.clip(x + result.delta, lo, hi)


def fgsm(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array | None = None,
    *,
    norm: str = "linf",
    eps: jax.Array | float,
    step_size: jax.Array | float | None = None,
    loss: str = "ce",
    random_start: bool = False,
    targeted: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Fast gradient sign method (Goodfellow et al. 2015, Eq. 3) and its l_2/l_1 FGM.

    One steepest-ascent step of length ``step_size`` (default ``eps``) from ``x`` (or
    from a uniform random start, FGSM-RS of Wong et al. 2020), projected to the
    threat model. Returns the stepped point, as the classic method does.
    """
    if key is None:
        if random_start:
            raise ValueError("fgsm with random_start needs a PRNG key")
        key = jax.random.key(0)
    return pgd(
        logits_fn,
        x,
        y,
        key,
        norm=norm,
        eps=eps,
        step_size=eps if step_size is None else step_size,
        num_steps=1,
        loss=loss,
        random_start=random_start,
        num_restarts=1,
        targeted=targeted,
        bounds=bounds,
        keep_best=False,
    )


# ----------------------------------------------------------------------------- builders

_PGD_DEFAULTS = {
    "norm": "linf",
    "step_size": None,
    "num_steps": 10,
    "loss": "ce",
    "random_start": True,
    "start": None,
    "start_scale": 0.001,
    "num_restarts": 1,
    "targeted": False,
    "step_schedule": "constant",
    "l1_sparsity": 0.95,
    "keep_best": True,
    "unroll": None,
}

_FGSM_DEFAULTS = {
    "norm": "linf",
    "step_size": None,
    "loss": "ce",
    "random_start": False,
    "start": None,
    "targeted": False,
}


def _validate_common(v: dict[str, Any], *, attack: str) -> None:
    check_choice(v["norm"], geometry.NORMS, attack=attack, key="norm")
    check_number(v["eps"], attack=attack, key="eps", minimum=0.0)
    if v["step_size"] is not None:
        check_number(v["step_size"], attack=attack, key="step_size", minimum=0.0, strict=True)
    for flag in [k for k in ("random_start", "targeted", "keep_best") if k in v]:
        if not isinstance(v[flag], bool):
            raise ValueError(
                f"attack {attack!r}: config key {flag!r} must be a bool, got {v[flag]!r}"
            )
    allowed = PGD_TARGETED_LOSSES if v["targeted"] else losses.UNTARGETED_LOSSES
    check_choice(v["loss"], allowed, attack=attack, key="loss")
    # 'start' names the core's start; 'random_start' is the classic flag for uniform/none.
    if v["start"] is None:
        v["start"] = "uniform" if v["random_start"] else "none"
    check_choice(v["start"], ascent_core.STARTS, attack=attack, key="start")
    v["random_start"] = v["start"] != "none"


def run_pgd(hp: dict, logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None) -> jax.Array:
    """`Attack.run` of 'pgd' and 'fgsm': the ascent core with the attack's hyperparameters."""
    result = ascent_core.ascent(
        logits_fn,
        x,
        y,
        key,
        norm=hp["norm"],
        eps=hp["eps"] if eps is None else eps,
        step_size=eps_scaled(hp["step_size"], hp["eps"], eps),
        num_steps=hp["num_steps"],
        loss=hp["loss"],
        targeted=hp["targeted"],
        start=hp["start"],
        start_scale=hp.get("start_scale", 0.001),
        keep="best" if hp["keep_best"] else "last",
        num_restarts=hp["num_restarts"],
        bounds=bounds,
        step_schedule=hp["step_schedule"],
        l1_sparsity=hp["l1_sparsity"],
        unroll=hp["unroll"],
    )
    lo, hi = bounds
    return jnp.clip(x + result.delta, lo, hi)


def build_pgd(cfg) -> Attack:
    """Registry builder for 'pgd'.

    Config keys: ``eps`` (required), ``norm``, ``step_size`` (default ``2.5 * eps /
    num_steps``, `advjax.attacks.ascent.default_step_size`), ``num_steps``, ``loss``,
    ``random_start`` or ``start`` ('none', 'uniform', 'gaussian', 'clean_first'),
    ``start_scale``, ``num_restarts``, ``targeted``, ``step_schedule``,
    ``l1_sparsity``, ``keep_best`` (False keeps the last iterate), ``unroll``.

    Returns:
      The `Attack`; an ``eps`` override rescales the step length proportionally.
    """
    v = config_values(cfg, attack="pgd", defaults=_PGD_DEFAULTS, required=("eps",))
    _validate_common(v, attack="pgd")
    check_number(v["num_steps"], attack="pgd", key="num_steps", minimum=1, integer=True)
    check_number(v["num_restarts"], attack="pgd", key="num_restarts", minimum=1, integer=True)
    check_choice(v["step_schedule"], STEP_SCHEDULES, attack="pgd", key="step_schedule")
    check_number(v["l1_sparsity"], attack="pgd", key="l1_sparsity", minimum=0.0, maximum=1.0)
    check_number(v["start_scale"], attack="pgd", key="start_scale", minimum=0.0)
    if v["unroll"] is not None and not isinstance(v["unroll"], bool):
        raise ValueError(
            f"attack 'pgd': config key 'unroll' must be a bool or None, got {v['unroll']!r}"
        )
    if v["step_size"] is None:
        v["step_size"] = ascent_core.default_step_size(v["eps"], v["num_steps"])
    v["eps"] = float(v["eps"])
    budget = {"num_steps": v["num_steps"], "num_restarts": v["num_restarts"]}
    return Attack("pgd", run_pgd, freeze(v), WHITE_BOX, freeze(budget))


def build_fgsm(cfg) -> Attack:
    """Registry builder for 'fgsm' (FGM for l_2/l_1; FGSM-RS with ``random_start``).

    One steepest-ascent step of length ``step_size`` (default ``eps``); returns the
    stepped point, as the classic method does. Config keys: ``eps`` (required),
    ``norm``, ``step_size``, ``loss``, ``random_start`` or ``start``, ``targeted``.
    """
    v = config_values(cfg, attack="fgsm", defaults=_FGSM_DEFAULTS, required=("eps",))
    _validate_common(v, attack="fgsm")
    if v["step_size"] is None:
        v["step_size"] = v["eps"]
    v["eps"] = float(v["eps"])
    v.update(num_steps=1, num_restarts=1, keep_best=False, step_schedule="constant")
    v.update(l1_sparsity=0.95, unroll=None)
    return Attack(
        "fgsm", run_pgd, freeze(v), WHITE_BOX, freeze({"num_steps": 1, "num_restarts": 1})
    )
