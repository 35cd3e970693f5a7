"""The between-class KL metric, its robust / non-robust split and input Fisher information.

Shi, Liao, Chen, Liu, Cheng and Feng, "Disentangling non-robust and robust components in
a performance metric" (arXiv 1906.02494). With p_x = softmax(f(x)) the model's predictive
distribution:

* **Metric.** M = E_{(x,y),(x',y'): y != y'} KL(p_x || p_x'), the expected KL between the
  predictions for two examples of different classes (`between_class_kl`). The authors'
  code adds 1e-10 inside the logarithms; advjax computes the KL exactly from log-softmax.
* **Fisher information of the prediction with respect to the input.**
  F(x) = sum_c p_c grad log p_c grad log p_c^T = J^T (diag(p) - p p^T) J, J = d logits / dx
  (C x D). F is never formed as D x D: with B = diag(sqrt p) - p sqrt(p)^T one has
  diag(p) - p p^T = B B^T, so F = G G^T with G = J^T B (D x C, columns sqrt(p_c) grad
  log p_c), and the non-zero spectrum of F is that of the C x C Gram matrix
  G^T G = B^T (J J^T) B. ||F||_F, trace F and lambda_max(F) come from its eigenvalues
  (`fisher_statistics`); `fisher_top_eigenpair` finds the top eigenpair matrix-free by
  power iteration with one JVP and one VJP per step. Second-order identity:
  KL(p_x || p_{x+delta}) = delta^T F(x) delta / 2 + O(||delta||^3).
* **Robust / non-robust split: two advjax proxies.** The paper's formula for the split is
  not available (only its abstract and code, which compute M and ||F||_F but no split), so
  both readings below are advjax's own, not the paper's metric.
  1. *Merging adversary* (`pairwise_robust_decomposition`, the primary reading): for a
     between-class pair, perturb both inputs inside B_eps to make the predictions agree;
     R_pair = E_{y != y'} min_{delta, delta'} KL(p_{x+delta} || p_{x'+delta'}) and
     N_pair = M - R_pair, with 0 <= R_pair <= M by construction. Only separation that
     survives every perturbation counts as robust.
  2. *Worst-case inputs* (`robust_decomposition`): every x is replaced by its KL-maximising
     neighbour x* = argmax_{x + delta in B_eps(x) and the input box} KL(p_x || p_{x+delta}),
     found by projected gradient ascent on that KL from a uniform random start
     (`kl_worst_case`). R_eps = E_{y != y'} KL(p_{x*} || p_{x'*}) is the between-class KL
     on these inputs and N_eps = M - R_eps. N_eps is not constrained to be non-negative: a
     KL-maximising perturbation can leave a prediction confidently wrong, and confidently
     wrong predictions still differ between classes.
  Alongside: the local worst-case KL, E_x max_{delta in B_eps} KL(p_x || p_{x+delta}), and
  its second-order Fisher approximation eps^2 lambda_max(F(x)) / 2 (exact to second order
  for l_2 when the box constraint is inactive).
* **Information identity (exact).** Over independent x, x' (all pairs),
  E_{x,x'} KL(p_x || p_x') = I(X; Y_hat) + sum_c pbar_c (log pbar_c - E_x log p_x(c)),
  with pbar = E_x p_x and I(X; Y_hat) = E_x KL(p_x || pbar): the mutual information between
  input and predicted label plus a non-negative (Jensen) log-dispersion term
  (`kl_identity`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax.analysis.mutual_information import chunked_map
from advjax.attacks.ascent import ascent

LogitsFn = Callable[[jax.Array], jax.Array]


# --------------------------------------------------------------------------------------
# Predictive distributions and the between-class KL metric
# --------------------------------------------------------------------------------------


def categorical_kl(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """KL(softmax(p) || softmax(q)) along the last axis, exact through log-softmax."""
    logp = jax.nn.log_softmax(logits_p, axis=-1)
    logq = jax.nn.log_softmax(logits_q, axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def batched_logits(logits_fn: LogitsFn, x: jax.Array, *, chunk_size: int = 256) -> jax.Array:
    """``logits_fn`` over ``x`` in chunks of ``chunk_size`` (bounded memory)."""
    return chunked_map(logits_fn, jnp.asarray(x), chunk_size=chunk_size)


def _pair_terms(logits: jax.Array):
    """Row-streamed pieces of KL(p_i || p_j) = negent_i - sum_c p_i(c) log p_j(c)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    negent = jnp.sum(p * logp, axis=-1)
    return logp, p, negent


def between_class_kl(
    logits: jax.Array,
    labels: jax.Array,
    *,
    chunk_size: int = 256,
    key: jax.Array | None = None,
    num_pairs: int | None = None,
) -> jax.Array:
    """The metric M = E_{y_i != y_j} KL(p_i || p_j) (Shi et al., main_acc_kl.py::sample_kl).

    Without ``num_pairs`` the mean runs over all ordered pairs of examples with different
    labels, streamed over chunks of rows (memory O(chunk_size * N)). With ``num_pairs`` it
    is a Monte-Carlo estimate over that many uniformly sampled pairs, same-label pairs
    rejected.

    Args:
      logits: [N, C] logits of the evaluation set.
      labels: [N] integer labels.
      chunk_size: rows per chunk for the exact mean.
      key: PRNG key, required with ``num_pairs``.
      num_pairs: number of sampled pairs (None = exact over all pairs).

    Returns:
      Scalar M in nats.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    logp, p, negent = _pair_terms(logits)
    if num_pairs is not None:
        if key is None:
            raise ValueError("between_class_kl: num_pairs needs a PRNG key")
        n = logits.shape[0]
        ki, kj = jax.random.split(key)
        i = jax.random.randint(ki, (num_pairs,), 0, n)
        j = jax.random.randint(kj, (num_pairs,), 0, n)
        valid = labels[i] != labels[j]

        def pair_kl(ij):
            a, b = ij
            return negent[a] - jnp.sum(p[a] * logp[b], axis=-1)

        kl = chunked_map(lambda a, b: pair_kl((a, b)), i, j, chunk_size=max(chunk_size, 1024))
        return jnp.sum(jnp.where(valid, kl, 0.0)) / jnp.maximum(jnp.sum(valid), 1)

    def rows(p_rows, negent_rows, y_rows):
        kl = negent_rows[:, None] - p_rows @ logp.T
        mask = y_rows[:, None] != labels[None, :]
        return jnp.sum(jnp.where(mask, kl, 0.0), axis=1), jnp.sum(mask, axis=1)

    sums, counts = chunked_map(rows, p, negent, labels, chunk_size=chunk_size)
    return jnp.sum(sums) / jnp.maximum(jnp.sum(counts), 1)


def mean_pairwise_kl(logits: jax.Array, *, chunk_size: int = 256) -> jax.Array:
    """E_{x,x'} KL(p_x || p_x') over all ordered pairs (x' independent of x, i = j included)."""
    logp, p, negent = _pair_terms(jnp.asarray(logits))

    def rows(p_rows, negent_rows):
        return jnp.mean(negent_rows[:, None] - p_rows @ logp.T, axis=1)

    return jnp.mean(chunked_map(rows, p, negent, chunk_size=chunk_size))


def kl_identity(logits: jax.Array, *, chunk_size: int = 256) -> dict[str, jax.Array]:
    """The exact decomposition of the mean pairwise KL into information and dispersion.

    E_{x,x'} KL(p_x || p_x') = I(X; Y_hat) + sum_c pbar_c (log pbar_c - E_x log p_x(c)),
    with pbar = E_x p_x and I(X; Y_hat) = E_x KL(p_x || pbar) (x uniform over the rows).

    Args:
      logits: [N, C] logits.
      chunk_size: rows per chunk for the directly computed left-hand side.

    Returns:
      ``mean_pairwise_kl`` (left-hand side, computed pair by pair), ``mutual_information``
      I(X; Y_hat) and ``log_dispersion`` (the second term, >= 0 by Jensen).
    """
    logits = jnp.asarray(logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    pbar = jnp.mean(p, axis=0)
    log_pbar = jnp.log(pbar)
    mi = jnp.mean(jnp.sum(p * (logp - log_pbar), axis=-1))
    dispersion = jnp.sum(pbar * (log_pbar - jnp.mean(logp, axis=0)))
    return {
        "mean_pairwise_kl": mean_pairwise_kl(logits, chunk_size=chunk_size),
        "mutual_information": mi,
        "log_dispersion": dispersion,
    }


# --------------------------------------------------------------------------------------
# Fisher information with respect to the input
# --------------------------------------------------------------------------------------


def _single(logits_fn: LogitsFn) -> Callable[[jax.Array], jax.Array]:
    """Per-example view of a batched ``logits_fn``: x of shape input_shape -> [C]."""
    return lambda xi: logits_fn(xi[None])[0]


def _fisher_factor_sqrt(p: jax.Array) -> jax.Array:
    """B with B B^T = diag(p) - p p^T, B = diag(sqrt p) - p sqrt(p)^T (uses sum p = 1)."""
    sqrt_p = jnp.sqrt(p)
    return jnp.diag(sqrt_p) - p[:, None] * sqrt_p[None, :]


def fisher_gram(logits_fn: LogitsFn, xi: jax.Array) -> jax.Array:
    """C x C Gram matrix G^T G = B^T J J^T B sharing F(x)'s non-zero eigenvalues.

    Args:
      logits_fn: batched model, x -> logits.
      xi: one input (no batch axis).

    Returns:
      [C, C] symmetric PSD matrix.
    """
    f = _single(logits_fn)
    logits = f(xi)
    jac = jax.jacrev(f)(xi).reshape(logits.shape[0], -1)
    b = _fisher_factor_sqrt(jax.nn.softmax(logits))
    return b.T @ (jac @ jac.T) @ b


def fisher_matrix(logits_fn: LogitsFn, xi: jax.Array) -> jax.Array:
    """Dense D x D F(x) = J^T (diag(p) - p p^T) J, for tests on small inputs only."""
    f = _single(logits_fn)
    logits = f(xi)
    jac = jax.jacrev(f)(xi).reshape(logits.shape[0], -1)
    p = jax.nn.softmax(logits)
    return jac.T @ (jnp.diag(p) - jnp.outer(p, p)) @ jac


def fisher_statistics(
    logits_fn: LogitsFn, x: jax.Array, *, chunk_size: int = 64
) -> dict[str, jax.Array]:
    """Per-example ||F(x)||_F, trace F(x), lambda_max(F(x)) from the C x C Gram form.

    Costs C backward passes per example (the logit Jacobian) and a C x C eigensolve;
    memory O(chunk_size * C * D). This is the quantity Shi et al. average over test
    examples (fisher_reg_visual.py::visual_fisher) without forming D x D matrices.

    Args:
      logits_fn: batched model, x -> logits.
      x: [N, ...] inputs.
      chunk_size: examples per chunk.

    Returns:
      ``frobenius``, ``trace`` and ``lambda_max``, each [N].
    """

    def rows(x_rows):
        eig = jnp.clip(
            jax.vmap(lambda xi: jnp.linalg.eigvalsh(fisher_gram(logits_fn, xi)))(x_rows), 0.0
        )
        return {
            "frobenius": jnp.sqrt(jnp.sum(eig**2, axis=-1)),
            "trace": jnp.sum(eig, axis=-1),
            "lambda_max": eig[:, -1],
        }

    return chunked_map(rows, jnp.asarray(x), chunk_size=chunk_size)


def fisher_vector_product(logits_fn: LogitsFn, xi: jax.Array, v: jax.Array) -> jax.Array:
    """F(x) v = J^T (diag(p) - p p^T) J v with one JVP and one VJP (no D x D matrix)."""
    f = _single(logits_fn)
    logits, jv = jax.jvp(f, (xi,), (v,))
    p = jax.nn.softmax(logits)
    u = p * jv - p * jnp.sum(p * jv)
    _, vjp = jax.vjp(f, xi)
    return vjp(u)[0]


def fisher_top_eigenpair(
    logits_fn: LogitsFn,
    x: jax.Array,
    key: jax.Array,
    *,
    num_iters: int = 50,
    chunk_size: int = 64,
) -> tuple[jax.Array, jax.Array]:
    """Top eigenvalue and unit eigenvector of F(x) per example by power iteration.

    Each iteration applies F through a linearisation of the model at x (JVP) and its
    transpose (VJP); the Jacobian is linearised once per example. The eigenvalue is the
    Rayleigh quotient of the final iterate. Convergence is geometric in
    lambda_2 / lambda_1; F has rank <= C - 1.

    Args:
      logits_fn: batched model, x -> logits.
      x: [N, ...] inputs.
      key: PRNG key for the random starts (one per example).
      num_iters: power iterations.
      chunk_size: examples per chunk.

    Returns:
      (lambda_max [N], eigenvector [N, ...] with unit l_2 norm).
    """
    x = jnp.asarray(x)
    keys = jax.random.split(key, x.shape[0])
    f = _single(logits_fn)

    def one(xi, ki):
        logits, f_jvp = jax.linearize(f, xi)
        f_vjp = jax.linear_transpose(f_jvp, xi)
        p = jax.nn.softmax(logits)

        def apply_f(v):
            jv = f_jvp(v)
            return f_vjp(p * jv - p * jnp.sum(p * jv))[0]

        def normalise(v):
            return v / jnp.maximum(jnp.sqrt(jnp.sum(v * v)), 1e-30)

        v0 = normalise(jax.random.normal(ki, xi.shape, xi.dtype))
        v = jax.lax.fori_loop(0, num_iters, lambda _, v: normalise(apply_f(v)), v0)
        return jnp.sum(v * apply_f(v)), v

    return chunked_map(jax.vmap(one), x, keys, chunk_size=chunk_size)


# --------------------------------------------------------------------------------------
# Worst-case KL inside a threat model and the robust / non-robust decomposition
# --------------------------------------------------------------------------------------


def _kl_ascent(logits_fn, x, keys, *, norm, eps, step_size, num_steps, bounds):
    """Projected KL ascent with one PRNG key per example (see `kl_worst_case`)."""
    result = ascent(
        logits_fn,
        x,
        jnp.zeros((x.shape[0],), jnp.int32),  # the KL needs no labels
        keys,
        norm=norm,
        eps=eps,
        step_size=step_size,
        num_steps=num_steps,
        loss="kl",
        start="uniform",
        keep="best",
        bounds=bounds,
    )
    return x + result.delta, result.loss


def kl_worst_case(
    logits_fn: LogitsFn,
    x: jax.Array,
    key: jax.Array,
    *,
    norm: str = "linf",
    eps: float,
    step_size: float,
    num_steps: int,
    bounds: tuple[float, float] = (0.0, 1.0),
    chunk_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """argmax over x' in B_eps(x) and the box of KL(p_x || p_x'), by projected ascent.

    The gradient of the KL vanishes at x' = x (its minimum), so the ascent starts from a
    uniform random point of the ball (Shi et al.'s LinfFisherSolver: uniform start, signed
    steps for l_inf, projection to the ball and the box each step). The iterate with the
    largest KL seen (including the last) is returned per example: the ascent core
    (`advjax.attacks.ascent.ascent`) with ``loss='kl'``, ``start='uniform'``,
    ``keep='best'``. One key per example is split from ``key``, so the result does not
    depend on ``chunk_size``.

    Args:
      logits_fn: batched model, x -> logits.
      x: [B, ...] clean inputs in the box.
      key: PRNG key.
      norm: 'linf', 'l2' or 'l1' (`advjax.geometry`).
      eps: ball radius.
      step_size: ascent step length in ``norm``.
      num_steps: ascent steps.
      bounds: input box.
      chunk_size: examples per chunk (None = the whole batch at once).

    Returns:
      (x_worst [B, ...], KL(p_x || p_{x_worst}) [B]).
    """
    x = jnp.asarray(x)
    keys = jax.random.split(key, x.shape[0])
    kwargs = dict(norm=norm, eps=eps, step_size=step_size, num_steps=num_steps, bounds=bounds)
    if chunk_size is None:
        return _kl_ascent(logits_fn, x, keys, **kwargs)
    return chunked_map(
        lambda xr, kr: _kl_ascent(logits_fn, xr, kr, **kwargs), x, keys, chunk_size=chunk_size
    )


def robust_decomposition(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str = "linf",
    eps: float,
    step_size: float,
    num_steps: int,
    bounds: tuple[float, float] = (0.0, 1.0),
    chunk_size: int = 256,
) -> dict[str, Any]:
    """advjax's second proxy split M = R_eps + N_eps, R_eps the between-class KL on
    KL-maximising inputs (not the paper's formula, which is not available).

    See the module docstring for the definitions. Also returns the local worst-case KL
    E_x max_{delta in B_eps} KL(p_x || p_{x+delta}).

    Args:
      logits_fn: batched model, x -> logits.
      x: [N, ...] evaluation inputs.
      y: [N] labels.
      key: PRNG key for the random starts.
      norm: threat-model norm.
      eps: threat-model radius.
      step_size: ascent step.
      num_steps: ascent steps.
      bounds: input box.
      chunk_size: examples per chunk.

    Returns:
      Dict with scalars ``M``, ``R``, ``N``, ``local_worst_kl`` and the arrays
      ``x_worst`` [N, ...] and ``local_kl`` [N].
    """
    logits = batched_logits(logits_fn, x, chunk_size=chunk_size)
    x_worst, local_kl = kl_worst_case(
        logits_fn,
        x,
        key,
        norm=norm,
        eps=eps,
        step_size=step_size,
        num_steps=num_steps,
        bounds=bounds,
        chunk_size=chunk_size,
    )
    worst_logits = batched_logits(logits_fn, x_worst, chunk_size=chunk_size)
    m = between_class_kl(logits, y, chunk_size=chunk_size)
    r = between_class_kl(worst_logits, y, chunk_size=chunk_size)
    return {
        "M": m,
        "R": r,
        "N": m - r,
        "local_worst_kl": jnp.mean(local_kl),
        "x_worst": x_worst,
        "local_kl": local_kl,
    }


def sample_between_class_pairs(
    y: jax.Array, key: jax.Array, *, num_pairs: int, oversample: int = 8
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``num_pairs`` uniformly drawn ordered pairs (i, j) with y_i != y_j (static shape).

    Draws ``oversample * num_pairs`` candidates and keeps the first valid ones; ``valid``
    flags the rare slots left without a between-class pair.

    Returns:
      (i, j, valid), each [num_pairs].
    """
    y = jnp.asarray(y)
    n = y.shape[0]
    ki, kj = jax.random.split(key)
    ci = jax.random.randint(ki, (oversample * num_pairs,), 0, n)
    cj = jax.random.randint(kj, (oversample * num_pairs,), 0, n)
    ok = y[ci] != y[cj]
    order = jnp.argsort(~ok, stable=True)[:num_pairs]
    return ci[order], cj[order], ok[order]


def _merge_descent(logits_fn, xa, xb, *, norm, eps, step_size, num_steps, bounds):
    """min over (da, db) in the threat model of KL(p(xa + da) || p(xb + db)), per pair.

    Ascent on the negative pairwise KL of the concatenated batch ``[xa; xb]`` (each half
    perturbed inside its own ball), from the clean points (``start='none'``), keeping
    the best iterate; both rows of a pair carry the pair's value, so they keep the same
    iterate. Returns (clean KL, minimised KL) per pair.
    """
    m = xa.shape[0]

    def pair_kl(logits):
        return categorical_kl(logits[:m], logits[m:])

    def neg_pair_kl(logits, labels, clean_logits):
        del labels, clean_logits
        kl = pair_kl(logits)
        return -jnp.concatenate([kl, kl])

    x = jnp.concatenate([xa, xb])
    result = ascent(
        logits_fn,
        x,
        jnp.zeros((2 * m,), jnp.int32),
        jax.random.key(0),  # unused: the start is deterministic
        norm=norm,
        eps=eps,
        step_size=step_size,
        num_steps=num_steps,
        loss=neg_pair_kl,
        start="none",
        keep="best",
        bounds=bounds,
    )
    return pair_kl(logits_fn(x)), -result.loss[:m]


def pairwise_robust_decomposition(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    num_pairs: int,
    norm: str = "linf",
    eps: float,
    step_size: float,
    num_steps: int,
    bounds: tuple[float, float] = (0.0, 1.0),
    chunk_size: int = 128,
) -> dict[str, jax.Array]:
    """advjax's primary proxy split M = R_pair + N_pair: the separation that survives a
    merging adversary (not the paper's formula, which is not available).

    For a between-class pair (x, x'), an adversary perturbs both inside B_eps to make the
    predictions agree, minimising KL(p(x + delta) || p(x' + delta')) by projected descent
    from delta = delta' = 0 (the ascent core on the negative KL; the best iterate is kept,
    so 0 <= R <= M per pair):
    R_pair = E_{y != y'} min_{delta, delta'} KL(p(x + delta) || p(x' + delta')) and
    N_pair = M_pair - R_pair, the part of the class separation that perturbations inside
    B_eps can erase. Unlike `robust_decomposition`, a confidently wrong worst case does not
    count as separation here. Estimated on ``num_pairs`` sampled pairs.

    Args:
      logits_fn: batched model, x -> logits.
      x: [N, ...] inputs.
      y: [N] labels.
      key: PRNG key for the pair sample.
      num_pairs: sampled between-class pairs.
      norm: threat-model norm.
      eps: threat-model radius (for each of the two inputs).
      step_size: descent step.
      num_steps: descent steps.
      bounds: input box.
      chunk_size: pairs per chunk.

    Returns:
      ``M_pair``, ``R_pair``, ``N_pair`` (scalars over the valid pairs), the standard
      errors over pairs ``R_pair_sem`` and ``N_pair_sem`` (the sampling error of the pair
      sample, for intervals) and ``num_valid_pairs``.
    """
    x = jnp.asarray(x)
    i, j, valid = sample_between_class_pairs(y, key, num_pairs=num_pairs)

    def rows(xa, xb):
        return _merge_descent(
            logits_fn,
            xa,
            xb,
            norm=norm,
            eps=eps,
            step_size=step_size,
            num_steps=num_steps,
            bounds=bounds,
        )

    clean, merged = chunked_map(rows, x[i], x[j], chunk_size=chunk_size)
    count = jnp.maximum(jnp.sum(valid), 1)
    m = jnp.sum(jnp.where(valid, clean, 0.0)) / count
    r = jnp.sum(jnp.where(valid, merged, 0.0)) / count

    def standard_error(values, mean):
        var = jnp.sum(jnp.where(valid, (values - mean) ** 2, 0.0)) / jnp.maximum(count - 1, 1)
        return jnp.sqrt(var / count)

    return {
        "M_pair": m,
        "R_pair": r,
        "N_pair": m - r,
        "R_pair_sem": standard_error(merged, r),
        "N_pair_sem": standard_error(clean - merged, m - r),
        "num_valid_pairs": jnp.sum(valid),
    }


def fisher_local_kl(lambda_max: jax.Array, *, eps: float) -> jax.Array:
    """Second-order l_2 approximation eps^2 lambda_max(F(x)) / 2 of the local worst-case KL."""
    return 0.5 * eps**2 * jnp.asarray(lambda_max)


# --------------------------------------------------------------------------------------
# Layer representations (for I(Y; Z))
# --------------------------------------------------------------------------------------


def _flatten_intermediates(tree: Any, prefix: str = "") -> dict[str, jax.Array]:
    out: dict[str, jax.Array] = {}
    for name, value in tree.items():
        path = f"{prefix}/{name}" if prefix else name
        if name == "__call__":
            out[prefix or "__call__"] = value[0] if isinstance(value, tuple) else value
        elif isinstance(value, dict) or hasattr(value, "items"):
            out.update(_flatten_intermediates(value, path))
    return out


def layer_names(module: Any, variables: Any, x: jax.Array) -> list[str]:
    """Names of the submodules whose outputs ``layer_representation`` can return, in call order."""
    _, state = module.apply(
        variables, x[:1], train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    flat = _flatten_intermediates(state["intermediates"])
    return [k for k in flat if k != "__call__"]


def layer_representation(
    module: Any, variables: Any, x: jax.Array, *, layer: str = "auto", chunk_size: int = 256
) -> jax.Array:
    """Output of a named submodule of a flax model, flattened per example.

    ``layer='auto'`` picks the last submodule output before the final one (for the CNNs,
    the penultimate dense layer's pre-activation). Eval mode; streamed over chunks.

    Args:
      module: flax linen module (called as ``module.apply(variables, x, train=False)``).
      variables: its variables.
      x: [N, ...] inputs.
      layer: submodule path such as 'Dense_0', or 'auto'.
      chunk_size: examples per chunk.

    Returns:
      [N, d] representation.
    """
    x = jnp.asarray(x)
    names = layer_names(module, variables, x)
    if layer == "auto":
        if len(names) < 2:
            raise ValueError("layer_representation: model has no hidden submodule to read")
        layer = names[-2]
    elif layer not in names:
        raise ValueError(f"config key 'analysis.layer': got {layer!r}; allowed: {names}")

    def rows(x_rows):
        _, state = module.apply(
            variables, x_rows, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
        z = _flatten_intermediates(state["intermediates"])[layer]
        return z.reshape(z.shape[0], -1)

    return chunked_map(rows, x, chunk_size=chunk_size)


def summarize(values: dict[str, Any]) -> dict[str, float]:
    """Scalar entries of a result dict as Python floats (for JSON)."""
    return {k: float(np.asarray(v)) for k, v in values.items() if np.ndim(np.asarray(v)) == 0}
