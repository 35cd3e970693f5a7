"""Square attack: score-based black-box random search in l_inf and l_2.

Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search". Only forward passes of
``logits_fn`` are used (no gradients). Each iteration proposes a change of the
perturbation inside a random square window of side ``s = round(sqrt(p_i h w))`` and
keeps it if the margin loss ``z_y - max_{k != y} z_k`` (Sec. 3) decreases; examples
already misclassified stop changing. The fraction ``p_i`` starts at ``p_init`` and is
halved at iterations {10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000} of a 10,000-query
schedule, rescaled to ``num_queries`` (Sec. 3 and Appendix of the paper).

l_inf (Alg. 2): vertical-stripe initialisation ``x + eps * s_col``; a proposal sets
the window to ``+-eps`` with one random sign per channel. l_2 (Alg. 3): the window
receives a two-halves pattern of opposite signs (Gaussian-shaped halves here, in place
of the paper's pseudo-Gaussian rings), added to the window's current direction and
scaled so the mass of two windows plus the unused l_2 budget moves into the first
window; the second window is cleared. Every proposal is projected onto the threat model.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import geometry, losses
from advjax.attacks import (
    BLACK_BOX,
    Attack,
    check_choice,
    check_number,
    config_values,
    example_keys,
    freeze,
)

LogitsFn = Callable[[jax.Array], jax.Array]

SQUARE_NORMS = ("linf", "l2")
# Iterations (on a 10,000-query scale) after which the square fraction p is halved.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(i: jax.Array, num_queries: int, p_init: float) -> jax.Array:
    """Square-size fraction at iteration ``i`` (Andriushchenko et al. 2020, App. A)."""
    scaled = jnp.floor(i.astype(jnp.float32) / num_queries * 10000.0)
    halvings = sum((scaled > b).astype(jnp.float32) for b in _HALVINGS)
    return p_init / (2.0**halvings)


def _window_mask(r: jax.Array, c: jax.Array, s: jax.Array, h: int, w: int) -> jax.Array:
    """Boolean ``(batch, h, w, 1)`` mask of the squares with top-left ``(r, c)`` and side s."""
    rows = jnp.arange(h)[None, :]
    cols = jnp.arange(w)[None, :]
    in_r = (rows >= r[:, None]) & (rows < r[:, None] + s)
    in_c = (cols >= c[:, None]) & (cols < c[:, None] + s)
    return (in_r[:, :, None] & in_c[:, None, :])[..., None]


def _random_window(key: jax.Array, batch: int, s: jax.Array, h: int, w: int):
    kr, kc = jax.random.split(key)
    r = jax.random.randint(kr, (batch,), 0, h - s + 1)
    c = jax.random.randint(kc, (batch,), 0, w - s + 1)
    return r, c


def _two_halves_pattern(
    r: jax.Array, c: jax.Array, s: jax.Array, split_rows: jax.Array, h: int, w: int
) -> jax.Array:
    """``(batch, h, w, 1)`` pattern inside the window: two Gaussian halves, opposite signs."""
    sf = s.astype(jnp.float32)
    u = jnp.arange(h, dtype=jnp.float32)[None, :, None] - r[:, None, None]  # (b, h, 1)
    v = jnp.arange(w, dtype=jnp.float32)[None, None, :] - c[:, None, None]  # (b, 1, w)
    along = jnp.where(split_rows[:, None, None], u, v)
    across = jnp.where(split_rows[:, None, None], v, u)
    second = along >= sf / 2.0
    centre_along = jnp.where(second, 0.75 * sf, 0.25 * sf) - 0.5
    centre_across = 0.5 * sf - 0.5
    sig_along = jnp.maximum(sf / 6.0, 0.5)
    sig_across = jnp.maximum(sf / 3.0, 0.5)
    bump = jnp.exp(
        -((along - centre_along) ** 2) / (2 * sig_along**2)
        - ((across - centre_across) ** 2) / (2 * sig_across**2)
    )
    return (jnp.where(second, -bump, bump))[..., None]


def _l2_init(key: jax.Array, x: jax.Array, eps: jax.Array) -> jax.Array:
    """Tiles of two-halves patterns with random signs, scaled to l_2 norm ``eps``."""
    b, h, w, ch = x.shape
    tile = max(h // 5, 1)
    rows = jnp.arange(h) % tile
    cols = jnp.arange(w) % tile
    fr = rows[:, None].astype(jnp.float32)
    fc = cols[None, :].astype(jnp.float32)
    half = fc >= tile / 2.0
    centre = jnp.where(half, 0.75 * tile, 0.25 * tile) - 0.5
    bump = jnp.exp(
        -((fr - (tile / 2 - 0.5)) ** 2) / (2 * (tile / 3) ** 2)
        - (fc - centre) ** 2 / (2 * max(tile / 6, 0.5) ** 2)
    )
    pattern = jnp.where(half, -bump, bump)[None, :, :, None]
    n_tr, n_tc = -(-h // tile), -(-w // tile)
    signs = jax.random.rademacher(key, (b, n_tr, n_tc, ch), jnp.float32)
    signs = jnp.repeat(jnp.repeat(signs, tile, axis=1), tile, axis=2)[:, :h, :w, :]
    delta = pattern * signs
    norm = geometry.lp_norm(delta, norm="l2").reshape(b, 1, 1, 1)
    return delta / jnp.maximum(norm, 1e-12) * eps.reshape(b, 1, 1, 1)


def square(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str = "linf",
    eps: jax.Array | float,
    num_queries: int = 5000,
    p_init: float = 0.8,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Untargeted Square attack (Andriushchenko et al. 2020, Alg. 2 for l_inf, 3 for l_2).

    Args:
      logits_fn: ``x -> logits`` (only forward passes are used).
      x: clean inputs ``(batch, h, w, channels)``.
      y: true labels.
      key: one PRNG key or per-example keys.
      norm: 'linf' or 'l2'.
      eps: scalar or ``(batch,)`` radius.
      num_queries: query budget per example (one forward pass per iteration, plus one
        for the initialisation).
      p_init: initial fraction of pixels in the square.
      bounds: input box.

    Returns:
      ``x_adv`` with the shape of ``x``.
    """
    check_choice(norm, SQUARE_NORMS, attack="square", key="norm")
    if x.ndim != 4:
        raise ValueError(f"square needs NHWC images, got shape {x.shape}")
    b, h, w, ch = x.shape
    keys = example_keys(key, b)
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (b,))
    e4 = eps.reshape(b, 1, 1, 1)
    lo, hi = bounds

    # Batch-level randomness for this batch is derived from the per-example keys so
    # that an example's trajectory depends only on its own key.
    def draw(i, fn):
        return jax.vmap(lambda k: fn(jax.random.fold_in(k, i)))(keys)

    def proj(delta):
        return geometry.project(delta, x, norm=norm, eps=eps, bounds=bounds)

    def margin_of(xa):
        return -losses.margin(logits_fn(xa), y)  # z_y - max_{k != y} z_k

    if norm == "linf":
        stripes = draw(0, lambda k: jax.random.rademacher(k, (1, w, ch), x.dtype))
        delta0 = proj(e4 * stripes)
    else:
        delta0 = proj(
            jax.vmap(lambda k, xi, ei: _l2_init(k, xi[None], ei[None])[0])(
                jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys), x, eps
            )
        )
    m0 = margin_of(x + delta0)

    def body(i, carry):
        delta, m_best = carry
        active = m_best > 0
        p = p_schedule(i, num_queries, p_init)
        s = jnp.clip(jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32), 1, h - 1 if h > 1 else 1)
        ks = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, i + 1), 4))(keys)
        r1, c1 = jax.vmap(lambda k: _random_window(k, 1, s, h, w))(ks[:, 0])
        r1, c1 = r1[:, 0], c1[:, 0]
        mask1 = _window_mask(r1, c1, s, h, w)
        if norm == "linf":
            signs = jax.vmap(lambda k: jax.random.rademacher(k, (1, 1, ch), x.dtype))(ks[:, 1])
            proposal = jnp.where(mask1, e4 * signs, delta)
        else:
            r2, c2 = jax.vmap(lambda k: _random_window(k, 1, s, h, w))(ks[:, 2])
            mask2 = _window_mask(r2[:, 0], c2[:, 0], s, h, w)
            union = mask1 | mask2
            split_rows = jax.vmap(lambda k: jax.random.bernoulli(k))(ks[:, 3])
            pattern = _two_halves_pattern(r1, c1, s, split_rows, h, w)
            signs = jax.vmap(lambda k: jax.random.rademacher(k, (1, 1, ch), x.dtype))(ks[:, 1])
            pattern = pattern * signs  # (b, h, w, ch)

            def chan_norm(v):
                return jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))

            old1 = jnp.where(mask1, delta, 0.0)
            direction = pattern / jnp.maximum(chan_norm(pattern), 1e-12)
            direction = direction + old1 / jnp.maximum(chan_norm(old1), 1e-12)
            direction = direction / jnp.maximum(chan_norm(direction), 1e-12)
            mass_union = chan_norm(jnp.where(union, delta, 0.0)) ** 2
            total = jnp.sum(delta * delta, axis=(1, 2, 3), keepdims=True)
            unused = jnp.maximum(e4**2 - total, 0.0)
            scale = jnp.sqrt(mass_union + unused / ch)
            proposal = jnp.where(union, 0.0, delta) + jnp.where(mask1, direction * scale, 0.0)
        proposal = proj(proposal)
        m_new = margin_of(x + proposal)
        accept = active & (m_new < m_best)
        delta = jnp.where(accept.reshape(b, 1, 1, 1), proposal, delta)
        return delta, jnp.where(accept, m_new, m_best)

    delta, _ = jax.lax.fori_loop(0, max(num_queries - 1, 0), body, (delta0, m0))
    return jnp.clip(x + delta, lo, hi)


_SQUARE_DEFAULTS = {"norm": "linf", "num_queries": 5000, "p_init": 0.8}


def run_square(hp: dict, logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None) -> jax.Array:
    """`Attack.run` of 'square'."""
    return square(
        logits_fn,
        x,
        y,
        key,
        norm=hp["norm"],
        eps=hp["eps"] if eps is None else eps,
        num_queries=hp["num_queries"],
        p_init=hp["p_init"],
        bounds=bounds,
    )


def build_square(cfg) -> Attack:
    """Registry builder for 'square'. Keys: eps (required), norm, num_queries, p_init."""
    v = config_values(cfg, attack="square", defaults=_SQUARE_DEFAULTS, required=("eps",))
    check_choice(v["norm"], SQUARE_NORMS, attack="square", key="norm")
    check_number(v["eps"], attack="square", key="eps", minimum=0.0)
    check_number(v["num_queries"], attack="square", key="num_queries", minimum=1, integer=True)
    check_number(v["p_init"], attack="square", key="p_init", minimum=0.0, strict=True, maximum=1.0)
    v["eps"] = float(v["eps"])
    return Attack(
        "square", run_square, freeze(v), BLACK_BOX, freeze({"num_queries": v["num_queries"]})
    )
