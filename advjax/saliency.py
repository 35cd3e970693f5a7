"""Gradient-based saliency maps: vanilla gradient, SmoothGrad (and its squared and VarGrad
forms), Integrated Gradients, simple interpretability metrics and PNG grids.

Every method sees the model as ``logits_fn(x) -> logits`` (batched, eval mode) and returns a
map with the shape of ``x``. Because predictions never depend on batch composition, the
per-example gradient of a per-example scalar is the gradient of its sum over the batch, so
one backward pass serves a whole batch. Samplers (SmoothGrad noise draws, IG interpolation
points) stream over ``chunk_size`` draws with ``lax.scan``: memory holds ``chunk_size x batch``
inputs at most, never ``num_samples x batch``.

References:
  Simonyan et al. 2014 (gradient maps); Smilkov et al. 2017 (SmoothGrad, SmoothGrad-squared);
  Adebayo et al. 2018 (VarGrad); Sundararajan et al. 2017 (Integrated Gradients, completeness);
  Noack et al. 2021 (SmoothGrad targets of an adversarially trained teacher).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LogitsFn = Callable[[jax.Array], jax.Array]

OUTPUTS = ("logit", "log_prob", "loss")
AGGREGATES = ("mean", "squared", "vargrad")
IG_RULES = ("riemann_left", "riemann_right", "riemann_middle", "trapezoid", "gauss_legendre")
BASELINES = ("zeros", "lower", "upper", "mean", "uniform")


def _check(value, allowed, name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: got {value!r}; allowed: {list(allowed)}")


def per_example_output(logits: jax.Array, y: jax.Array, *, output: str = "logit") -> jax.Array:
    """The per-example scalar a saliency map differentiates.

    Args:
      logits: [B, K] logits.
      y: [B] int class indices.
      output: 'logit' (z_y, as in Noack et al.), 'log_prob' (log softmax_y) or 'loss'
        (cross-entropy -log softmax_y).

    Returns:
      [B] values.
    """
    _check(output, OUTPUTS, "output")
    z_y = jnp.take_along_axis(logits, y[:, None].astype(jnp.int32), axis=1)[:, 0]
    if output == "logit":
        return z_y
    log_p = z_y - jax.nn.logsumexp(logits, axis=1)
    return log_p if output == "log_prob" else -log_p


def predicted_class(logits_fn: LogitsFn, x: jax.Array) -> jax.Array:
    """argmax_k z_k(x), the class a map explains when no label is given."""
    return jnp.argmax(logits_fn(x), axis=-1).astype(jnp.int32)


def gradient(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array | None = None, *, output: str = "logit"
) -> jax.Array:
    """Vanilla gradient map d output_b / d x_b for every example (Simonyan et al. 2014).

    Args:
      logits_fn: batched eval-mode model.
      x: [B, ...] inputs.
      y: [B] classes; None explains the predicted class.
      output: see `per_example_output`.

    Returns:
      [B, ...] gradients, the shape of ``x``.
    """
    if y is None:
        y = predicted_class(logits_fn, x)
    # Examples do not interact, so the gradient of the batch sum is the per-example gradient.
    return jax.grad(lambda xs: jnp.sum(per_example_output(logits_fn(xs), y, output=output)))(x)


def _noise(key: jax.Array, index: jax.Array, shape, dtype) -> jax.Array:
    # One key per draw index: the result does not depend on how draws are chunked.
    return jax.random.normal(jax.random.fold_in(key, index), shape, dtype)


def smoothgrad(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array | None,
    key: jax.Array,
    *,
    num_samples: int = 50,
    sigma: float = 0.15,
    chunk_size: int = 10,
    aggregate: str = "mean",
    include_clean: bool = False,
    clip: bool = True,
    bounds: tuple[float, float] = (0.0, 1.0),
    output: str = "logit",
) -> jax.Array:
    """SmoothGrad and its variants over ``num_samples`` Gaussian perturbations.

    With g_j = grad_x output(clip(x + n_j)), n_j ~ N(0, (sigma * (hi - lo))^2):
      'mean'    (SmoothGrad, Smilkov et al. 2017, eq. 3):  mean_j g_j
      'squared' (SmoothGrad-squared):                       mean_j g_j^2
      'vargrad' (Adebayo et al. 2018):                      mean_j g_j^2 - (mean_j g_j)^2
    Noack et al. add the clean gradient to the average (``include_clean=True``) and clip
    noisy inputs to the box (``clip=True``).

    Args:
      logits_fn: batched eval-mode model.
      x: [B, ...] inputs in ``bounds``.
      y: [B] classes or None (predicted class).
      key: PRNG key; draw j uses fold_in(key, j), so the map does not depend on chunk_size.
      num_samples: noisy draws.
      sigma: noise std relative to the input range hi - lo.
      chunk_size: draws evaluated at once (memory is chunk_size x B inputs).
      aggregate: 'mean', 'squared' or 'vargrad'.
      include_clean: also average the gradient at x itself.
      clip: clip noisy inputs to ``bounds``.
      bounds: input box (lo, hi).
      output: see `per_example_output`.

    Returns:
      [B, ...] map.
    """
    _check(aggregate, AGGREGATES, "aggregate")
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(
            f"num_samples and chunk_size must be >= 1, got {num_samples}, {chunk_size}"
        )
    if y is None:
        y = predicted_class(logits_fn, x)
    lo, hi = bounds
    std = sigma * (hi - lo)
    chunk_size = min(chunk_size, num_samples)
    num_chunks = math.ceil(num_samples / chunk_size)

    def grad_at(xs):
        return gradient(logits_fn, xs, y, output=output)

    # Moments are accumulated around the clean gradient: it makes VarGrad numerically
    # stable (shift invariance of the variance) and sigma = 0 exactly reproduces the gradient.
    g_clean = grad_at(x)

    def body(carry, chunk_index):
        s1, s2 = carry
        index = chunk_index * chunk_size + jnp.arange(chunk_size)
        noise = jax.vmap(lambda i: _noise(key, i, x.shape, x.dtype))(index)
        xs = x[None] + std * noise
        if clip:
            xs = jnp.clip(xs, lo, hi)
        d = jax.vmap(grad_at)(xs) - g_clean[None]
        w = (index < num_samples).astype(x.dtype).reshape((-1,) + (1,) * x.ndim)
        return (s1 + jnp.sum(w * d, axis=0), s2 + jnp.sum(w * d * d, axis=0)), None

    zeros = jnp.zeros_like(x)
    (s1, s2), _ = lax.scan(body, (zeros, zeros), jnp.arange(num_chunks))
    n = num_samples + int(include_clean)  # the clean draw contributes d = 0
    mean_d, mean_d2 = s1 / n, s2 / n
    if aggregate == "mean":
        return g_clean + mean_d
    if aggregate == "squared":
        # E[g^2] = g_c^2 + 2 g_c E[d] + E[d^2]
        return g_clean**2 + 2 * g_clean * mean_d + mean_d2
    return jnp.maximum(mean_d2 - mean_d**2, 0.0)


def quadrature(num_steps: int, rule: str = "gauss_legendre") -> tuple[np.ndarray, np.ndarray]:
    """Nodes alpha_k in [0, 1] and weights w_k with sum_k w_k h(alpha_k) ~ int_0^1 h.

    Args:
      num_steps: number of gradient evaluations.
      rule: 'riemann_left' | 'riemann_right' | 'riemann_middle' (weights 1/m),
        'trapezoid' (m nodes including both ends) or 'gauss_legendre' (exact for
        polynomials of degree 2m - 1).

    Returns:
      (alphas, weights), float64 numpy arrays of length num_steps.
    """
    _check(rule, IG_RULES, "rule")
    m = num_steps
    if m < 1 or (rule == "trapezoid" and m < 2):
        raise ValueError(f"num_steps too small for rule {rule!r}: {m}")
    k = np.arange(m, dtype=np.float64)
    if rule == "riemann_left":
        return k / m, np.full(m, 1.0 / m)
    if rule == "riemann_right":
        return (k + 1) / m, np.full(m, 1.0 / m)
    if rule == "riemann_middle":
        return (k + 0.5) / m, np.full(m, 1.0 / m)
    if rule == "trapezoid":
        w = np.full(m, 1.0 / (m - 1))
        w[[0, -1]] *= 0.5
        return k / (m - 1), w
    nodes, weights = np.polynomial.legendre.leggauss(m)
    return (nodes + 1.0) / 2.0, weights / 2.0


def make_baseline(
    baseline: str | float | jax.Array,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """The IG reference input x' for every example.

    Args:
      baseline: 'zeros'; 'lower' / 'upper' (the box corners); 'mean' (each image filled with
        its own per-channel mean); 'uniform' (uniform noise in the box, needs ``key``);
        a scalar fill value; or an array broadcastable to ``x``.
      x: [B, ...] inputs.
      key: PRNG key for 'uniform'.
      bounds: input box (lo, hi).

    Returns:
      [B, ...] baseline inputs.
    """
    lo, hi = bounds
    if isinstance(baseline, str):
        _check(baseline, BASELINES, "baseline")
        if baseline == "zeros":
            return jnp.zeros_like(x)
        if baseline == "lower":
            return jnp.full_like(x, lo)
        if baseline == "upper":
            return jnp.full_like(x, hi)
        if baseline == "mean":
            axes = tuple(range(1, x.ndim - 1)) if x.ndim > 2 else (1,)
            return jnp.broadcast_to(jnp.mean(x, axis=axes, keepdims=True), x.shape)
        if key is None:
            raise ValueError("baseline 'uniform' needs a PRNG key")
        return jax.random.uniform(key, x.shape, x.dtype, lo, hi)
    return jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)


def integrated_gradients(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array | None = None,
    *,
    baseline: str | float | jax.Array = "zeros",
    num_steps: int = 64,
    rule: str = "gauss_legendre",
    chunk_size: int = 16,
    key: jax.Array | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    output: str = "logit",
) -> jax.Array:
    """Integrated Gradients (Sundararajan et al. 2017, eq. 1) by quadrature.

    IG_i(x) = (x_i - x'_i) * int_0^1 d output(x' + a (x - x')) / d x_i da, so that
    sum_i IG_i(x) ~= output(x) - output(x') (completeness, their Proposition 1).

    Args:
      logits_fn: batched eval-mode model.
      x: [B, ...] inputs.
      y: [B] classes or None (predicted class at x).
      baseline: see `make_baseline`.
      num_steps: gradient evaluations along the path.
      rule: quadrature rule, see `quadrature`.
      chunk_size: path points evaluated at once.
      key: PRNG key for random baselines.
      bounds: input box.
      output: see `per_example_output`.

    Returns:
      [B, ...] attributions.
    """
    if y is None:
        y = predicted_class(logits_fn, x)
    x0 = make_baseline(baseline, x, key=key, bounds=bounds)
    alphas, weights = quadrature(num_steps, rule)
    chunk_size = max(1, min(chunk_size, num_steps))
    num_chunks = math.ceil(num_steps / chunk_size)
    pad = num_chunks * chunk_size - num_steps
    # Padded nodes get weight 0, so every chunk has the same static shape.
    alphas = np.concatenate([alphas, np.zeros(pad)]).reshape(num_chunks, chunk_size)
    weights = np.concatenate([weights, np.zeros(pad)]).reshape(num_chunks, chunk_size)
    delta = x - x0

    def body(acc, aw):
        a, w = (v.astype(x.dtype) for v in aw)
        xs = x0[None] + a.reshape((-1,) + (1,) * x.ndim) * delta[None]
        g = jax.vmap(lambda xi: gradient(logits_fn, xi, y, output=output))(xs)
        return acc + jnp.tensordot(w, g, axes=1), None

    avg_grad, _ = lax.scan(body, jnp.zeros_like(x), (jnp.asarray(alphas), jnp.asarray(weights)))
    return delta * avg_grad


def completeness_gap(
    logits_fn: LogitsFn,
    x: jax.Array,
    x0: jax.Array,
    y: jax.Array,
    attributions: jax.Array,
    *,
    output: str = "logit",
) -> tuple[jax.Array, jax.Array]:
    """(sum_i IG_i, output(x) - output(x')) per example, to check IG completeness."""
    diff = per_example_output(logits_fn(x), y, output=output) - per_example_output(
        logits_fn(x0), y, output=output
    )
    return jnp.sum(attributions.reshape(x.shape[0], -1), axis=1), diff


# ---------------------------------------------------------------------------------------
# Interpretability metrics.


def cosine_similarity(a: jax.Array, b: jax.Array, *, eps: float = 1e-12) -> jax.Array:
    """Per-example cosine between flattened maps: <a_b, b_b> / (|a_b| |b_b|); 0 if either is 0."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    num = jnp.sum(a * b, axis=1)
    # The floor sits inside the sqrt so gradients stay finite at a zero map.
    den = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=1) * jnp.sum(b * b, axis=1), eps * eps))
    return num / den


def foreground_mask(x: jax.Array, *, threshold: float = 0.5) -> jax.Array:
    """[B, H, W] boolean object mask: pixels whose channel mean exceeds ``threshold``."""
    return jnp.mean(x, axis=-1) > threshold


def foreground_mass(saliency: jax.Array, x: jax.Array, *, threshold: float = 0.5) -> jax.Array:
    """Share of |saliency| mass on the object (Noack et al.'s "gradients look like digits").

    Args:
      saliency: [B, H, W, C] maps.
      x: [B, H, W, C] inputs; foreground = `foreground_mask(x, threshold=threshold)`.
      threshold: foreground intensity threshold.

    Returns:
      [B] values in [0, 1]: sum_{fg} |s| / sum |s| (pixel mass summed over channels).
    """
    mass = jnp.sum(jnp.abs(saliency), axis=-1)
    fg = foreground_mask(x, threshold=threshold)
    total = jnp.sum(mass, axis=(1, 2))
    return jnp.sum(jnp.where(fg, mass, 0.0), axis=(1, 2)) / jnp.maximum(total, 1e-30)


# ---------------------------------------------------------------------------------------
# Dataset-level helpers and figures.


def map_in_batches(
    fn: Callable[..., jax.Array],
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    key: jax.Array | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """Applies a jitted ``fn(x, y[, key]) -> map`` over a dataset in fixed-shape batches.

    The last batch is padded by repetition so ``fn`` compiles once; batch i receives
    fold_in(key, i) when a key is given.

    Returns:
      numpy array with the leading dimension of ``x``.
    """
    from advjax.progress import progress_bar

    n = len(x)
    out = []
    starts = range(0, n, batch_size)
    for i, start in enumerate(progress_bar(starts, desc=progress, enabled=progress is not None)):
        idx = np.arange(start, start + batch_size) % n
        args = (jnp.asarray(x[idx]), jnp.asarray(y[idx]))
        if key is not None:
            args = args + (jax.random.fold_in(key, i),)
        out.append(np.asarray(fn(*args))[: min(batch_size, n - start)])
    return np.concatenate(out, axis=0)


def display_map(
    saliency: np.ndarray, *, signed: bool = True, percentile: float = 99.5
) -> np.ndarray:
    """Channel-reduced maps scaled for display.

    Signed maps are summed over channels and scaled to [-1, 1] by their ``percentile`` of
    |value|; unsigned maps use the channel sum of |value|, scaled to [0, 1].

    Args:
      saliency: [B, H, W, C] maps.
      signed: keep the sign.
      percentile: robust maximum, per example.

    Returns:
      [B, H, W] float numpy array.
    """
    s = np.asarray(saliency, dtype=np.float64)
    s = s.sum(-1) if signed else np.abs(s).sum(-1)
    scale = np.percentile(np.abs(s).reshape(len(s), -1), percentile, axis=1)
    s = s / np.maximum(scale, 1e-30)[:, None, None]
    return np.clip(s, -1.0 if signed else 0.0, 1.0)


def saliency_grid(
    path: str,
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    signed: bool = True,
    row_labels: Sequence[str] | None = None,
    title: str = "",
) -> str:
    """PNG grid: one row per example, the input then one column per named map.

    Signed maps use a diverging colormap centred at 0 (red positive, blue negative);
    unsigned maps a sequential one.

    Args:
      path: output PNG path.
      images: [B, H, W, C] inputs in [0, 1].
      maps: column title -> [B, H, W, C] saliency maps.
      signed: display mode, see `display_map`.
      row_labels: optional label per row.
      title: figure title.

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from advjax import plots

    images = np.asarray(images, dtype=np.float64)
    shown = {name: display_map(m, signed=signed) for name, m in maps.items()}
    rows, cols = len(images), 1 + len(shown)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows), squeeze=False)
    for r in range(rows):
        img = images[r]
        axes[r, 0].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        for c, m in enumerate(shown.values(), start=1):
            if signed:
                axes[r, c].imshow(m[r], cmap="bwr", vmin=-1, vmax=1)
            else:
                axes[r, c].imshow(m[r], cmap="inferno", vmin=0, vmax=1)
        for c in range(cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    for c, name in enumerate(["input", *shown], start=0):
        # Long run names wrap at underscores so neighbouring titles do not collide.
        axes[0, c].set_title(name.replace("_", "\n") if len(name) > 10 else name, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return plots.save(fig, path)
