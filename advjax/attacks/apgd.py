"""Auto-PGD (APGD-CE, APGD-DLR) and its targeted version APGD-T.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1: PGD with momentum (alpha = 0.75), an
initial step ``eta = 2 eps`` and checkpoints ``w_j = ceil(p_j N)`` with ``p_0 = 0``,
``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``. At a checkpoint
the step is halved and the iterate restarts from the best point found so far if

1. the loss increased in at most ``rho (w_j - w_{j-1})`` of the steps since the
   last checkpoint (``rho = 0.75``), or
2. the step was not halved at the last checkpoint and the best loss has not improved
   since then (the flag starts as "halved", so this cannot fire at the first
   checkpoint).

Where the paper and AutoAttack's reference code (``autopgd_base.py``) differ, this
follows the code: its integer checkpoint schedule (`checkpoints`), ``<=`` in condition
1 (which counts increases between consecutive iterates, across a restart too), the
flag's initial value, and the momentum term kept after a restart from the best point
(the first step after it blends in ``x_max - x_prev``).

APGD-T (Sec. 4) runs the targeted DLR loss against each of the ``num_targets`` classes
with the highest clean logits and keeps, per example, the first success. A point
counts as adversarial whenever it is misclassified; the attack returns, per example,
a misclassified point if it found one, else the highest-loss point.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from advjax import geometry, losses
from advjax.attacks import (
    WHITE_BOX,
    Attack,
    check_choice,
    check_number,
    config_values,
    example_keys,
    fold_in_each,
    freeze,
    resolve_unroll,
)
from advjax.attacks.ascent import AscentResult, worst_over_restarts
from advjax.attacks.pgd import better

LogitsFn = Callable[[jax.Array], jax.Array]

APGD_NORMS = ("linf", "l2")
APGD_LOSSES = ("ce", "dlr", "margin")


def checkpoints(num_steps: int) -> list[int]:
    """APGD checkpoint iterations (Croce & Hein 2020, Sec. 3.2), as the reference code
    computes them.

    The paper's ``w_j = ceil(p_j N)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, in AutoAttack's integer form:
    the first segment has ``max(int(0.22 N), 1)`` steps and each next one
    ``max(int(0.03 N), 1)`` fewer, down to ``max(int(0.06 N), 1)``. Both agree for
    N = 100 ([22, 41, 57, 70, 80, 87, 93, 99]); for small budgets the reference's
    segments are shorter (N = 10: every step from the second on is a checkpoint), so
    the step size adapts at all.
    """
    first = max(int(0.22 * num_steps), 1)
    shrink = max(int(0.03 * num_steps), 1)
    shortest = max(int(0.06 * num_steps), 1)
    w, seg = [], first
    while (w[-1] if w else 0) + seg <= num_steps:
        w.append((w[-1] if w else 0) + seg)
        seg = max(seg - shrink, shortest)
    return w


def _expand(v: jax.Array, like: jax.Array) -> jax.Array:
    return v.reshape((like.shape[0],) + (1,) * (like.ndim - 1))


def _where(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(_expand(mask, a) if a.ndim > 1 else mask, a, b)


def _apgd_run(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    keys: jax.Array,
    eps: jax.Array,
    target: jax.Array | None,
    *,
    norm: str,
    num_steps: int,
    loss: str,
    bounds: tuple[float, float],
    rho: float,
    momentum: float,
    unroll: bool | None = None,
    delta0: jax.Array | None = None,
    loss_fn: Callable[[jax.Array], jax.Array] | None = None,
    noise: tuple[float, int] | None = None,
):
    """One APGD run; returns (x_adv, success, loss) per example.

    ``delta0`` replaces the uniform random start (it is projected onto the ball and the
    box); ``loss_fn(logits) -> (batch,)`` replaces the named ``loss``. ``noise = (std,
    samples)`` steps along the loss gradient averaged over ``samples`` Gaussian draws
    ``x + std * N(0, I)`` around each iterate (per-example keys folded with the step),
    while the loss, the success test and the checkpoints use the iterate itself.
    """
    batch = x.shape[0]

    def objective(xa):
        logits = logits_fn(xa)
        if loss_fn is None:
            lv = losses.attack_loss(loss, logits, y, target=target)
        else:
            lv = loss_fn(logits)
        succ = jnp.argmax(logits, axis=1) != y
        return jnp.sum(lv), (lv, succ)

    exact_grad = jax.value_and_grad(objective, has_aux=True)

    def grad_fn(xa, k):
        if noise is None:
            return exact_grad(xa)
        std, samples = noise
        draw_keys = fold_in_each(keys, k)

        def sample_grad(i):
            z = jax.vmap(lambda kk, xi: jax.random.normal(jax.random.fold_in(kk, i), xi.shape))(
                draw_keys, xa
            )
            return jax.grad(lambda v: objective(v)[0])(xa + std * z.astype(xa.dtype))

        g = jnp.mean(jax.vmap(sample_grad)(jnp.arange(samples)), axis=0)
        return objective(xa), g

    def proj(xa):
        return x + geometry.project(xa - x, x, norm=norm, eps=eps, bounds=bounds)

    def step(xa, g, eta):
        return proj(xa + _expand(eta, xa) * geometry.ascent_direction(g, norm=norm))

    if delta0 is None:
        x0 = x + jax.vmap(
            lambda k, xi, ei: geometry.random_init(k, xi[None], norm=norm, eps=ei, bounds=bounds)[0]
        )(keys, x, eps)
    else:
        x0 = proj(x + delta0)
    (_, (f0, s0)), g0 = grad_fn(x0, num_steps)

    ckpt = checkpoints(num_steps)
    is_ckpt = np.zeros(num_steps + 1, bool)
    seg = np.ones(num_steps + 1, np.float32)
    prev = 0
    for w in ckpt:
        is_ckpt[w] = True
        seg[w] = w - prev
        prev = w
    is_ckpt, seg = jnp.asarray(is_ckpt), jnp.asarray(seg)

    state = {
        "x": x0, "x_prev": x0, "g": g0, "f": f0,
        "x_max": x0, "g_max": g0, "f_max": f0,
        "eta": 2.0 * eps,
        "count": jnp.zeros((batch,), jnp.float32),
        "f_max_last": f0,
        # The reference starts this flag true: condition 2 cannot fire at the first
        # checkpoint.
        "reduced_last": jnp.ones((batch,), bool),
        "x_adv": x0, "found": s0,
    }  # fmt: skip

    def body(k, s):
        z = step(s["x"], s["g"], s["eta"])
        blended = proj(s["x"] + momentum * (z - s["x"]) + (1 - momentum) * (s["x"] - s["x_prev"]))
        x_new = jnp.where(k == 0, z, blended)
        (_, (f_new, succ)), g_new = grad_fn(x_new, k)
        newly = succ & ~s["found"]
        x_adv = _where(newly, x_new, s["x_adv"])
        found = s["found"] | succ
        count = s["count"] + (f_new > s["f"]).astype(jnp.float32)
        up = f_new > s["f_max"]
        x_max = _where(up, x_new, s["x_max"])
        g_max = _where(up, g_new, s["g_max"])
        f_max = jnp.where(up, f_new, s["f_max"])

        at_ckpt = is_ckpt[k + 1]
        cond1 = count <= rho * seg[k + 1]
        cond2 = ~s["reduced_last"] & (s["f_max_last"] >= f_max)
        reduce = at_ckpt & (cond1 | cond2)
        eta = jnp.where(reduce, 0.5 * s["eta"], s["eta"])
        x_cur = _where(reduce, x_max, x_new)
        return {
            "x": x_cur,
            # As in the reference, a restart from the best point keeps the momentum
            # term: the next step's x - x_prev is x_max - (the iterate before it).
            "x_prev": s["x"],
            "g": _where(reduce, g_max, g_new),
            # Condition 1 compares consecutive iterates' losses, across a restart too.
            "f": f_new,
            "x_max": x_max,
            "g_max": g_max,
            "f_max": f_max,
            "eta": eta,
            "count": jnp.where(at_ckpt, 0.0, count),
            "f_max_last": jnp.where(at_ckpt, f_max, s["f_max_last"]),
            "reduced_last": jnp.where(at_ckpt, reduce, s["reduced_last"]),
            "x_adv": x_adv,
            "found": found,
        }

    s = jax.lax.fori_loop(0, num_steps, body, state, unroll=resolve_unroll(unroll, num_steps, x))
    x_out = _where(s["found"], s["x_adv"], s["x_max"])
    return x_out, s["found"], s["f_max"]


def _validate_runtime(norm: str, loss: str, num_steps: int, num_restarts: int) -> None:
    check_choice(norm, APGD_NORMS, attack="apgd", key="norm")
    check_choice(loss, APGD_LOSSES, attack="apgd", key="loss")
    if num_steps < 1 or num_restarts < 1:
        raise ValueError(
            f"apgd needs num_steps >= 1 and num_restarts >= 1, got {num_steps}, {num_restarts}"
        )


def best_of_restarts(run, keys, num_restarts: int, x: jax.Array | None = None):
    """``run(keys) -> (x_adv, success, loss)`` over restarts (a vmap axis), per-example
    worst case by the ascent core's rule (`advjax.attacks.ascent.worst_over_restarts`)."""
    del x
    if num_restarts == 1:
        return run(keys)
    rkeys = jax.vmap(lambda r: fold_in_each(keys, r))(jnp.arange(num_restarts))
    xs, ss, ls = jax.vmap(run)(rkeys)
    best = worst_over_restarts(AscentResult(xs, ls, ss), None)
    return best.delta, best.success, best.loss


def apgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str = "linf",
    eps: jax.Array | float,
    num_steps: int = 100,
    loss: str = "ce",
    num_restarts: int = 1,
    bounds: tuple[float, float] = (0.0, 1.0),
    rho: float = 0.75,
    momentum: float = 0.75,
) -> jax.Array:
    """Untargeted APGD (Croce & Hein 2020, Alg. 1) on the CE or DLR loss.

    Args:
      logits_fn: eval-mode ``x -> logits``.
      x: clean inputs ``(batch, ...)``.
      y: true labels ``(batch,)``.
      key: one PRNG key or per-example keys.
      norm: 'linf' or 'l2'.
      eps: scalar or ``(batch,)`` radius.
      num_steps: iterations N (static).
      loss: 'ce' (APGD-CE), 'dlr' (APGD-DLR) or 'margin'.
      num_restarts: random restarts, worst case per example (a vmap axis).
      bounds: input box.
      rho: checkpoint condition 1 threshold.
      momentum: alpha, the weight of the new step in the momentum update.

    Returns:
      ``x_adv`` with the shape of ``x``.
    """
    _validate_runtime(norm, loss, num_steps, num_restarts)
    keys = example_keys(key, x.shape[0])
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (x.shape[0],))

    def run(k):
        return _apgd_run(
            logits_fn,
            x,
            y,
            k,
            eps,
            None,
            norm=norm,
            num_steps=num_steps,
            loss=loss,
            bounds=bounds,
            rho=rho,
            momentum=momentum,
        )

    return best_of_restarts(run, keys, num_restarts, x)[0]


def over_targets(logits_fn, x, y, keys, *, num_targets: int, num_restarts: int, run_for_target):
    """APGD-T's outer loop (Croce & Hein 2020, Sec. 4), shared by the l_inf/l_2 and l_1 forms.

    The top ``num_targets`` other classes by clean logit are attacked in turn (a
    ``lax.scan``); ``run_for_target(t)`` returns ``run(keys) -> (x_adv, success, loss)``
    for target labels ``t`` [B]. Per example the first success is kept, else the highest
    margin.
    """
    batch = x.shape[0]
    clean = jax.lax.stop_gradient(logits_fn(x))
    n_targets = max(1, min(num_targets, clean.shape[1] - 1))
    masked = jnp.where(jax.nn.one_hot(y, clean.shape[1], dtype=bool), -jnp.inf, clean)
    targets = jax.lax.top_k(masked, n_targets)[1].T  # (n_targets, batch)

    def per_target(carry, inputs):
        x_best, found, best_margin = carry
        i, t = inputs
        x_t, succ_t, _ = best_of_restarts(run_for_target(t), fold_in_each(keys, i), num_restarts, x)
        margin_t = losses.margin(logits_fn(x_t), y)
        take = better(margin_t, succ_t, best_margin, found)
        x_best = _where(take, x_t, x_best)
        best_margin = jnp.where(take, margin_t, best_margin)
        return (x_best, found | succ_t, best_margin), None

    init = (x, jnp.zeros((batch,), bool), jnp.full((batch,), -jnp.inf, x.dtype))
    (x_best, _, _), _ = jax.lax.scan(per_target, init, (jnp.arange(n_targets), targets))
    return x_best


def apgd_targeted(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str = "linf",
    eps: jax.Array | float,
    num_steps: int = 100,
    num_targets: int = 9,
    loss: str = "dlr",
    num_restarts: int = 1,
    bounds: tuple[float, float] = (0.0, 1.0),
    rho: float = 0.75,
    momentum: float = 0.75,
) -> jax.Array:
    """APGD-T: targeted APGD against the top ``num_targets`` other classes.

    Croce & Hein 2020, Sec. 4: for each of the classes with the highest clean logits
    (excluding ``y``), APGD on the targeted DLR loss (Eq. 7); per example the first
    success is kept (a ``lax.scan`` over targets, restarts a vmap axis inside).

    Args:
      logits_fn: eval-mode ``x -> logits``.
      x: clean inputs.
      y: true labels.
      key: one PRNG key or per-example keys.
      norm: 'linf' or 'l2'.
      eps: scalar or ``(batch,)`` radius.
      num_steps: iterations per target.
      num_targets: how many target classes (capped at ``classes - 1``).
      loss: 'dlr' (targeted DLR, the paper's), 'ce' or 'margin' (targeted forms).
      num_restarts: restarts per target.
      bounds: input box.
      rho: checkpoint condition 1 threshold.
      momentum: momentum weight alpha.

    Returns:
      ``x_adv`` with the shape of ``x``.
    """
    _validate_runtime(norm, loss, num_steps, num_restarts)
    batch = x.shape[0]
    keys = example_keys(key, batch)
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,))

    def run_for_target(t):
        def run(k):
            return _apgd_run(
                logits_fn, x, y, k, eps, t, norm=norm, num_steps=num_steps, loss=loss,
                bounds=bounds, rho=rho, momentum=momentum,
            )  # fmt: skip

        return run

    return over_targets(
        logits_fn, x, y, keys, num_targets=num_targets, num_restarts=num_restarts,
        run_for_target=run_for_target,
    )  # fmt: skip


# ----------------------------------------------------------------------------- builders

# AutoAttack's reference defaults (APGDAttack): 100 steps, rho 0.75, momentum 0.75;
# l_1 (norm 'l1') runs l_1-APGD (`advjax.attacks.apgd_l1`), with the 3 eps / 2 eps / eps
# schedule when large_eps; eot_samples > 1 averages a randomised model over that many
# draws (the 'rand' version: 20).
_APGD_DEFAULTS = {
    "norm": "linf",
    "num_steps": 100,
    "num_restarts": 1,
    "rho": 0.75,
    "momentum": 0.75,
    "large_eps": False,
    "eot_samples": 1,
}
BUILDER_NORMS = (*APGD_NORMS, "l1")


def _validate(v: dict, attack: str) -> None:
    check_choice(v["norm"], BUILDER_NORMS, attack=attack, key="norm")
    check_choice(v["large_eps"], (False, True), attack=attack, key="large_eps")
    check_number(v["eot_samples"], attack=attack, key="eot_samples", minimum=1, integer=True)
    check_number(v["eps"], attack=attack, key="eps", minimum=0.0)
    check_number(v["num_steps"], attack=attack, key="num_steps", minimum=1, integer=True)
    check_number(v["num_restarts"], attack=attack, key="num_restarts", minimum=1, integer=True)
    check_number(v["rho"], attack=attack, key="rho", minimum=0.0, maximum=1.0)
    check_number(v["momentum"], attack=attack, key="momentum", minimum=0.0, maximum=1.0)
    check_choice(v["loss"], APGD_LOSSES, attack=attack, key="loss")


def with_eot(hp: dict, logits_fn, key) -> LogitsFn:
    """``logits_fn``, or for a randomised model (an `advjax.models.BoundModel` whose
    model takes a key) and ``hp['eot_samples'] > 1`` its EOT average over that many
    draws (`advjax.attacks.wrappers.eot`, log of the mean softmax).

    AutoAttack's ``rand`` version averages the loss gradient over 20 fresh draws at
    every step; here 20 draws, derived from the model's key and the attack's key, are
    fixed for the whole run (common random numbers, so APGD's checkpoints compare one
    objective), and the attack's success is judged on the expected prediction.
    """
    from advjax.attacks import _first_key
    from advjax.attacks.wrappers import eot

    model = getattr(logits_fn, "model", None)
    if hp.get("eot_samples", 1) <= 1 or model is None or not model.takes_key:
        return logits_fn
    seed = jax.random.bits(_first_key(key), dtype=jnp.uint32)
    draws = jax.random.fold_in(logits_fn.key, seed)
    return eot(lambda v, k: model(v, k), num_samples=hp["eot_samples"], key=draws)


def run_apgd(hp: dict, logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None) -> jax.Array:
    """`Attack.run` of 'apgd_ce' and 'apgd_dlr'."""
    logits_fn = with_eot(hp, logits_fn, key)
    if hp["norm"] == "l1":
        from advjax.attacks.apgd_l1 import apgd_l1

        return apgd_l1(
            logits_fn,
            x,
            y,
            key,
            eps=hp["eps"] if eps is None else eps,
            num_steps=hp["num_steps"],
            loss=hp["loss"],
            num_restarts=hp["num_restarts"],
            large_eps=hp["large_eps"],
            bounds=bounds,
        )
    return apgd(
        logits_fn,
        x,
        y,
        key,
        norm=hp["norm"],
        eps=hp["eps"] if eps is None else eps,
        num_steps=hp["num_steps"],
        loss=hp["loss"],
        num_restarts=hp["num_restarts"],
        bounds=bounds,
        rho=hp["rho"],
        momentum=hp["momentum"],
    )


def run_apgd_t(hp: dict, logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None) -> jax.Array:
    """`Attack.run` of 'apgd_t'."""
    logits_fn = with_eot(hp, logits_fn, key)
    if hp["norm"] == "l1":
        from advjax.attacks.apgd_l1 import apgd_l1_targeted

        return apgd_l1_targeted(
            logits_fn,
            x,
            y,
            key,
            eps=hp["eps"] if eps is None else eps,
            num_steps=hp["num_steps"],
            num_targets=hp["num_targets"],
            loss=hp["loss"],
            num_restarts=hp["num_restarts"],
            large_eps=hp["large_eps"],
            bounds=bounds,
        )
    return apgd_targeted(
        logits_fn,
        x,
        y,
        key,
        norm=hp["norm"],
        eps=hp["eps"] if eps is None else eps,
        num_steps=hp["num_steps"],
        num_targets=hp["num_targets"],
        loss=hp["loss"],
        num_restarts=hp["num_restarts"],
        bounds=bounds,
        rho=hp["rho"],
        momentum=hp["momentum"],
    )


def _build_untargeted(cfg, *, attack: str, loss: str) -> Attack:
    v = config_values(
        cfg, attack=attack, defaults=dict(_APGD_DEFAULTS, loss=loss), required=("eps",)
    )
    _validate(v, attack)
    v["eps"] = float(v["eps"])
    budget = {"num_steps": v["num_steps"], "num_restarts": v["num_restarts"]}
    return Attack(attack, run_apgd, freeze(v), WHITE_BOX, freeze(budget))


def build_apgd_ce(cfg) -> Attack:
    """Registry builder for 'apgd_ce'. Keys (AutoAttack's defaults): eps (required),
    norm ('linf'; 'l2', or 'l1' for l_1-APGD), num_steps (100), num_restarts (1; the
    l_1 standard version 5, plus 5), rho (0.75), momentum (0.75; l_1-APGD has none),
    large_eps (False; l_1 standard True), eot_samples (1; rand 20), loss ('ce')."""
    return _build_untargeted(cfg, attack="apgd_ce", loss="ce")


def build_apgd_dlr(cfg) -> Attack:
    """Registry builder for 'apgd_dlr' (APGD on the DLR loss)."""
    return _build_untargeted(cfg, attack="apgd_dlr", loss="dlr")


def build_apgd_t(cfg) -> Attack:
    """Registry builder for 'apgd_t'. Keys as 'apgd_ce' plus num_targets (9; the l_1
    standard version 5), loss (default 'dlr', the targeted DLR)."""
    v = config_values(
        cfg,
        attack="apgd_t",
        defaults=dict(_APGD_DEFAULTS, loss="dlr", num_targets=9),
        required=("eps",),
    )
    _validate(v, "apgd_t")
    check_number(v["num_targets"], attack="apgd_t", key="num_targets", minimum=1, integer=True)
    v["eps"] = float(v["eps"])
    budget = {
        "num_steps": v["num_steps"],
        "num_restarts": v["num_restarts"],
        "num_targets": v["num_targets"],
    }
    return Attack("apgd_t", run_apgd_t, freeze(v), WHITE_BOX, freeze(budget))
