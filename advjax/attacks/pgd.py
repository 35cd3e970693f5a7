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
    check_choice,
    check_number,
    config_values,
    example_keys,
    fold_in_each,
    resolve_unroll,
)

LogitsFn = Callable[[jax.Array], jax.Array]

STEP_SCHEDULES = ("constant", "cosine", "linear")
PGD_TARGETED_LOSSES = ("ce", "margin")


def _broadcast(value: Any, batch: int, dtype) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(value, dtype), (batch,))


def _expand(v: jax.Array, like: jax.Array) -> jax.Array:
    return v.reshape((like.shape[0],) + (1,) * (like.ndim - 1))


def _schedule(step: jax.Array, num_steps: int, schedule: str) -> jax.Array:
    if schedule == "constant" or num_steps <= 1:
        return jnp.ones((), jnp.float32)
    frac = step.astype(jnp.float32) / num_steps
    if schedule == "cosine":
        return 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return 1.0 - frac


def is_success(logits: jax.Array, y: jax.Array, *, targeted: bool) -> jax.Array:
    """Per-example attack success: misclassified (untargeted) or predicted target."""
    pred = jnp.argmax(logits, axis=1)
    return pred == y if targeted else pred != y


def better(
    loss_new: jax.Array, succ_new: jax.Array, loss_old: jax.Array, succ_old: jax.Array
) -> jax.Array:
    """Whether a candidate is a worse case for the model than the incumbent.

    Success first (a misclassified point beats any other), then the higher loss.
    """
    return (succ_new & ~succ_old) | ((succ_new == succ_old) & (loss_new > loss_old))


def _pgd_run(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    keys: jax.Array,
    eps: jax.Array,
    step_size: jax.Array,
    clean_logits: jax.Array | None,
    *,
    norm: str,
    num_steps: int,
    loss: str,
    random_start: bool,
    targeted: bool,
    bounds: tuple[float, float],
    step_schedule: str,
    l1_sparsity: float,
    keep_best: bool,
    need_final_score: bool,
    unroll: bool,
):
    """One PGD run from one start per example; returns (delta, loss, success)."""
    if random_start:
        delta = jax.vmap(
            lambda k, xi, ei: geometry.random_init(k, xi[None], norm=norm, eps=ei, bounds=bounds)[0]
        )(keys, x, eps)
    else:
        delta = jnp.zeros_like(x)

    def score(logits):
        target = y if targeted else None
        lv = losses.attack_loss(loss, logits, y, target=target, clean_logits=clean_logits)
        if loss == "kl":
            succ = jnp.zeros(lv.shape, bool)
        else:
            succ = is_success(logits, y, targeted=targeted)
        return lv, succ

    def objective(d):
        logits = logits_fn(x + d)
        lv, succ = score(logits)
        return jnp.sum(lv), (lv, succ)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    batch = x.shape[0]

    def body(i, carry):
        d, best_d, best_l, best_s = carry
        (_, (lv, s)), g = grad_fn(d)
        if keep_best:
            upd = better(lv, s, best_l, best_s)
            best_d = jnp.where(_expand(upd, d), d, best_d)
            best_l = jnp.where(upd, lv, best_l)
            best_s = jnp.where(upd, s, best_s)
        alpha = step_size * _schedule(i, num_steps, step_schedule)
        direction = geometry.ascent_direction(
            g, norm=norm, l1_sparsity=l1_sparsity, x_adv=x + d, bounds=bounds
        )
        d = geometry.project(
            d + _expand(alpha, d) * direction, x, norm=norm, eps=eps, bounds=bounds
        )
        return d, best_d, best_l, best_s

    init = (
        delta,
        delta,
        jnp.full((batch,), -jnp.inf, x.dtype),
        jnp.zeros((batch,), bool),
    )
    d, best_d, best_l, best_s = jax.lax.fori_loop(0, num_steps, body, init, unroll=unroll)
    if not (keep_best or need_final_score):
        return d, None, None
    lv, s = score(logits_fn(x + d))
    if not keep_best:
        return d, lv, s
    upd = better(lv, s, best_l, best_s)
    best_d = jnp.where(_expand(upd, d), d, best_d)
    best_l = jnp.where(upd, lv, best_l)
    best_s = jnp.where(upd, s, best_s)
    return best_d, best_l, best_s


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
    check_choice(step_schedule, STEP_SCHEDULES, attack="pgd", key="step_schedule")
    losses.check_loss(loss, targeted=targeted)
    if targeted and loss not in PGD_TARGETED_LOSSES:
        raise ValueError(
            f"attack 'pgd': config key 'loss' got {loss!r} for a targeted attack; "
            f"allowed: {list(PGD_TARGETED_LOSSES)}"
        )
    if num_restarts < 1 or num_steps < 0:
        raise ValueError(
            f"need num_restarts >= 1 and num_steps >= 0, got {num_restarts}, {num_steps}"
        )
    batch = x.shape[0]
    keys = example_keys(key, batch)
    eps = _broadcast(eps, batch, x.dtype)
    step_size = _broadcast(step_size, batch, x.dtype)
    clean_logits = jax.lax.stop_gradient(logits_fn(x)) if loss == "kl" else None
    run = lambda k: _pgd_run(  # noqa: E731
        logits_fn,
        x,
        y,
        k,
        eps,
        step_size,
        clean_logits,
        norm=norm,
        num_steps=num_steps,
        loss=loss,
        random_start=random_start,
        targeted=targeted,
        bounds=bounds,
        step_schedule=step_schedule,
        l1_sparsity=l1_sparsity,
        keep_best=keep_best,
        need_final_score=num_restarts > 1,
        unroll=resolve_unroll(unroll, num_steps, x),
    )
    if num_restarts == 1:
        delta = run(keys)[0]
    else:
        restart_keys = jax.vmap(lambda r: fold_in_each(keys, r))(jnp.arange(num_restarts))
        deltas, ls, ss = jax.vmap(run)(restart_keys)
        any_succ = jnp.any(ss, axis=0)
        rank = jnp.where(any_succ[None], jnp.where(ss, ls, -jnp.inf), ls)
        best = jnp.argmax(rank, axis=0)
        delta = jnp.take_along_axis(deltas, _expand(best, x)[None], axis=0)[0]
    lo, hi = bounds
    return jnp.clip(x + delta, lo, hi)


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
    allowed = losses.TARGETED_LOSSES if v["targeted"] else losses.UNTARGETED_LOSSES
    if v["targeted"]:
        allowed = PGD_TARGETED_LOSSES
    check_choice(v["loss"], allowed, attack=attack, key="loss")


def _eps_scaled(step: float, eps_cfg: float, eps: jax.Array | None):
    """Step length for an eps override: keeps ``step / eps`` as configured."""
    if eps is None:
        return step
    if eps_cfg <= 0:
        return jnp.asarray(eps) * 0.0 + step
    return jnp.asarray(eps) * (step / eps_cfg)


def build_pgd(cfg) -> Callable[..., jax.Array]:
    """Registry builder for 'pgd'.

    Config keys: ``eps`` (required), ``norm``, ``step_size`` (default ``2.5 * eps /
    num_steps``, Madry et al.), ``num_steps``, ``loss``, ``random_start``,
    ``num_restarts``, ``targeted``, ``step_schedule``, ``l1_sparsity``, ``keep_best``,
    ``unroll`` (see `pgd`).

    Returns:
      ``attack(logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None) -> x_adv``; an
      ``eps`` override rescales the step length proportionally.
    """
    v = config_values(cfg, attack="pgd", defaults=_PGD_DEFAULTS, required=("eps",))
    _validate_common(v, attack="pgd")
    check_number(v["num_steps"], attack="pgd", key="num_steps", minimum=1, integer=True)
    check_number(v["num_restarts"], attack="pgd", key="num_restarts", minimum=1, integer=True)
    check_choice(v["step_schedule"], STEP_SCHEDULES, attack="pgd", key="step_schedule")
    check_number(v["l1_sparsity"], attack="pgd", key="l1_sparsity", minimum=0.0, maximum=1.0)
    if v["unroll"] is not None and not isinstance(v["unroll"], bool):
        raise ValueError(
            f"attack 'pgd': config key 'unroll' must be a bool or None, got {v['unroll']!r}"
        )
    step = v["step_size"] if v["step_size"] is not None else 2.5 * v["eps"] / v["num_steps"]
    eps_cfg = float(v["eps"])

    def attack(logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None):
        return pgd(
            logits_fn,
            x,
            y,
            key,
            norm=v["norm"],
            eps=eps_cfg if eps is None else eps,
            step_size=_eps_scaled(step, eps_cfg, eps),
            num_steps=v["num_steps"],
            loss=v["loss"],
            random_start=v["random_start"],
            num_restarts=v["num_restarts"],
            targeted=v["targeted"],
            bounds=bounds,
            step_schedule=v["step_schedule"],
            l1_sparsity=v["l1_sparsity"],
            keep_best=v["keep_best"],
            unroll=v["unroll"],
        )

    attack.config = dict(v, name="pgd", step_size=step)
    attack.budget = {"num_steps": v["num_steps"], "num_restarts": v["num_restarts"]}
    attack.white_box = True
    return attack


def build_fgsm(cfg) -> Callable[..., jax.Array]:
    """Registry builder for 'fgsm' (FGM for l_2/l_1; FGSM-RS with ``random_start``).

    Config keys: ``eps`` (required), ``norm``, ``step_size`` (default ``eps``),
    ``loss``, ``random_start``, ``targeted``.
    """
    v = config_values(cfg, attack="fgsm", defaults=_FGSM_DEFAULTS, required=("eps",))
    _validate_common(v, attack="fgsm")
    step = v["step_size"] if v["step_size"] is not None else v["eps"]
    eps_cfg = float(v["eps"])

    def attack(logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None):
        return fgsm(
            logits_fn,
            x,
            y,
            key,
            norm=v["norm"],
            eps=eps_cfg if eps is None else eps,
            step_size=_eps_scaled(step, eps_cfg, eps),
            loss=v["loss"],
            random_start=v["random_start"],
            targeted=v["targeted"],
            bounds=bounds,
        )

    attack.config = dict(v, name="fgsm", step_size=step)
    attack.budget = {"num_steps": 1, "num_restarts": 1}
    attack.white_box = True
    return attack
