"""Game-theoretic interactions between input variables (Ren et al., arXiv 2103.07364).

Players are the cells of a grid partition of an image; the game value v(S) is a model output
on the image where only the cells in S are present and the others are set to a baseline.
This module holds:

* games: `Game` (a batched value function over boolean masks, evaluated in chunks),
  `image_game` (masked forward passes of a ``logits_fn``), `function_game` and `table_game`
  (synthetic games);
* exact computations by enumeration of all 2^n coalitions (Shapley values, the
  Shapley interaction index, the multi-order interactions I^(m)(i, j) for every order m, the
  decomposition of v(N) - v(empty));
* sampling estimators with standard errors (I^(m) over sampled pairs and contexts, Shapley
  values by permutation sampling, the Shapley interaction index as the mean over orders)
  and unbiased estimators of squared interactions and of squared changes (noise floor
  removed: `squared_mean_unbiased`, `split_half_product`);
* the paper's summary quantities (interaction strength against m/n, raw and w^(m)-weighted,
  attacking utility per order, the disentanglement ratio, low / middle / high order bands)
  and their figures.

Notation (METHODS.md section 2): Delta v(i, j, S) = v(S+i+j) - v(S+i) - v(S+j) + v(S) and
I^(m)(i, j) = E_{S subset N\\{i,j}, |S| = m} Delta v(i, j, S), m = 0 .. n-2. Player i is bit i
of a coalition's integer code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advjax import registry

BASELINES = ("mean", "zero", "blur")
OUTPUTS = ("log_prob", "log_odds", "logit")
DEFAULT_BANDS = (0.3, 0.7)
MAX_EXACT_PLAYERS = 20

# ---------------------------------------------------------------------------------------------
# Games
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Game:
    """A cooperative game evaluated on batches of coalitions.

    Attributes:
      num_players: n.
      batch_fn: masks [B, n] bool -> values [B] float; one call is one batched model call.
      chunk_size: the largest B passed to ``batch_fn`` at once (bounds memory).
    """

    num_players: int
    batch_fn: Callable[[jax.Array], jax.Array]
    chunk_size: int = 128

    def __call__(self, masks: jax.Array) -> jax.Array:
        """Values of ``masks`` [..., n] (any leading shape), streamed in chunks."""
        return evaluate(self, masks)


def evaluate(game: Game, masks: jax.Array) -> jax.Array:
    """Evaluates ``game`` on masks [..., n] with at most ``game.chunk_size`` per model call.

    The masks are padded to a whole number of chunks and mapped with `jax.lax.map`, so the
    model sees one static batch shape and the peak memory is one chunk of inputs.

    Args:
      game: the game.
      masks: boolean array [..., n].

    Returns:
      Values [...], float32 ([..., K] for a game whose ``batch_fn`` returns [B, K]).
    """
    masks = jnp.asarray(masks, dtype=bool)
    lead = masks.shape[:-1]
    flat = masks.reshape(-1, game.num_players)
    total = flat.shape[0]
    chunk = max(1, min(game.chunk_size, total))
    num_chunks = -(-total // chunk)
    pad = num_chunks * chunk - total
    if pad:
        flat = jnp.concatenate([flat, jnp.zeros((pad, game.num_players), bool)])
    values = jax.lax.map(game.batch_fn, flat.reshape(num_chunks, chunk, game.num_players))
    extra = values.shape[2:]  # a game with K outputs returns [B, K] per chunk
    return values.reshape(-1, *extra)[:total].reshape(*lead, *extra)


def function_game(
    value_fn: Callable[[jax.Array], jax.Array], num_players: int, *, chunk_size: int = 1024
) -> Game:
    """A game from a plain function of one mask [n] bool -> scalar (vmapped over batches)."""
    return Game(num_players, jax.vmap(value_fn), chunk_size)


def table_game(table: np.ndarray | jax.Array, *, chunk_size: int = 1024) -> Game:
    """A game given by its value table, ``table[code]`` with player i = bit i of ``code``."""
    table = jnp.asarray(table)
    n = int(round(math.log2(table.shape[0])))
    if 2**n != table.shape[0]:
        raise ValueError(f"table length {table.shape[0]} is not a power of two")
    bits = 2 ** jnp.arange(n, dtype=jnp.int32)
    return function_game(lambda mask: table[jnp.sum(mask * bits)], n, chunk_size=chunk_size)


def grid_cells(image_hw: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Cell index [H, W] of every pixel for a ``grid`` = (rows, cols) partition of the image.

    Cell (r, c) is player r * cols + c. Sizes that do not divide evenly give cells that
    differ by at most one pixel per side.
    """
    height, width = image_hw
    rows, cols = grid
    if not (0 < rows <= height and 0 < cols <= width):
        raise ValueError(f"grid {grid} does not fit an image of size {image_hw}")
    row_cell = np.arange(height) * rows // height
    col_cell = np.arange(width) * cols // width
    return (row_cell[:, None] * cols + col_cell[None, :]).astype(np.int32)


def gaussian_blur(x: jax.Array, *, sigma: float) -> jax.Array:
    """Separable Gaussian blur of one image [H, W, C] (edge padding), radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = jnp.asarray(kernel / kernel.sum(), x.dtype)
    height, width = x.shape[:2]
    padded = jnp.pad(x, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    x = sum(kernel[k] * padded[k : k + height] for k in range(2 * radius + 1))
    padded = jnp.pad(x, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(kernel[k] * padded[:, k : k + width] for k in range(2 * radius + 1))


def make_baseline(
    x: jax.Array,
    kind: str = "mean",
    *,
    channel_mean: jax.Array | Sequence[float] | None = None,
    blur_sigma: float = 2.0,
) -> jax.Array:
    """The value of absent players for image ``x`` [H, W, C].

    Args:
      x: one image.
      kind: 'mean' (per-channel dataset mean, the reference code's choice: absent cells are
        zero after mean/std normalisation), 'zero', or 'blur' (Gaussian-blurred ``x``).
      channel_mean: per-channel dataset mean [C] for 'mean'; when None the image's own
        per-channel mean is used.
      blur_sigma: standard deviation in pixels for 'blur'.

    Returns:
      Baseline image with the shape of ``x``.
    """
    registry.one_of(kind, BASELINES, key="analysis.baseline")
    if kind == "zero":
        return jnp.zeros_like(x)
    if kind == "blur":
        return gaussian_blur(x, sigma=blur_sigma)
    if channel_mean is None:
        channel_mean = jnp.mean(x, axis=(0, 1))
    return jnp.broadcast_to(jnp.asarray(channel_mean, x.dtype), x.shape)


def masked_inputs(
    x: jax.Array, baseline: jax.Array, cells: np.ndarray, masks: jax.Array
) -> jax.Array:
    """Images x_S [B, H, W, C]: pixels of present cells from ``x``, the rest from ``baseline``."""
    present = masks[:, cells]  # [B, H, W]
    return jnp.where(present[..., None], x[None], baseline[None])


def output_values(logits: jax.Array, label: jax.Array, output: str = "log_prob") -> jax.Array:
    """Game value from logits [B, K] for class ``label``.

    'log_prob' is log p(label | x_S) (the reference code's GT output); 'log_odds' is
    log p / (1 - p) = z_label - logsumexp(z_other); 'logit' is z_label (use the class
    predicted on x_adv as ``label`` for the reference code's Target variant).
    """
    registry.one_of(output, OUTPUTS, key="analysis.output")
    logits = logits.astype(jnp.float32)
    z = logits[:, label]
    if output == "logit":
        return z
    if output == "log_prob":
        return z - jax.nn.logsumexp(logits, axis=-1)
    others = jnp.where(jnp.arange(logits.shape[-1]) == label, -jnp.inf, logits)
    return z - jax.nn.logsumexp(others, axis=-1)


def image_game(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    label: jax.Array | int,
    *,
    grid: tuple[int, int] = (7, 7),
    baseline: str | jax.Array = "mean",
    channel_mean: jax.Array | Sequence[float] | None = None,
    blur_sigma: float = 2.0,
    output: str | Sequence[str] | Callable[[jax.Array, jax.Array], jax.Array] = "log_prob",
    chunk_size: int = 128,
) -> Game:
    """The game of Ren et al. on one image: players are grid cells, v(S) = output(f(x_S)).

    Args:
      logits_fn: batched eval-mode model, x [B, H, W, C] -> logits [B, K].
      x: one image [H, W, C].
      label: the class whose output is the game value (true class by default).
      grid: (rows, cols) of the partition; n = rows * cols players.
      baseline: 'mean' | 'zero' | 'blur' (see `make_baseline`) or an image [H, W, C].
      channel_mean: dataset per-channel mean for the 'mean' baseline.
      blur_sigma: sigma of the 'blur' baseline.
      output: 'log_prob' | 'log_odds' | 'logit' (see `output_values`), a sequence of those
        (a game with one value per name, [B, K], from the same forward passes) or a
        function (logits [B, K], label) -> [B].
      chunk_size: masked images per model call.

    Returns:
      A `Game` whose ``batch_fn`` builds the masked images of a chunk and calls the model once.
    """
    x = jnp.asarray(x, jnp.float32)
    cells = grid_cells(x.shape[:2], grid)
    if isinstance(baseline, str):
        base = make_baseline(x, baseline, channel_mean=channel_mean, blur_sigma=blur_sigma)
    else:
        base = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    if callable(output):
        out_fn = output
    elif isinstance(output, str):
        out_fn = lambda z, c: output_values(z, c, output)  # noqa: E731
    else:  # several outputs from the same forward passes: values [B, K]
        names = tuple(output)
        out_fn = lambda z, c: jnp.stack([output_values(z, c, o) for o in names], -1)  # noqa: E731

    def batch_fn(masks: jax.Array) -> jax.Array:
        return out_fn(logits_fn(masked_inputs(x, base, cells, masks)), label)

    return Game(grid[0] * grid[1], batch_fn, chunk_size)


# ---------------------------------------------------------------------------------------------
# Exact computations by enumeration (small n; float64 on the host)
# ---------------------------------------------------------------------------------------------


def all_masks(num_players: int) -> np.ndarray:
    """Every coalition as a mask [2^n, n]; row ``code`` holds the bits of ``code``."""
    codes = np.arange(2**num_players)
    return ((codes[:, None] >> np.arange(num_players)) & 1).astype(bool)


def value_table(game: Game) -> np.ndarray:
    """v(S) for all 2^n coalitions, indexed by coalition code, as float64."""
    if game.num_players > MAX_EXACT_PLAYERS:
        raise ValueError(
            f"exact enumeration needs n <= {MAX_EXACT_PLAYERS}, got {game.num_players}"
        )
    return np.asarray(evaluate(game, jnp.asarray(all_masks(game.num_players))), np.float64)


def _num_players(table: np.ndarray) -> int:
    n = int(round(math.log2(len(table))))
    if 2**n != len(table):
        raise ValueError(f"table length {len(table)} is not a power of two")
    return n


def _popcount(codes: np.ndarray) -> np.ndarray:
    return np.bitwise_count(codes.astype(np.uint32)).astype(np.int64)


def shapley_values_exact(table: np.ndarray) -> np.ndarray:
    """Shapley values phi_i = sum_{S subset N\\i} |S|!(n-|S|-1)!/n! (v(S+i) - v(S)).

    Args:
      table: v(S) for all coalitions (see `value_table`).

    Returns:
      phi [n], float64.
    """
    table = np.asarray(table, np.float64)
    n = _num_players(table)
    codes = np.arange(2**n)
    sizes = _popcount(codes)
    fact = [math.factorial(k) for k in range(n + 1)]
    weight = np.array([fact[s] * fact[n - s - 1] / fact[n] if s < n else 0.0 for s in sizes])
    phi = np.zeros(n)
    for i in range(n):
        without = codes[(codes >> i) & 1 == 0]
        phi[i] = np.sum(weight[without] * (table[without | (1 << i)] - table[without]))
    return phi


def _pair_deltas(table: np.ndarray, n: int, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    codes = np.arange(2**n)
    rest = codes[((codes >> i) & 1 == 0) & ((codes >> j) & 1 == 0)]
    bi, bj = 1 << i, 1 << j
    delta = table[rest | bi | bj] - table[rest | bi] - table[rest | bj] + table[rest]
    return delta, _popcount(rest)


def interactions_exact(
    table: np.ndarray, *, return_abs: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Multi-order interactions I^(m)(i, j) for every pair and every order m = 0 .. n-2.

    Args:
      table: v(S) for all coalitions.
      return_abs: also return E_{|S| = m} |Delta v(i, j, S)| (disentanglement denominator).

    Returns:
      I [n, n, n-1], symmetric in (i, j), zero on the diagonal, float64 (and the mean
      absolute Delta v of the same shape when ``return_abs``).
    """
    table = np.asarray(table, np.float64)
    n = _num_players(table)
    out, out_abs = np.zeros((n, n, n - 1)), np.zeros((n, n, n - 1))
    for i in range(n):
        for j in range(i + 1, n):
            delta, sizes = _pair_deltas(table, n, i, j)
            counts = np.bincount(sizes, minlength=n - 1)
            out[i, j] = out[j, i] = np.bincount(sizes, delta, minlength=n - 1) / counts
            out_abs[i, j] = out_abs[j, i] = (
                np.bincount(sizes, np.abs(delta), minlength=n - 1) / counts
            )
    return (out, out_abs) if return_abs else out


def shapley_interaction_exact(table: np.ndarray) -> np.ndarray:
    """Shapley interaction index (Grabisch and Roubens 1999) for every pair.

    I_Shapley(i, j) = sum_{S subset N\\{i,j}} |S|!(n-|S|-2)!/(n-1)! Delta v(i, j, S),
    computed from the weights directly (not through `interactions_exact`).

    Returns:
      [n, n] symmetric, zero diagonal, float64.
    """
    table = np.asarray(table, np.float64)
    n = _num_players(table)
    fact = [math.factorial(k) for k in range(n + 1)]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            delta, sizes = _pair_deltas(table, n, i, j)
            weight = np.array([fact[s] * fact[n - s - 2] / fact[n - 1] for s in range(n - 1)])
            out[i, j] = out[j, i] = np.sum(weight[sizes] * delta)
    return out


def order_weights(orders: Sequence[int] | np.ndarray, num_players: int) -> np.ndarray:
    """w^(m) = (n - 1 - m) / (n (n - 1)), the weight of I^(m) in the decomposition."""
    m = np.asarray(orders, np.float64)
    n = num_players
    return (n - 1 - m) / (n * (n - 1))


class Decomposition(NamedTuple):
    """v(N) - v(empty) = sum_i mu_i + sum_m order_terms[m] (Ren et al., METHODS 2(a))."""

    total: float  # v(N) - v(empty)
    mu: np.ndarray  # [n] v({i}) - v(empty)
    order_terms: np.ndarray  # [n-1] sum over ordered pairs i != j of w^(m) I^(m)(i, j)
    residual: float  # total - sum(mu) - sum(order_terms)


def decomposition_exact(table: np.ndarray) -> Decomposition:
    """Decomposes v(N) - v(empty) into single players and w^(m)-weighted interactions.

    The identity v(N) - v(empty) = sum_i mu_i + sum_{i != j} sum_m w^(m) I^(m)(i, j) holds
    with ordered pairs; per player it reads phi_i = mu_i + sum_{j != i} sum_m w^(m) I^(m)(i, j).
    """
    table = np.asarray(table, np.float64)
    n = _num_players(table)
    mu = np.array([table[1 << i] - table[0] for i in range(n)])
    inter = interactions_exact(table)
    terms = order_weights(np.arange(n - 1), n) * inter.sum(axis=(0, 1))  # diagonal is 0
    total = float(table[-1] - table[0])
    return Decomposition(total, mu, terms, total - float(mu.sum()) - float(terms.sum()))


# ---------------------------------------------------------------------------------------------
# Sampling estimators (jittable; streamed in chunks)
# ---------------------------------------------------------------------------------------------


def neighbour_pairs(grid: tuple[int, int]) -> np.ndarray:
    """All unordered pairs (i < j) of cells that touch in the 8-neighbourhood, [K, 2]."""
    rows, cols = grid
    pairs = []
    for r in range(rows):
        for c in range(cols):
            for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < rows and 0 <= cc < cols:
                    a, b = r * cols + c, rr * cols + cc
                    pairs.append((min(a, b), max(a, b)))
    return np.array(sorted(pairs), np.int32)


def all_pairs(num_players: int) -> np.ndarray:
    """All unordered pairs (i < j), [n (n - 1) / 2, 2]."""
    i, j = np.triu_indices(num_players, k=1)
    return np.stack([i, j], axis=1).astype(np.int32)


def sample_pairs(
    key: jax.Array, grid: tuple[int, int], num_pairs: int, *, neighbours: bool = True
) -> jax.Array:
    """Distinct pairs drawn uniformly from the neighbouring (or all) cell pairs, [P, 2].

    The reference code samples ``pair_num`` neighbouring pairs per image without duplicates.
    """
    candidates = neighbour_pairs(grid) if neighbours else all_pairs(grid[0] * grid[1])
    if num_pairs > len(candidates):
        raise ValueError(f"num_pairs={num_pairs} exceeds the {len(candidates)} candidate pairs")
    idx = jax.random.choice(key, len(candidates), (num_pairs,), replace=False)
    return jnp.asarray(candidates)[idx]


def orders_from_ratios(ratios: Sequence[float], num_players: int) -> np.ndarray:
    """Orders m = int((n - 2) r) for ratios r = m / n, as in the reference code."""
    return np.array([int((num_players - 2) * r) for r in ratios], np.int32)


def sample_context(
    key: jax.Array, num_players: int, i: jax.Array, j: jax.Array, order: jax.Array
) -> jax.Array:
    """A uniformly random S subset N\\{i, j} with |S| = order, as a mask [n] bool."""
    u = jax.random.uniform(key, (num_players,))
    u = u.at[i].set(2.0).at[j].set(2.0)  # i and j rank last, never chosen
    ranks = jnp.argsort(jnp.argsort(u))
    return ranks < order


def interaction_deltas(
    game: Game,
    pairs: jax.Array,
    orders: jax.Array | np.ndarray,
    key: jax.Array,
    *,
    num_contexts: int,
) -> jax.Array:
    """Delta v(i, j, S) for sampled contexts S, [P, M, C].

    For every pair p, order m and context c, S is drawn uniformly (with replacement across
    c) from the subsets of N\\{i, j} of size m, with key ``fold_in(key, flat index)``; the
    four coalitions S+i+j, S+i, S+j, S are evaluated in one batch. Queries are streamed
    ``game.chunk_size // 4`` at a time, so memory is bounded by one chunk of inputs.

    Args:
      game: the game (n players).
      pairs: [P, 2] int.
      orders: [M] int, each in 0 .. n-2.
      key: PRNG key.
      num_contexts: C.

    Returns:
      Delta v [P, M, C], float32 ([K, P, M, C] for a game with K outputs).
    """
    n = game.num_players
    pairs = jnp.asarray(pairs, jnp.int32)
    orders = jnp.asarray(orders, jnp.int32)
    num_pairs, num_orders = pairs.shape[0], orders.shape[0]
    total = num_pairs * num_orders * num_contexts
    per_chunk = max(1, min(game.chunk_size // 4, total))
    num_chunks = -(-total // per_chunk)

    def query_masks(q: jax.Array) -> jax.Array:
        p, rest = jnp.divmod(q, num_orders * num_contexts)
        o = rest // num_contexts
        i, j = pairs[p, 0], pairs[p, 1]
        s = sample_context(jax.random.fold_in(key, q), n, i, j, orders[o])
        with_i, with_j = s.at[i].set(True), s.at[j].set(True)
        return jnp.stack([with_i.at[j].set(True), with_i, with_j, s])

    def chunk_deltas(c: jax.Array) -> jax.Array:
        q = jnp.minimum(c * per_chunk + jnp.arange(per_chunk), total - 1)
        masks = jax.vmap(query_masks)(q)  # [per_chunk, 4, n]
        v = game.batch_fn(masks.reshape(-1, n))
        v = v.reshape(per_chunk, 4, *v.shape[1:])
        return v[:, 0] - v[:, 1] - v[:, 2] + v[:, 3]

    deltas = jax.lax.map(chunk_deltas, jnp.arange(num_chunks))
    extra = deltas.shape[2:]
    deltas = deltas.reshape(-1, *extra)[:total].reshape(num_pairs, num_orders, num_contexts, *extra)
    return jnp.moveaxis(deltas, (0, 1, 2), (-3, -2, -1)) if extra else deltas


class InteractionEstimate(NamedTuple):
    """Monte-Carlo I^(m)(i, j) over C contexts per (pair, order)."""

    mean: jax.Array  # [..., P, M] the estimate of I^(m)(i, j)
    stderr: jax.Array  # [..., P, M] std(Delta v, ddof=1) / sqrt(C)
    mean_abs: jax.Array  # [..., P, M] mean |Delta v| (disentanglement denominator)


def summarize_deltas(deltas: jax.Array) -> InteractionEstimate:
    """Mean, standard error and mean absolute value over the last (context) axis."""
    c = deltas.shape[-1]
    std = jnp.std(deltas, axis=-1, ddof=1) if c > 1 else jnp.zeros(deltas.shape[:-1])
    return InteractionEstimate(
        jnp.mean(deltas, axis=-1), std / math.sqrt(c), jnp.mean(jnp.abs(deltas), axis=-1)
    )


def squared_mean_unbiased(samples: np.ndarray | jax.Array, axis: int = -1) -> np.ndarray:
    """Unbiased estimate of (E X)^2 from C >= 2 i.i.d. samples of X along ``axis``.

    The squared sample mean is biased upwards by Var X / C, a noise floor that is largest
    where X varies most across contexts. ``mean^2 - s^2 / C`` (s^2 the unbiased sample
    variance) equals the average of X_c X_c' over the C (C - 1) ordered pairs of distinct
    samples, a U-statistic whose expectation is (E X)^2 exactly. With X = Delta v(i, j, S)
    it estimates I^(m)(i, j)^2; with X = Delta v(i, j, S | x) - Delta v(i, j, S | x_adv) on
    shared contexts S it estimates the squared change (I(x) - I(x_adv))^2. Single values can
    be negative when the true mean is small next to the noise; keep them so that averages stay
    unbiased.

    Args:
      samples: i.i.d. samples along ``axis`` (float).
      axis: the sample (context) axis.

    Returns:
      The estimate, with ``axis`` removed (float64).
    """
    x = np.asarray(samples, np.float64)
    count = x.shape[axis]
    if count < 2:
        raise ValueError(f"squared_mean_unbiased needs >= 2 samples, got {count}")
    return x.mean(axis) ** 2 - x.var(axis, ddof=1) / count


def split_half_product(samples: np.ndarray | jax.Array, axis: int = -1) -> np.ndarray:
    """(mean of the first half) x (mean of the second half) of i.i.d. samples along ``axis``.

    The halves are independent, so the expectation is (E X)^2: an unbiased estimate of the
    squared mean with one split (`squared_mean_unbiased` averages over all pairs instead and
    has the smaller variance). An odd last sample is dropped.
    """
    x = np.moveaxis(np.asarray(samples, np.float64), axis, -1)
    half = x.shape[-1] // 2
    if half < 1:
        raise ValueError(f"split_half_product needs >= 2 samples, got {x.shape[-1]}")
    return x[..., :half].mean(-1) * x[..., half : 2 * half].mean(-1)


def interactions_sampled(
    game: Game,
    pairs: jax.Array,
    orders: jax.Array | np.ndarray,
    key: jax.Array,
    *,
    num_contexts: int,
) -> InteractionEstimate:
    """Sampling estimate of I^(m)(i, j) with standard errors (see `interaction_deltas`)."""
    return summarize_deltas(interaction_deltas(game, pairs, orders, key, num_contexts=num_contexts))


def shapley_interaction_sampled(
    game: Game, pairs: jax.Array, key: jax.Array, *, num_contexts: int
) -> tuple[jax.Array, jax.Array]:
    """Shapley interaction index as the mean of I^(m) over all orders m = 0 .. n-2.

    Uses I_Shapley(i, j) = (1 / (n - 1)) sum_m I^(m)(i, j); orders are sampled independently,
    so the standard error is sqrt(sum_m se_m^2) / (n - 1).

    Returns:
      (estimate [P], standard error [P]).
    """
    n = game.num_players
    est = interactions_sampled(game, pairs, np.arange(n - 1), key, num_contexts=num_contexts)
    return jnp.mean(est.mean, axis=-1), jnp.sqrt(jnp.sum(est.stderr**2, axis=-1)) / (n - 1)


def shapley_values_sampled(
    game: Game, key: jax.Array, *, num_permutations: int
) -> tuple[jax.Array, jax.Array]:
    """Shapley values by permutation sampling, with standard errors.

    Every permutation pi contributes the marginal v(Pre_pi(i) + i) - v(Pre_pi(i)) of each
    player; its n + 1 prefixes are evaluated in one batch, ``chunk_size // (n + 1)``
    permutations per model call. The marginals of one permutation sum to v(N) - v(empty),
    so the estimate is efficient exactly.

    Returns:
      (phi [n], standard error [n]).
    """
    n = game.num_players
    per_chunk = max(1, min(game.chunk_size // (n + 1), num_permutations))
    num_chunks = -(-num_permutations // per_chunk)
    steps = jnp.arange(n + 1)

    def marginals(k: jax.Array) -> tuple[jax.Array, jax.Array]:
        perm = jax.random.permutation(jax.random.fold_in(key, k), n)
        rank = jnp.argsort(perm)  # position of each player in the permutation
        return rank, rank[None, :] < steps[:, None]  # prefix masks [n + 1, n]

    def chunk_marginals(c: jax.Array) -> jax.Array:
        k = jnp.minimum(c * per_chunk + jnp.arange(per_chunk), num_permutations - 1)
        rank, masks = jax.vmap(marginals)(k)
        v = game.batch_fn(masks.reshape(-1, n)).reshape(per_chunk, n + 1)
        return jnp.take_along_axis(v, rank + 1, 1) - jnp.take_along_axis(v, rank, 1)

    contrib = jax.lax.map(chunk_marginals, jnp.arange(num_chunks)).reshape(-1, n)
    contrib = contrib[:num_permutations]
    se = jnp.std(contrib, axis=0, ddof=1) / math.sqrt(num_permutations)
    return jnp.mean(contrib, axis=0), se


# ---------------------------------------------------------------------------------------------
# The paper's quantities (host-side summaries of estimates over images and pairs)
# ---------------------------------------------------------------------------------------------


def mean_std_stderr(values: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, unbiased std and standard error over all but the last axis, each [M]."""
    flat = values.reshape(-1, values.shape[-1])
    count = flat.shape[0]
    std = flat.std(axis=0, ddof=1) if count > 1 else np.zeros(flat.shape[1])
    return {"mean": flat.mean(axis=0), "std": std, "stderr": std / math.sqrt(count)}


def interaction_strength(
    interactions: np.ndarray,
    orders: Sequence[int] | np.ndarray,
    num_players: int,
    *,
    weighted: bool = False,
) -> dict[str, np.ndarray]:
    """Interaction strength against the order: mean |I^(m)| over images and pairs.

    Args:
      interactions: I^(m) estimates [..., M] (leading axes: images, pairs).
      orders: the M orders.
      num_players: n.
      weighted: multiply by w^(m) = (n - 1 - m) / (n (n - 1)) (the paper's type-2 plot).

    Returns:
      {'mean', 'std' (unbiased, over images and pairs), 'stderr'}, each [M].
    """
    strength = np.abs(np.asarray(interactions, np.float64))
    if weighted:
        strength = strength * order_weights(orders, num_players)
    return mean_std_stderr(strength)


def attacking_utility(values_clean: np.ndarray, values_adv: np.ndarray) -> np.ndarray:
    """[v(N|x) - v(empty|x)] - [v(N|x_adv) - v(empty|x_adv)] from values at (empty, N) [..., 2]."""
    values_clean = np.asarray(values_clean, np.float64)
    values_adv = np.asarray(values_adv, np.float64)
    return (values_clean[..., 1] - values_clean[..., 0]) - (values_adv[..., 1] - values_adv[..., 0])


def attacking_utility_by_order(
    interactions_clean: np.ndarray,
    interactions_adv: np.ndarray,
    orders: Sequence[int] | np.ndarray,
    num_players: int,
) -> dict[str, np.ndarray]:
    """Order-m term of the attacking utility, sum_{i != j} w^(m) (I^(m)(i,j|x) - I^(m)(i,j|x_adv)).

    The sum over the n (n - 1) ordered pairs is n (n - 1) times the mean over all pairs, so
    the result estimates the decomposition term only when the pairs are all pairs or are
    drawn uniformly from all pairs (``analysis.pairs = 'random'``). Neighbouring pairs are
    not a uniform sample (their interactions are stronger than the average pair's), so their
    mean times n (n - 1) does not estimate it; the experiment then reports the exact terms on
    a coarse grid instead (`decomposition_exact`).

    Args:
      interactions_clean: I^(m) on x [..., M] (leading axes: images, pairs).
      interactions_adv: I^(m) on x_adv, same shape.
      orders: the M orders.
      num_players: n.

    Returns:
      {'mean', 'std', 'stderr'} [M] of the per-order term over images and pairs, and
      'abs_mean' [M]: the same with |I(x) - I(x_adv)| (how much each order changes).
    """
    diff = np.asarray(interactions_clean, np.float64) - np.asarray(interactions_adv, np.float64)
    scale = num_players * (num_players - 1) * order_weights(orders, num_players)
    out = mean_std_stderr(diff * scale)
    abs_stats = mean_std_stderr(np.abs(diff) * scale)
    out["abs_mean"], out["abs_stderr"] = abs_stats["mean"], abs_stats["stderr"]
    return out


def disentanglement_ratio(mean: np.ndarray, mean_abs: np.ndarray) -> np.ndarray:
    """Per order: mean_{images,pairs} |mean_S Delta v| / mean_{images,pairs} mean_S |Delta v|.

    1 when Delta v(i, j, S) has one sign across contexts S, near 0 when it cancels
    (``get_disentanglement`` in the reference code).

    Args:
      mean: I^(m) estimates [..., M]; mean_abs: mean_S |Delta v| [..., M].

    Returns:
      Ratio [M].
    """
    m = np.abs(np.asarray(mean, np.float64)).reshape(-1, np.shape(mean)[-1]).mean(0)
    a = np.asarray(mean_abs, np.float64).reshape(-1, np.shape(mean_abs)[-1]).mean(0)
    return m / np.maximum(a, 1e-30)


def order_bands(
    ratios: Sequence[float], *, bands: tuple[float, float] = DEFAULT_BANDS
) -> list[str]:
    """Band of each ratio m/n: 'low' in [0, low], 'middle' in (low, high), 'high' in [high, 1]."""
    low, high = bands
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"config key 'analysis.bands': need 0 <= low < high <= 1, got {bands}")
    return ["low" if r <= low else "high" if r >= high else "middle" for r in ratios]


def band_means(
    curve: Sequence[float], ratios: Sequence[float], *, bands: tuple[float, float] = DEFAULT_BANDS
) -> dict[str, float]:
    """Mean of ``curve`` over the orders of each band (NaN for an empty band)."""
    labels = np.array(order_bands(ratios, bands=bands))
    curve = np.asarray(curve, np.float64)
    return {
        b: float(curve[labels == b].mean()) if np.any(labels == b) else float("nan")
        for b in ("low", "middle", "high")
    }


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def plot_order_curves(
    path: str,
    ratios: Sequence[float],
    curves: dict[str, dict[str, np.ndarray] | np.ndarray],
    *,
    ylabel: str,
    title: str = "",
) -> str:
    """Curves against m/n; a dict curve {'mean', 'stderr'} is drawn with a +-1 SE band."""
    from advjax import plots

    means = {k: (v["mean"] if isinstance(v, dict) else v) for k, v in curves.items()}
    errors = {k: v["stderr"] for k, v in curves.items() if isinstance(v, dict) and "stderr" in v}
    return plots.line_plot(
        path, list(ratios), means, xlabel="order m/n", ylabel=ylabel, title=title, errors=errors
    )
