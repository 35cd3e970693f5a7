"""Mutual-information estimators: plug-in, Gaussian, KSG and variational lower bounds.

Used by the information-theoretic analysis (Shi et al., arXiv 1906.02494; see
``advjax/analysis/information.py``) to estimate I(Y; Z) between labels and a layer's
representation on clean and adversarial inputs, and usable on any paired samples.

Estimators (all in nats):

* ``plugin_mi_table`` / ``plugin_mi``: discrete variables, I = sum p(a,b) log p(a,b)/(p(a)p(b)),
  exact on a probability table and on the empirical table of integer samples.
* ``gaussian_mi``: closed form for jointly Gaussian variables,
  I = (log det S_x + log det S_z - log det S) / 2, from (streamed) sample covariances.
* ``ksg_mi``: Kraskov, Stoegbauer and Grassberger (2004), estimator 1,
  I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_z + 1) >, max-norm neighbourhoods. Exact
  O(N^2) neighbour search streamed over query chunks, so memory is O(chunk_size * N).
* ``variational_mi``: lower bounds with a small flax critic f(x, z), trained by optax and
  evaluated on held-out samples: Donsker-Varadhan (MINE, Belghazi et al. 2018, with the
  moving-average gradient correction), NWJ (Nguyen, Wainwright and Jordan 2010) and InfoNCE
  (van den Oord et al. 2018; capped at log K for K samples per block). The bounds are
  functions of a K x K score matrix S_ij = f(x_i, z_j): diagonal entries are samples of the
  joint, off-diagonal entries of the product of marginals (Poole et al. 2019).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import digamma, logsumexp

BOUNDS = ("dv", "nwj", "infonce")
CRITICS = ("separable", "concat")


# --------------------------------------------------------------------------------------
# Streaming helper
# --------------------------------------------------------------------------------------


def chunked_map(fn: Callable[..., Any], *arrays: jax.Array, chunk_size: int) -> Any:
    """Applies ``fn`` to consecutive row chunks of ``arrays`` with ``lax.map`` and concatenates.

    The last chunk is padded by repeating the final row (static shapes), and padded rows are
    dropped from the output, so ``fn`` must act row-wise (row i of the output depends only
    on row i of the inputs and on closed-over constants).

    Args:
      fn: function of one chunk of each array, returning a pytree of arrays with the chunk
        as leading axis.
      *arrays: arrays sharing the leading (example) axis.
      chunk_size: rows per chunk; at most ``chunk_size`` rows are processed at once.

    Returns:
      The pytree ``fn`` would return on the full arrays.
    """
    n = arrays[0].shape[0]
    chunk = max(1, min(int(chunk_size), n))
    num_chunks = -(-n // chunk)
    pad = num_chunks * chunk - n

    def reshape(a):
        a = jnp.asarray(a)
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)
        return a.reshape((num_chunks, chunk) + a.shape[1:])

    out = jax.lax.map(lambda args: fn(*args), tuple(reshape(a) for a in arrays))
    return jax.tree_util.tree_map(lambda o: o.reshape((num_chunks * chunk,) + o.shape[2:])[:n], out)


def _as_2d(a: jax.Array) -> jax.Array:
    a = jnp.asarray(a)
    return a.reshape(a.shape[0], -1) if a.ndim != 1 else a[:, None]


# --------------------------------------------------------------------------------------
# Discrete plug-in estimator
# --------------------------------------------------------------------------------------


def plugin_mi_table(joint: jax.Array) -> jax.Array:
    """Mutual information of a joint probability (or count) table.

    I(A; B) = sum_ab p(a, b) log(p(a, b) / (p(a) p(b))) with 0 log 0 = 0; counts are
    normalised first.

    Args:
      joint: [num_a, num_b] non-negative table.

    Returns:
      Scalar mutual information in nats.
    """
    joint = jnp.asarray(joint)
    p = joint / jnp.sum(joint)
    pa = jnp.sum(p, axis=1, keepdims=True)
    pb = jnp.sum(p, axis=0, keepdims=True)
    safe = jnp.where(p > 0, p, 1.0)
    ratio = safe / jnp.where(p > 0, pa * pb, 1.0)
    return jnp.sum(jnp.where(p > 0, p * jnp.log(ratio), 0.0))


def joint_counts(a: jax.Array, b: jax.Array, *, num_a: int, num_b: int) -> jax.Array:
    """Contingency table of integer samples ``a`` in [0, num_a) and ``b`` in [0, num_b)."""
    a = jnp.asarray(a, jnp.int32).reshape(-1)
    b = jnp.asarray(b, jnp.int32).reshape(-1)
    return jnp.zeros((num_a, num_b), jnp.float32).at[a, b].add(1.0)


def plugin_mi(a: jax.Array, b: jax.Array, *, num_a: int, num_b: int) -> jax.Array:
    """Plug-in MI of paired integer samples: the MI of their empirical joint table."""
    return plugin_mi_table(joint_counts(a, b, num_a=num_a, num_b=num_b))


# --------------------------------------------------------------------------------------
# Gaussian estimator
# --------------------------------------------------------------------------------------


def gaussian_mi_from_covariance(cov: jax.Array, dim_x: int) -> jax.Array:
    """MI of a jointly Gaussian (X, Z) whose joint covariance is ``cov`` (X first, dim_x wide).

    I = (log det S_xx + log det S_zz - log det S) / 2.
    """
    cov = jnp.asarray(cov)
    _, logdet = jnp.linalg.slogdet(cov)
    _, logdet_x = jnp.linalg.slogdet(cov[:dim_x, :dim_x])
    _, logdet_z = jnp.linalg.slogdet(cov[dim_x:, dim_x:])
    return 0.5 * (logdet_x + logdet_z - logdet)


def gaussian_mi(
    x: jax.Array, z: jax.Array, *, chunk_size: int = 4096, ridge: float = 0.0
) -> jax.Array:
    """Gaussian MI estimate from samples: the closed form on the sample covariance.

    Exact for Gaussian data up to sampling error; for other data it is the MI of the
    Gaussian with the same second moments. The covariance is accumulated over chunks.

    Args:
      x: [n, ...] samples of X (flattened per row).
      z: [n, ...] samples of Z.
      chunk_size: rows accumulated at a time.
      ridge: added to the covariance diagonal (relative to its mean) for rank-deficient Z.

    Returns:
      Scalar MI estimate in nats.
    """
    x, z = _as_2d(x), _as_2d(z)
    joint = jnp.concatenate([x, z], axis=1).astype(jnp.result_type(x.dtype, jnp.float32))
    n, d = joint.shape
    mean = jnp.mean(joint, axis=0)
    centred = joint - mean
    chunk = max(1, min(chunk_size, n))
    num_chunks = -(-n // chunk)
    padded = jnp.concatenate([centred, jnp.zeros((num_chunks * chunk - n, d), joint.dtype)])

    def body(acc, block):
        return acc + block.T @ block, None

    scatter, _ = jax.lax.scan(
        body, jnp.zeros((d, d), joint.dtype), padded.reshape(num_chunks, chunk, d)
    )
    cov = scatter / (n - 1)
    cov = cov + ridge * jnp.mean(jnp.diag(cov)) * jnp.eye(d, dtype=cov.dtype)
    return gaussian_mi_from_covariance(cov, x.shape[1])


# --------------------------------------------------------------------------------------
# KSG estimator 1
# --------------------------------------------------------------------------------------


def ksg_mi(x: jax.Array, z: jax.Array, *, k: int = 3, chunk_size: int = 256) -> jax.Array:
    """Kraskov-Stoegbauer-Grassberger estimator 1 of I(X; Z) (Phys. Rev. E 69, 066138, eq. 8).

    For each sample i, eps_i is the max-norm distance to its k-th nearest neighbour in the
    joint space (distance = max of the max-norm distances in X and in Z); n_x(i) and n_z(i)
    count the other samples strictly closer than eps_i in X and in Z alone. Then
    I = psi(k) + psi(N) - mean_i [psi(n_x(i) + 1) + psi(n_z(i) + 1)].

    The estimator is not invariant to rescaling one variable relative to the other;
    standardise each variable first if their scales differ. Duplicate points (discrete data)
    make eps_i zero; add tiny noise in that case.

    Args:
      x: [N, ...] samples of X (rows flattened).
      z: [N, ...] samples of Z.
      k: number of neighbours.
      chunk_size: query rows per chunk; memory is O(chunk_size * N * (d_x + d_z)).

    Returns:
      Scalar MI estimate in nats.
    """
    x, z = _as_2d(x), _as_2d(z)
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"ksg_mi: k must be in [1, {n - 1}], got {k}")
    return _ksg_mi_jit(x, z, k=k, chunk_size=min(chunk_size, n))


def _kth_smallest(d: jax.Array, k: int) -> jax.Array:
    """k-th smallest entry of each row (ties counted with multiplicity).

    For the small k of KSG, k passes of argmin-and-remove cost O(k n) per row; XLA's
    sort-based top_k on CPU costs O(n log n) and dominates the estimator at large n.
    """
    if k > 8:
        return -jax.lax.top_k(-d, k)[0][:, -1]
    rows = jnp.arange(d.shape[0])
    for _ in range(k - 1):
        d = d.at[rows, jnp.argmin(d, axis=1)].set(jnp.inf)
    return jnp.min(d, axis=1)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _ksg_mi_jit(x: jax.Array, z: jax.Array, *, k: int, chunk_size: int) -> jax.Array:
    n = x.shape[0]
    index = jnp.arange(n)

    def rows(xq, zq, iq):
        dx = jnp.max(jnp.abs(xq[:, None, :] - x[None, :, :]), axis=-1)
        dz = jnp.max(jnp.abs(zq[:, None, :] - z[None, :, :]), axis=-1)
        self_mask = iq[:, None] == index[None, :]
        dx = jnp.where(self_mask, jnp.inf, dx)
        dz = jnp.where(self_mask, jnp.inf, dz)
        joint = jnp.maximum(dx, dz)
        eps = _kth_smallest(joint, k)
        n_x = jnp.sum(dx < eps[:, None], axis=1)
        n_z = jnp.sum(dz < eps[:, None], axis=1)
        return digamma(n_x + 1.0) + digamma(n_z + 1.0)

    psi_terms = chunked_map(rows, x, z, index, chunk_size=chunk_size)
    return digamma(float(k)) + digamma(float(n)) - jnp.mean(psi_terms)


# --------------------------------------------------------------------------------------
# Variational lower bounds with a flax critic
# --------------------------------------------------------------------------------------


class SeparableCritic(nn.Module):
    """f(x, z) = g(x) . h(z): two MLP embeddings; all K x K scores with one matmul."""

    hidden: int = 64
    embed_dim: int = 32
    depth: int = 2

    def _mlp(self, v: jax.Array, name: str) -> jax.Array:
        for i in range(self.depth):
            v = nn.relu(nn.Dense(self.hidden, name=f"{name}_hidden{i}")(v))
        return nn.Dense(self.embed_dim, name=f"{name}_out")(v)

    @nn.compact
    def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """Returns the [K, K] score matrix S_ij = f(x_i, z_j)."""
        return self._mlp(x, "g") @ self._mlp(z, "h").T


class ConcatCritic(nn.Module):
    """f(x, z) = MLP([x, z]) evaluated on all K x K pairs (more expressive, K^2 cost)."""

    hidden: int = 64
    depth: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
        k = x.shape[0]
        pairs = jnp.concatenate(
            [
                jnp.broadcast_to(x[:, None, :], (k, k, x.shape[1])),
                jnp.broadcast_to(z[None, :, :], (k, k, z.shape[1])),
            ],
            axis=-1,
        )
        h = pairs
        for _ in range(self.depth):
            h = nn.relu(nn.Dense(self.hidden)(h))
        return nn.Dense(1)(h)[..., 0]


def _off_diagonal_mask(k: int) -> jax.Array:
    return ~jnp.eye(k, dtype=bool)


def dv_bound(scores: jax.Array) -> jax.Array:
    """Donsker-Varadhan bound E_p[f] - log E_{p x q}[e^f] from a K x K score matrix."""
    k = scores.shape[0]
    off = jnp.where(_off_diagonal_mask(k), scores, -jnp.inf)
    return jnp.mean(jnp.diag(scores)) - (logsumexp(off) - math.log(k * (k - 1)))


def nwj_bound(scores: jax.Array) -> jax.Array:
    """NWJ bound E_p[f] - e^{-1} E_{p x q}[e^f] from a K x K score matrix."""
    k = scores.shape[0]
    mask = _off_diagonal_mask(k)
    marg = jnp.sum(jnp.where(mask, jnp.exp(scores - 1.0), 0.0)) / (k * (k - 1))
    return jnp.mean(jnp.diag(scores)) - marg


def infonce_bound(scores: jax.Array) -> jax.Array:
    """InfoNCE bound mean_i [S_ii - log mean_j exp S_ij] (<= log K) from a K x K matrix."""
    k = scores.shape[0]
    return jnp.mean(jnp.diag(scores) - logsumexp(scores, axis=1)) + math.log(k)


BOUND_FNS = {"dv": dv_bound, "nwj": nwj_bound, "infonce": infonce_bound}


def make_critic(
    name: str = "separable", *, hidden: int = 64, embed_dim: int = 32, depth: int = 2
) -> nn.Module:
    """The critic module named ``name`` ('separable' or 'concat') with ``depth`` hidden layers.

    ``depth = 0`` with 'separable' is the bilinear critic f(x, z) = (A x + a) . (B z + b),
    the least prone to overfitting on small samples.
    """
    if name == "separable":
        return SeparableCritic(hidden=hidden, embed_dim=embed_dim, depth=depth)
    if name == "concat":
        return ConcatCritic(hidden=hidden, depth=max(depth, 1))
    raise ValueError(f"critic: got {name!r}; allowed: {list(CRITICS)}")


def fit_critic(
    key: jax.Array,
    x: jax.Array,
    z: jax.Array,
    *,
    bound: str = "infonce",
    critic: nn.Module | None = None,
    num_steps: int = 500,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    ema_decay: float = 0.99,
) -> dict:
    """Trains a critic to maximise a variational MI bound on minibatches of (x, z).

    For 'dv' the gradient of log E[e^f] uses a moving-average denominator (MINE's bias
    correction); 'nwj' and 'infonce' are unbiased in the minibatch and trained directly.
    The whole loop is one ``lax.scan``, compiled once per shape.

    Args:
      key: PRNG key (initialisation and minibatch sampling).
      x: [n, dx] samples of X.
      z: [n, dz] samples of Z, paired row-wise with x.
      bound: 'dv', 'nwj' or 'infonce'.
      critic: flax module returning a [K, K] score matrix; default `SeparableCritic`.
      num_steps: optimiser steps.
      batch_size: K, samples per minibatch.
      learning_rate: Adam learning rate.
      ema_decay: moving-average decay for the DV gradient correction.

    Returns:
      The trained critic variables.
    """
    if bound not in BOUND_FNS:
        raise ValueError(f"bound: got {bound!r}; allowed: {list(BOUNDS)}")
    critic = critic or SeparableCritic()
    x, z = _as_2d(x).astype(jnp.float32), _as_2d(z).astype(jnp.float32)
    batch_size = min(batch_size, x.shape[0])
    return _fit_critic_jit(
        key,
        x,
        z,
        critic=critic,
        bound=bound,
        num_steps=num_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        ema_decay=ema_decay,
    )


@jax.jit(
    static_argnames=("critic", "bound", "num_steps", "batch_size", "learning_rate", "ema_decay")
)
def _fit_critic_jit(key, x, z, *, critic, bound, num_steps, batch_size, learning_rate, ema_decay):
    n = x.shape[0]
    init_key, data_key = jax.random.split(key)
    params = critic.init(init_key, x[:batch_size], z[:batch_size])
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)
    mask = _off_diagonal_mask(batch_size)

    def objective(p, xb, zb, log_ema):
        scores = critic.apply(p, xb, zb)
        if bound == "dv":
            off = jnp.where(mask, scores, -jnp.inf)
            log_marg = logsumexp(off) - math.log(batch_size * (batch_size - 1))
            # MINE: grad log E[e^f] ~ grad E[e^f] / EMA(E[e^f]); kept in the log domain so
            # that a drifting critic offset cannot overflow.
            ratio = jnp.exp(log_marg - jax.lax.stop_gradient(log_ema))
            return -(jnp.mean(jnp.diag(scores)) - ratio), log_marg
        return -BOUND_FNS[bound](scores), jnp.zeros(())

    def step(carry, i):
        p, s, log_ema = carry
        idx = jax.random.choice(jax.random.fold_in(data_key, i), n, (batch_size,), replace=False)
        if bound == "dv":
            # The first step uses its own minibatch mean as the denominator.
            first = objective(p, x[idx], z[idx], jnp.zeros(()))[1]
            log_ema = jnp.where(i == 0, first, log_ema)
        (_, log_marg), grads = jax.value_and_grad(objective, has_aux=True)(
            p, x[idx], z[idx], log_ema
        )
        log_ema = jnp.logaddexp(math.log(ema_decay) + log_ema, math.log(1.0 - ema_decay) + log_marg)
        updates, s = optimizer.update(grads, s, p)
        return (optax.apply_updates(p, updates), s, log_ema), None

    (params, _, _), _ = jax.lax.scan(
        step, (params, opt_state, jnp.zeros(())), jnp.arange(num_steps)
    )
    return params


def evaluate_bound(
    critic: nn.Module,
    params: dict,
    x: jax.Array,
    z: jax.Array,
    *,
    bound: str = "infonce",
    block_size: int = 128,
) -> jax.Array:
    """Mean of a variational bound over disjoint K-sample blocks of held-out (x, z).

    Streams over blocks (``lax.map``), so memory is O(block_size^2). Rows beyond the last
    full block are dropped.
    """
    x, z = _as_2d(x).astype(jnp.float32), _as_2d(z).astype(jnp.float32)
    k = min(block_size, x.shape[0])
    num_blocks = x.shape[0] // k
    return _evaluate_bound_jit(
        params,
        x[: num_blocks * k].reshape(num_blocks, k, -1),
        z[: num_blocks * k].reshape(num_blocks, k, -1),
        critic=critic,
        bound=bound,
    )


@functools.partial(jax.jit, static_argnames=("critic", "bound"))
def _evaluate_bound_jit(params, xb, zb, *, critic, bound):
    fn = BOUND_FNS[bound]
    return jnp.mean(jax.lax.map(lambda b: fn(critic.apply(params, b[0], b[1])), (xb, zb)))


def variational_mi(
    key: jax.Array,
    x: jax.Array,
    z: jax.Array,
    *,
    bound: str = "infonce",
    critic: str | nn.Module = "separable",
    hidden: int = 64,
    embed_dim: int = 32,
    depth: int = 2,
    num_steps: int = 500,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    holdout_fraction: float = 0.5,
) -> jax.Array:
    """Variational lower bound on I(X; Z): train a critic on one part, evaluate on the rest.

    Evaluating on held-out pairs keeps the estimate a lower bound in expectation (a critic
    overfit to its training pairs would overstate the MI). InfoNCE never exceeds
    log(batch_size).

    Args:
      key: PRNG key.
      x: [n, ...] samples of X (for discrete labels pass one-hot vectors).
      z: [n, ...] samples of Z.
      bound: 'dv' (MINE), 'nwj' or 'infonce'.
      critic: 'separable', 'concat' or a flax module returning [K, K] scores.
      hidden: critic hidden width.
      embed_dim: separable critic embedding width.
      depth: hidden layers of the critic's MLPs.
      num_steps: optimiser steps.
      batch_size: K for training and for evaluation blocks.
      learning_rate: Adam learning rate.
      holdout_fraction: fraction of rows kept for evaluation.

    Returns:
      Scalar MI lower-bound estimate in nats.
    """
    x, z = _as_2d(x), _as_2d(z)
    n = x.shape[0]
    perm_key, fit_key = jax.random.split(key)
    perm = jax.random.permutation(perm_key, n)
    n_eval = max(2, int(round(holdout_fraction * n)))
    eval_idx, train_idx = perm[:n_eval], perm[n_eval:]
    module = (
        make_critic(critic, hidden=hidden, embed_dim=embed_dim, depth=depth)
        if isinstance(critic, str)
        else critic
    )
    params = fit_critic(
        fit_key,
        x[train_idx],
        z[train_idx],
        bound=bound,
        critic=module,
        num_steps=num_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    return evaluate_bound(
        module, params, x[eval_idx], z[eval_idx], bound=bound, block_size=batch_size
    )


def one_hot_labels(y: jax.Array | np.ndarray, num_classes: int) -> jax.Array:
    """Float one-hot encoding, the form in which discrete labels enter a critic."""
    return jax.nn.one_hot(jnp.asarray(y), num_classes, dtype=jnp.float32)
