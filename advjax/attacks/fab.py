"""FAB-T: the targeted fast adaptive boundary attack (Croce & Hein 2020).

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020, Sec. 3 (Eqs. 5-9), in the targeted form that AutoAttack runs
(Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"). At each step the decision boundary between the true
class y and the target t is linearised at the iterate x_k,
``f(x_k) + <g, z - x_k> = 0`` with ``f = z_t - z_y`` and ``g = grad f``; both x_k and the
original x are projected onto that hyperplane within the input box (minimal l_p
distance), and the step is the biased combination
``x_{k+1} = (1 - a)(x_k + eta d_k) + a (x + eta d_0)`` with
``a = min(|d_k| / (|d_k| + |d_0|), alpha_max)``. An adversarial iterate is recorded
when it is the smallest found so far and is pulled back towards x by ``beta``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from advjax import geometry
from advjax.attacks import (
    WHITE_BOX,
    Attack,
    check_choice,
    check_number,
    config_values,
    example_keys,
    fold_in_each,
    freeze,
)
from advjax.compile import jit

LogitsFn = Callable[[jax.Array], jax.Array]

# Bisection steps of the hyperplane projections (l_inf radius, l_2 multiplier).
_BISECTION_STEPS = 60


def _project_linf(x, w, c, lower, upper):
    """Smallest-l_inf ``d`` with ``<w, d> = c`` and ``lower <= d <= upper`` (one example).

    For a radius r the largest reachable ``s <w, d>`` (s = sign c) takes every coordinate
    to ``clip(s sign(w_i) r)``; it grows with r, so r is found by bisection. When the
    hyperplane lies outside the box the farthest box point towards it is returned.
    """
    s = jnp.sign(c)

    def d_at(r):
        return jnp.clip(s * jnp.sign(w) * r, lower, upper)

    def body(_, bracket):
        low, high = bracket
        mid = 0.5 * (low + high)
        reached = s * jnp.dot(w, d_at(mid)) >= jnp.abs(c)
        return jnp.where(reached, low, mid), jnp.where(reached, mid, high)

    top = jnp.maximum(jnp.max(upper), jnp.max(-lower))
    _, high = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (jnp.zeros_like(top), top))
    return d_at(high)


def _project_l2(x, w, c, lower, upper):
    """Smallest-l_2 ``d`` with ``<w, d> = c`` in the box: ``d = clip(s mu w)`` (KKT), with
    the multiplier mu >= |c| / |w|^2 found by bisection on log(mu)."""
    s = jnp.sign(c)
    w_sq = jnp.maximum(jnp.dot(w, w), 1e-30)
    mu_low = jnp.abs(c) / w_sq
    caps = jnp.where(s * w > 0, upper, -lower)
    saturating = jnp.where(jnp.abs(w) > 0, caps / jnp.maximum(jnp.abs(w), 1e-30), 0.0)
    mu_high = jnp.clip(jnp.max(saturating), mu_low, mu_low * 1e12 + 1e-30)

    def d_at(mu):
        return jnp.clip(s * mu * w, lower, upper)

    def body(_, bracket):
        low, high = bracket
        mid = jnp.sqrt(low * high)
        reached = s * jnp.dot(w, d_at(mid)) >= jnp.abs(c)
        return jnp.where(reached, low, mid), jnp.where(reached, mid, high)

    low0 = jnp.maximum(mu_low, 1e-30)
    _, high = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (low0, jnp.maximum(mu_high, low0)))
    return d_at(high)


def _project_l1(x, w, c, lower, upper):
    """Smallest-l_1 ``d`` with ``<w, d> = c`` in the box: move the coordinates of largest
    |w_i| first, each up to its box limit, until <w, d> reaches c (exact, by sorting)."""
    s = jnp.sign(c)
    direction = s * jnp.sign(w)
    caps = jnp.where(direction > 0, upper, -lower)
    order = jnp.argsort(-jnp.abs(w))
    gains = (jnp.abs(w) * caps)[order]
    before = jnp.cumsum(gains) - gains
    needed = jnp.clip(jnp.abs(c) - before, 0.0, gains)
    amount = jnp.where(gains > 0, needed / jnp.maximum(jnp.abs(w[order]), 1e-30), 0.0)
    moved = jnp.zeros_like(w).at[order].set(amount)
    return direction * moved


_PROJECTIONS = {"linf": _project_linf, "l2": _project_l2, "l1": _project_l1}


def _project_batch(norm, x, w, c, lo, hi):
    """Row-wise projections of flat points ``x`` onto ``<w, z> = <w, x> + c`` in [lo, hi]."""
    return jax.vmap(_PROJECTIONS[norm])(x, w, c, lo - x, hi - x)


def _random_start(keys, x, radius, norm, bounds):
    """The reference's restart point: x plus a random vector of norm radius / 2 (sup norm
    for l_inf, l_p otherwise), clipped to the box; one key per example."""
    flat = x.reshape(x.shape[0], -1)
    if norm == "linf":
        t = jax.vmap(lambda k: jax.random.uniform(k, flat.shape[1:], minval=-1.0, maxval=1.0))(keys)
        t = t / jnp.maximum(jnp.max(jnp.abs(t), axis=1, keepdims=True), 1e-12)
    else:
        t = jax.vmap(lambda k: jax.random.normal(k, flat.shape[1:]))(keys)
        t = t / jnp.maximum(geometry.lp_norm(t, norm=norm), 1e-12)[:, None]
    start = flat + 0.5 * radius[:, None] * t
    return jnp.clip(start, bounds[0], bounds[1]).reshape(x.shape)


def _fab_single_run(
    logits_fn, x, y, target, start, *, norm, num_steps, alpha_max, eta, beta, bounds
):
    """One FAB-T run from ``start``: (smallest adversarial found, its l_p norm or inf)."""
    batch = x.shape[0]
    x0 = x.reshape(batch, -1)
    lo = jnp.full_like(x0, bounds[0])
    hi = jnp.full_like(x0, bounds[1])
    rows = jnp.arange(batch)

    def boundary_gap(flat):
        logits = logits_fn(flat.reshape(x.shape))
        return logits[rows, target] - logits[rows, y]

    def closest_boundary(flat):
        """Untargeted FAB: the linearised boundary y vs k with the smallest distance
        ``|f_k| / ||grad f_k||_q`` (the reference's choice), its gap and gradient."""
        logits, pullback = jax.vjp(lambda v: logits_fn(v.reshape(x.shape)), flat)
        classes = logits.shape[-1]
        (jac,) = jax.vmap(pullback)(
            jnp.broadcast_to(
                jnp.eye(classes, dtype=logits.dtype)[:, None], (classes, *logits.shape)
            )
        )  # (classes, batch, features)
        gaps = logits - logits[rows, y][:, None]
        grads = jac - jac[y, rows][None]
        dual = geometry.dual_norm(grads.reshape(classes * batch, -1), norm=norm)
        dist = jnp.abs(gaps) / (dual.reshape(classes, batch).T + 1e-12)
        dist = jnp.where(jax.nn.one_hot(y, classes, dtype=bool), jnp.inf, dist)
        k = jnp.argmin(dist, axis=1)
        return gaps[rows, k], grads[k, rows]

    def step(_, carry):
        x1, adv, best = carry
        if target is None:
            gap, grad = closest_boundary(x1)
        else:
            gap, pullback = jax.vjp(boundary_gap, x1)
            (grad,) = pullback(jnp.ones_like(gap))
        # Linearised boundary {z : <grad, z> = <grad, x1> - gap}.
        c_current = -gap
        c_original = -gap + jnp.sum(grad * (x1 - x0), axis=1)
        d1 = _project_batch(norm, x1, grad, c_current, lo, hi)
        d0 = _project_batch(norm, x0, grad, c_original, lo, hi)
        a1 = jnp.maximum(geometry.lp_norm(d1, norm=norm), 1e-8)
        a0 = jnp.maximum(geometry.lp_norm(d0, norm=norm), 1e-8)
        alpha = jnp.clip(a1 / (a1 + a0), 0.0, alpha_max)[:, None]
        x1 = jnp.clip((1 - alpha) * (x1 + eta * d1) + alpha * (x0 + eta * d0), lo, hi)
        logits = logits_fn(x1.reshape(x.shape))
        is_adv = jnp.argmax(logits, axis=-1) != y
        dist = geometry.lp_norm(x1 - x0, norm=norm)
        better = is_adv & (dist < best)
        adv = jnp.where(better[:, None], x1, adv)
        best = jnp.where(better, dist, best)
        x1 = jnp.where(is_adv[:, None], x0 + (x1 - x0) * beta, x1)
        return x1, adv, best

    init = (start.reshape(batch, -1), x0, jnp.full((batch,), jnp.inf, x.dtype))
    _, adv, best = jax.lax.fori_loop(0, num_steps, step, init)
    return adv.reshape(x.shape), best


@partial(
    jit,
    static_argnames=(
        "logits_fn",
        "norm",
        "num_steps",
        "num_targets",
        "num_restarts",
        "alpha_max",
        "eta",
        "beta",
        "bounds",
        "targeted",
    ),
)
def _fab_targeted(
    logits_fn,
    x,
    y,
    key,
    eps,
    *,
    norm,
    num_steps,
    num_targets,
    num_restarts,
    alpha_max,
    eta,
    beta,
    bounds,
    targeted=True,
):
    batch = x.shape[0]
    expand = (-1,) + (1,) * (x.ndim - 1)
    keys = example_keys(key, batch)
    logits = logits_fn(x)
    correct = jnp.argmax(logits, axis=-1) == y
    # Targets: the other classes by decreasing clean logit (the reference's
    # ``sort()[1][:, -target_class]`` for target_class = 2, 3, ...).
    n_targets = max(1, min(num_targets, logits.shape[-1] - 1)) if targeted else 1
    masked = logits.at[jnp.arange(batch), y].set(-jnp.inf)
    targets = jax.lax.top_k(masked, n_targets)[1].T  # (n_targets, batch)
    radius = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,))
    radius = jnp.where(jnp.isfinite(radius), radius, 0.0)

    def per_target(carry, inputs):
        best_adv, best = carry
        index, target = inputs

        def run(restart):
            run_keys = fold_in_each(fold_in_each(keys, index), restart)
            start = jnp.where(restart > 0, _random_start(run_keys, x, radius, norm, bounds), x)
            return _fab_single_run(
                logits_fn,
                x,
                y,
                target if targeted else None,
                start,
                norm=norm,
                num_steps=num_steps,
                alpha_max=alpha_max,
                eta=eta,
                beta=beta,
                bounds=bounds,
            )

        advs, founds = jax.vmap(run)(jnp.arange(num_restarts))
        pick = jnp.argmin(founds, axis=0)
        found = jnp.take_along_axis(founds, pick[None], axis=0)[0]
        adv = jnp.take_along_axis(advs, pick.reshape((1, *expand)), axis=0)[0]
        better = found < best
        return (jnp.where(better.reshape(expand), adv, best_adv), jnp.minimum(found, best)), None

    init = (x, jnp.full((batch,), jnp.inf, x.dtype))
    (best_adv, best), _ = jax.lax.scan(per_target, init, (jnp.arange(n_targets), targets))
    best_adv = jnp.where(correct.reshape(expand), best_adv, x)
    return best_adv, jnp.where(correct, best, 0.0)


def fab_targeted_minimal(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str = "linf",
    eps: jax.Array | float | None = None,
    num_steps: int = 100,
    num_targets: int = 9,
    num_restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    bounds: tuple[float, float] = (0.0, 1.0),
    targeted: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """FAB-T's smallest adversarial examples and their l_p norms (see `fab_targeted`).

    ``eps`` only sets the radius of the random restarts (restart k > 0), so it may be
    None with ``num_restarts=1``.

    With ``targeted=False`` this is untargeted FAB (the ``plus`` version's 'fab'): each
    step linearises the boundary to the class k != y with the smallest
    ``|z_k - z_y| / ||grad(z_k - z_y)||_q`` (one backward pass per class) and
    ``num_targets`` is ignored.

    Returns:
      (x_adv, norms): per example the smallest adversarial point found over targets and
      restarts and its distance to x; x and 0 for points misclassified already, x and
      inf where none was found.
    """
    geometry.check_norm(norm)
    if eps is None and num_restarts > 1:
        raise ValueError("fab_targeted: random restarts (num_restarts > 1) need eps")
    return _fab_targeted(
        logits_fn,
        x,
        y,
        key,
        jnp.inf if eps is None else eps,
        norm=norm,
        num_steps=int(num_steps),
        num_targets=int(num_targets),
        num_restarts=int(num_restarts),
        alpha_max=float(alpha_max),
        eta=float(eta),
        beta=float(beta),
        bounds=(float(bounds[0]), float(bounds[1])),
        targeted=bool(targeted),
    )


def fab_targeted(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str = "linf",
    eps: jax.Array | float,
    num_steps: int = 100,
    num_targets: int = 9,
    num_restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    bounds: tuple[float, float] = (0.0, 1.0),
    targeted: bool = True,
) -> jax.Array:
    """Targeted FAB (Croce & Hein 2020), kept only within the eps-ball.

    AutoAttack's reference settings (``FABAttack_PT``; the ``standard`` version runs
    FAB-T with them): ``num_steps=100``, ``num_targets=9`` (every other class of
    CIFAR-10), ``num_restarts=1``, ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``; the
    ``plus`` version uses ``num_restarts=5``. Restart k > 0 starts at a random point at
    distance eps / 2 from x (sup norm for l_inf, l_p for l_2 and l_1), clipped to the
    box. Targets are a ``lax.scan`` axis (the other classes by decreasing clean logit),
    restarts a ``vmap`` axis; randomness is per example (`example_keys`).

    Args:
      logits_fn: x -> logits [B, K]; predictions must not depend on batch composition.
      x: inputs [B, ...] in ``bounds``; y: labels [B]; key: PRNG key (or B keys).
      norm: "linf", "l2" or "l1"; eps: the threat model's radius (scalar or [B]).
      num_steps, num_targets, num_restarts, alpha_max, eta, beta: as above.
      bounds: the input box.
      targeted: False for untargeted FAB (see `fab_targeted_minimal`).

    Returns:
      x_adv: the smallest adversarial example found where its l_p distance to x is at
      most eps, else x (points misclassified already are returned unchanged).
    """
    x_adv, found = fab_targeted_minimal(
        logits_fn,
        x,
        y,
        key,
        norm=norm,
        eps=eps,
        num_steps=num_steps,
        num_targets=num_targets,
        num_restarts=num_restarts,
        alpha_max=alpha_max,
        eta=eta,
        beta=beta,
        bounds=bounds,
        targeted=targeted,
    )
    keep = (found <= jnp.broadcast_to(jnp.asarray(eps, found.dtype), found.shape)).reshape(
        (-1,) + (1,) * (x.ndim - 1)
    )
    return jnp.where(keep, x_adv, x)


# ----------------------------------------------------------------------------- builders

# AutoAttack's reference settings (FABAttack_PT as its `standard` version runs FAB-T).
FAB_DEFAULTS = {
    "norm": "linf",
    "num_steps": 100,
    "num_targets": 9,
    "num_restarts": 1,
    "alpha_max": 0.1,
    "eta": 1.05,
    "beta": 0.9,
}


def run_fab(hp: dict, logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None) -> jax.Array:
    """`Attack.run` of 'fab_t' and 'fab' (`fab_targeted`, kept within eps)."""
    return fab_targeted(
        logits_fn,
        x,
        y,
        key,
        norm=hp["norm"],
        eps=hp["eps"] if eps is None else eps,
        num_steps=hp["num_steps"],
        num_targets=hp["num_targets"],
        num_restarts=hp["num_restarts"],
        alpha_max=hp["alpha_max"],
        eta=hp["eta"],
        beta=hp["beta"],
        bounds=bounds,
        targeted=hp["targeted"],
    )


def _build(cfg, *, attack: str, targeted: bool) -> Attack:
    v = config_values(cfg, attack=attack, defaults=FAB_DEFAULTS, required=("eps",))
    check_choice(v["norm"], geometry.NORMS, attack=attack, key="norm")
    check_number(v["eps"], attack=attack, key="eps", minimum=0.0)
    for k in ("num_steps", "num_targets", "num_restarts"):
        check_number(v[k], attack=attack, key=k, minimum=1, integer=True)
    check_number(v["alpha_max"], attack=attack, key="alpha_max", minimum=0.0, maximum=1.0)
    check_number(v["eta"], attack=attack, key="eta", minimum=1.0)
    check_number(v["beta"], attack=attack, key="beta", minimum=0.0, maximum=1.0)
    v["eps"] = float(v["eps"])
    v["targeted"] = targeted
    budget = {"num_steps": v["num_steps"], "num_restarts": v["num_restarts"]}
    if targeted:
        budget["num_targets"] = v["num_targets"]
    return Attack(attack, run_fab, freeze(v), WHITE_BOX, freeze(budget))


def build_fab_t(cfg) -> Attack:
    """Registry builder for 'fab_t' (targeted FAB, AutoAttack's FAB-T).

    Keys and AutoAttack's defaults: ``eps`` (required), ``norm`` ('linf', 'l2', 'l1';
    'linf'), ``num_steps`` (100), ``num_targets`` (9), ``num_restarts`` (1),
    ``alpha_max`` (0.1), ``eta`` (1.05), ``beta`` (0.9).
    """
    return _build(cfg, attack="fab_t", targeted=True)


def build_fab(cfg) -> Attack:
    """Registry builder for 'fab' (untargeted FAB; the ``plus`` version runs it with
    ``num_restarts=5``). Keys as 'fab_t'; ``num_targets`` is ignored."""
    return _build(cfg, attack="fab", targeted=False)
