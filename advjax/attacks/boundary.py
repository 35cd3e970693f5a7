"""APGD-B: many diverse APGD restarts, spent on the points closest to the boundary.

On an adversarially trained MNIST model a black-box search (Square) fools points that
APGD-CE and APGD-T leave robust. They lie close to the decision boundary, where the
white-box stage stalls just short of it, and the cross-entropy gradient is exactly zero
on most background coordinates, so sign steps from a uniform start never move them
(README, "Results measured here"). More restarts of the same attack find some of them;
restarts that start elsewhere and step along a smoothed gradient find them (on the
default model, Square then adds 0.2% instead of 1.7%).

`apgd_boundary` runs, per example:

1. **A probe**: one APGD run (Croce & Hein 2020, Alg. 1, `advjax.attacks.apgd`) on the
   margin loss ``max_{k != y} z_k - z_y`` from a uniform start; it records the lowest
   margin ``z_y - max_{k != y} z_k`` it reached.
2. **Restarts where they pay**: the points the probe left robust with a lowest margin
   below ``margin_below`` get ``num_restarts`` further APGD runs of ``restart_steps``
   steps each. Restart ``r`` ascends loss ``losses[r mod L]`` (cross-entropy, margin,
   DLR by default) from a start that alternates, every ``L`` restarts, between a uniform
   draw in the ball and a **block start**: the image cut into squares of a random side
   (2 to 7 pixels) at a random offset, each square set to one of ``-eps, 0, +eps``
   (Square's moves are of this kind, and they reach the zero-gradient coordinates).
   Each step follows the gradient averaged over ``noise_samples`` Gaussian draws of std
   ``noise_std`` around the iterate (as SmoothGrad averages saliency, or EOT a
   randomised model's gradient): where a ReLU threshold makes the exact gradient zero,
   draws that cross the threshold give it a direction. The loss, the success test and
   APGD's checkpoints use the iterate itself; ``noise_samples = 0`` steps along the
   exact gradient.

A point's result depends on its own key only: the selection is a per-example
threshold, the selected points are attacked in fixed-size chunks inside a
``lax.while_loop`` (static shapes, as many chunks as there are selected points), and a
chunk stops early only once every point in it is fooled. Returns, per example, the
first misclassified point found, else the probe's highest-loss point. l_inf only.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

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
)
from advjax.attacks.apgd import _apgd_run

LogitsFn = Callable[[jax.Array], jax.Array]

BOUNDARY_LOSSES = ("ce", "margin", "dlr")
MIN_BLOCK, MAX_BLOCK = 2, 7

_DEFAULTS = {
    "norm": "linf",
    "num_steps": 100,
    "restart_steps": 50,
    "num_restarts": 18,
    "margin_below": 2.0,
    "noise_std": 0.08,
    "noise_samples": 4,
    "losses": BOUNDARY_LOSSES,
    "chunk": 64,
    "rho": 0.75,
    "momentum": 0.75,
}


def block_start(key: jax.Array, x: jax.Array, eps: jax.Array) -> jax.Array:
    """One example's block start ``delta`` for an ``(h, w, c)`` image.

    The image is cut into squares of side ``s ~ U{2..7}`` whose grid is shifted by a
    random offset in ``{0..6}`` per axis; each square and channel gets one value drawn
    from ``{-eps, 0, +eps}``. Not yet projected onto the box.
    """
    h, w, c = x.shape
    k_side, k_row, k_col, k_val = jax.random.split(key, 4)
    side = jax.random.randint(k_side, (), MIN_BLOCK, MAX_BLOCK + 1)
    rows = (jnp.arange(h) + jax.random.randint(k_row, (), 0, MAX_BLOCK)) // side
    cols = (jnp.arange(w) + jax.random.randint(k_col, (), 0, MAX_BLOCK)) // side
    n = max(h, w) // MIN_BLOCK + MAX_BLOCK
    values = jax.random.randint(k_val, (n, n, c), -1, 2).astype(x.dtype)
    return eps * values[rows][:, cols]


def apgd_boundary(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: jax.Array | float,
    num_steps: int = 100,
    restart_steps: int = 50,
    num_restarts: int = 18,
    margin_below: float = 2.0,
    noise_std: float = 0.08,
    noise_samples: int = 4,
    losses_used: tuple[str, ...] = BOUNDARY_LOSSES,
    chunk: int = 64,
    bounds: tuple[float, float] = (0.0, 1.0),
    rho: float = 0.75,
    momentum: float = 0.75,
) -> jax.Array:
    """APGD-B (module docstring) on NHWC images under l_inf.

    Args:
      logits_fn: eval-mode ``x -> logits``.
      x: clean inputs ``(batch, h, w, c)``.
      y: true labels ``(batch,)``.
      key: one PRNG key or per-example keys.
      eps: scalar or ``(batch,)`` radius.
      num_steps: the probe's APGD steps (static).
      restart_steps: APGD steps of each restart (static).
      num_restarts: restarts per selected point (at most; a fooled point needs no more).
      margin_below: a point the probe leaves robust gets the restarts when the lowest
        margin ``z_y - max_{k != y} z_k`` the probe reached is below this (logits).
      noise_std, noise_samples: the restarts' gradient is the mean over this many
        Gaussian draws of this std around the iterate (0 draws: the exact gradient).
      losses_used: the losses the restarts cycle through ('ce', 'margin', 'dlr').
      chunk: selected points attacked at a time (static).
      bounds: input box.
      rho, momentum: APGD's checkpoint threshold and momentum.

    Returns:
      ``x_adv`` with the shape of ``x``.
    """
    if x.ndim != 4:
        raise ValueError(f"apgd_boundary needs NHWC images, got shape {x.shape}")
    batch = x.shape[0]
    keys = example_keys(key, batch)
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,))
    run = dict(norm="linf", bounds=bounds, rho=rho, momentum=momentum)
    noise = (float(noise_std), int(noise_samples)) if noise_samples > 0 else None

    x_probe, found, probe_loss = _apgd_run(
        logits_fn, x, y, fold_in_each(keys, 0), eps, None,
        num_steps=num_steps, loss="margin", **run,
    )  # fmt: skip
    # The margin loss is max_{k != y} z_k - z_y: its highest value is minus the lowest
    # margin the probe reached.
    selected = ~found & (-probe_loss < margin_below)
    # The selected points first; the padding points at the spare row ``batch``.
    order = jnp.concatenate(
        [
            jnp.argsort(~selected, stable=True).astype(jnp.int32),
            jnp.full((chunk,), batch, jnp.int32),
        ]
    )
    count = jnp.sum(selected)
    n_loss = len(losses_used)

    def restarts_on(xc, yc, ec, kc, done):
        def loss_fn_for(r):
            weights = jax.nn.one_hot(r % n_loss, n_loss, dtype=xc.dtype)

            def loss_fn(logits):
                each = jnp.stack([losses.attack_loss(n, logits, yc) for n in losses_used])
                return weights @ each

            return loss_fn

        def cond(s):
            r, done, _ = s
            return (r < num_restarts) & ~jnp.all(done)

        def body(s):
            r, done, x_adv = s
            kr = fold_in_each(fold_in_each(kc, 1), r)
            uniform = jax.vmap(
                lambda k, xi, e: geometry.random_init(
                    k, xi[None], norm="linf", eps=e, bounds=bounds
                )[0]
            )(kr, xc, ec)
            blocks = jax.vmap(block_start)(kr, xc, ec)
            use_blocks = (r // n_loss) % 2 == 1
            delta0 = jnp.where(use_blocks, blocks, uniform)
            x_r, succ, _ = _apgd_run(
                logits_fn, xc, yc, kr, ec, None, num_steps=restart_steps, loss="ce",
                delta0=delta0, loss_fn=loss_fn_for(r), noise=noise, **run,
            )  # fmt: skip
            take = succ & ~done
            x_adv = jnp.where(take[:, None, None, None], x_r, x_adv)
            return r + 1, done | succ, x_adv

        _, done, x_adv = jax.lax.while_loop(cond, body, (jnp.int32(0), done, xc))
        return done, x_adv

    def chunk_cond(s):
        return s[0] * chunk < count

    def chunk_body(s):
        c, x_out = s
        pos = c * chunk + jnp.arange(chunk)
        idx = jax.lax.dynamic_slice(order, (c * chunk,), (chunk,))
        active = pos < count
        rows = jnp.where(active, idx, 0)
        done, x_adv = restarts_on(x[rows], y[rows], eps[rows], keys[rows], ~active)
        # Rows that are not active (or not fooled) write to the spare last row.
        target = jnp.where(done & active, idx, batch)
        return c + 1, x_out.at[target].set(x_adv)

    x_out = jnp.concatenate([x_probe, x[:1]])
    _, x_out = jax.lax.while_loop(chunk_cond, chunk_body, (jnp.int32(0), x_out))
    return x_out[:batch]


def run_apgd_boundary(hp: dict, logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None):
    """`Attack.run` of 'apgd_boundary'."""
    return apgd_boundary(
        logits_fn,
        x,
        y,
        key,
        eps=hp["eps"] if eps is None else eps,
        num_steps=hp["num_steps"],
        restart_steps=hp["restart_steps"],
        num_restarts=hp["num_restarts"],
        margin_below=hp["margin_below"],
        noise_std=hp["noise_std"],
        noise_samples=hp["noise_samples"],
        losses_used=tuple(hp["losses"]),
        chunk=hp["chunk"],
        bounds=bounds,
        rho=hp["rho"],
        momentum=hp["momentum"],
    )


def build_apgd_boundary(cfg) -> Attack:
    """Registry builder for 'apgd_boundary'. Keys: eps (required), norm ('linf' only),
    num_steps (the probe's, 100), restart_steps (50), num_restarts (18), margin_below
    (2.0, logits), noise_std (0.08), noise_samples (4), losses (('ce', 'margin', 'dlr')),
    chunk (64), rho (0.75), momentum (0.75)."""
    name = "apgd_boundary"
    v = config_values(cfg, attack=name, defaults=_DEFAULTS, required=("eps",))
    check_choice(v["norm"], ("linf",), attack=name, key="norm")
    check_number(v["eps"], attack=name, key="eps", minimum=0.0)
    for k in ("num_steps", "restart_steps", "num_restarts", "chunk"):
        check_number(v[k], attack=name, key=k, minimum=1, integer=True)
    check_number(v["margin_below"], attack=name, key="margin_below")
    check_number(v["noise_std"], attack=name, key="noise_std", minimum=0.0)
    check_number(v["noise_samples"], attack=name, key="noise_samples", minimum=0, integer=True)
    check_number(v["rho"], attack=name, key="rho", minimum=0.0, maximum=1.0)
    check_number(v["momentum"], attack=name, key="momentum", minimum=0.0, maximum=1.0)
    used = v["losses"]
    if isinstance(used, str) or not used or len(set(used)) != len(tuple(used)):
        raise ValueError(
            f"attack {name!r}: config key 'losses' must be a non-empty tuple of distinct "
            f"names from {list(BOUNDARY_LOSSES)}, got {used!r}"
        )
    for n in used:
        check_choice(n, BOUNDARY_LOSSES, attack=name, key="losses")
    v["losses"] = tuple(used)
    v["eps"] = float(v["eps"])
    budget = {
        "num_steps": v["num_steps"],
        "num_restarts": v["num_restarts"],
        "restart_steps": v["restart_steps"],
        "noise_samples": v["noise_samples"],
    }
    return Attack(name, run_apgd_boundary, freeze(v), WHITE_BOX, freeze(budget))
