"""Core versus spurious features: reliance under adversarial training.

Moayeri, Banihashem, Feizi 2022, "Explicit Tradeoffs between Adversarial and Natural
Distributional Robustness" (arXiv 2209.07592).

Theory (linear regression on Gaussian data with disjoint core and spurious features, the
setting the paper's abstract names): closed-form second moments, the adversarially optimal
linear predictor for each l_p threat model over a sweep of radii (via
`advjax.analysis.tradeoff.minimize_adversarial_risk`), the spurious-reliance share of a
predictor and its error when the spurious correlation is flipped or removed at test time.
Only the abstract of the paper was available: the data model (``CoreSpuriousModel``) and
the reliance metric (`spurious_reliance`) are advjax's reconstruction, chosen to be
consistent with the abstract's claims, not the paper's own section-3 model or theorems.

Empirical metrics for image classifiers: accuracy under foreground-only / background-only
Gaussian noise and the relative foreground sensitivity (RFS) of RIVAL10, the background gap
of ImageNet-9 (accuracy on same minus random backgrounds) and worst-group accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advjax.analysis import tradeoff
from advjax.compile import jit

# ---------------------------------------------------------------------------------------
# Linear-regression theory.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CoreSpuriousModel:
    """Gaussian regression data with disjoint core and spurious feature sets.

    advjax's reconstruction of the setting in the abstract of Moayeri et al. 2022 (the
    paper's own model and theorems were not available):
    ``y ~ N(0, 1)``; core features ``x_c = scale_core * (y 1 + noise_core n_c)``
    (``d_core`` of them); spurious features
    ``x_s = scale_spurious * (spurious_sign * y 1 + noise_spurious n_s)`` (``d_spurious``),
    with ``n ~ N(0, I)``. Core features are the less noisy ones; the scale carries no
    information but changes the norm penalty an adversary imposes. ``spurious_sign`` is 1 in
    training and -1 (flipped) or 0 (removed) in a shifted test domain.
    """

    d_core: int = 1
    d_spurious: int = 1
    scale_core: float = 1.0
    scale_spurious: float = 1.0
    noise_core: float = 0.5
    noise_spurious: float = 1.0
    spurious_sign: float = 1.0

    @property
    def dim(self) -> int:
        return self.d_core + self.d_spurious

    def shifted(self, spurious_sign: float) -> CoreSpuriousModel:
        """The same model with the spurious correlation set to ``spurious_sign``."""
        return dataclasses.replace(self, spurious_sign=float(spurious_sign))

    def scales(self) -> np.ndarray:
        return np.concatenate(
            [np.full(self.d_core, self.scale_core), np.full(self.d_spurious, self.scale_spurious)]
        )

    def moments(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(E[x x^T], E[x y], E[y^2])``.

        ``E[x y] = c = scale * m`` with ``m = 1`` on core and ``spurious_sign`` on spurious
        coordinates, and ``E[x x^T] = c c^T + diag(scale^2 noise^2)``.
        """
        scale = self.scales()
        sign = np.concatenate([np.ones(self.d_core), np.full(self.d_spurious, self.spurious_sign)])
        noise = np.concatenate(
            [np.full(self.d_core, self.noise_core), np.full(self.d_spurious, self.noise_spurious)]
        )
        c = scale * sign
        cov = np.outer(c, c) + np.diag((scale * noise) ** 2)
        return cov.astype(np.float64), c.astype(np.float64), 1.0


def spurious_reliance(w: jax.Array, model: CoreSpuriousModel) -> jax.Array:
    """Scale-adjusted share of weight on spurious features (advjax's reconstruction; the
    paper's exact reliance metric was not available).

    ``rho(w) = sum_s |w_s| lambda_s / (sum_c |w_c| lambda_c + sum_s |w_s| lambda_s)``: the
    share of the prediction's signal ``w_i lambda_i y`` that comes from spurious coordinates
    (``lambda`` = feature scale). 0 = core only, 1 = spurious only.

    Args:
      w: weights ``[..., d_core + d_spurious]`` (core first).
      model: the data model (its scales).

    Returns:
      ``rho`` over the leading axes.
    """
    contrib = jnp.abs(w) * jnp.asarray(model.scales(), jnp.float32)
    spur = jnp.sum(contrib[..., model.d_core :], axis=-1)
    total = jnp.sum(contrib, axis=-1)
    return spur / jnp.where(total > 0, total, 1.0)


def ridge_path_weights(model: CoreSpuriousModel, ridge: float) -> np.ndarray:
    """The ridge solution ``(E[x x^T] + ridge I)^{-1} E[x y]`` of the model.

    Every minimiser of the l_2 adversarial risk ``R(w) = s^2 + 2 sqrt(2/pi) eps ||w|| s +
    eps^2 ||w||^2`` (``s^2 = E(y - w^T x)^2``) lies on this path: setting the gradient to
    zero gives ``(E[x x^T] w - E[x y]) A + w B = 0`` with ``A = 1 + sqrt(2/pi) eps ||w|| / s``
    and ``B = (sqrt(2/pi) eps s + eps^2 ||w||) / ||w||``, i.e. ridge ``B / A >= 0``, which
    grows with ``eps``.
    """
    cov, c, _ = model.moments()
    return np.linalg.solve(cov + float(ridge) * np.eye(model.dim), c)


def l2_reliance_direction(model: CoreSpuriousModel) -> str:
    """Closed-form direction in which l_2 adversarial training moves `spurious_reliance`.

    On the ridge path (`ridge_path_weights`), ``E[x x^T] = c c^T + D`` with
    ``D = diag(lambda_i^2 sigma_i^2)`` gives ``w ∝ (D + ridge I)^{-1} c`` (Sherman-Morrison),
    so coordinate ``i`` contributes ``|w_i| lambda_i ∝ lambda_i^2 / (lambda_i^2 sigma_i^2 +
    ridge)``. The spurious share then rises with the ridge iff the spurious features' noise
    variance exceeds the core features': ``lambda_s sigma_s > lambda_c sigma_c``.

    Returns:
      ``'rises'``, ``'falls'`` or ``'flat'``.
    """
    s = model.scale_spurious * model.noise_spurious
    c = model.scale_core * model.noise_core
    if np.isclose(s, c):
        return "flat"
    return "rises" if s > c else "falls"


def shifted_mse(
    w: jax.Array,
    model: CoreSpuriousModel,
    *,
    spurious_sign: float,
    eps: float = 0.0,
    norm: str = "l2",
) -> jax.Array:
    """Population (adversarial) squared error of ``w^T x`` on a shifted test domain.

    Args:
      w: weights ``[d]``.
      model: training model.
      spurious_sign: 1 (same correlation), 0 (removed) or -1 (flipped).
      eps: test-time adversarial radius (0 = natural error).
      norm: test-time threat model when ``eps > 0``.

    Returns:
      ``E (y - w^T x)^2`` (or its adversarial version) on the shifted distribution.
    """
    cov, c, vy = model.shifted(spurious_sign).moments()
    return tradeoff.gaussian_adversarial_risk(
        jnp.asarray(w, jnp.float32),
        cov_xx=jnp.asarray(cov, jnp.float32),
        cov_xy=jnp.asarray(c, jnp.float32),
        var_y=vy,
        norm=norm,
        eps=eps,
    )


def reliance_sweep(
    model: CoreSpuriousModel,
    *,
    eps_grid: Sequence[float],
    norms: Sequence[str] = tradeoff.NORMS,
    num_steps: int = 6000,
    learning_rate: float = 0.05,
) -> dict[str, dict[str, list[float]]]:
    """Adversarially optimal predictors, their reliance and shifted-domain errors.

    For each threat model, minimises the population adversarial risk over ``eps_grid``
    (the setting of Moayeri et al. 2022, on the reconstructed model) and evaluates it.

    Returns:
      ``{norm: {"eps", "weights", "reliance", "mse_same", "mse_removed", "mse_flipped",
      "adv_risk"}}`` as lists (JSON-ready).
    """
    cov, c, vy = model.moments()
    out: dict[str, dict[str, list]] = {}
    for norm in norms:
        weights = tradeoff.minimize_adversarial_risk(
            cov_xx=cov,
            cov_xy=c,
            var_y=vy,
            norm=norm,
            eps_grid=eps_grid,
            num_steps=num_steps,
            learning_rate=learning_rate,
        )
        rows: dict[str, list] = {"eps": [float(e) for e in eps_grid], "weights": weights.tolist()}
        rows["reliance"] = np.asarray(spurious_reliance(weights, model)).tolist()
        for name, sign in (("mse_same", 1.0), ("mse_removed", 0.0), ("mse_flipped", -1.0)):
            rows[name] = [float(shifted_mse(w, model, spurious_sign=sign)) for w in weights]
        rows["adv_risk"] = [
            float(
                tradeoff.gaussian_adversarial_risk(
                    w, cov_xx=jnp.asarray(cov), cov_xy=jnp.asarray(c), var_y=vy, norm=norm, eps=e
                )
            )
            for w, e in zip(weights, eps_grid, strict=True)
        ]
        out[norm] = rows
    return out


def core_only_adversarial_risk(
    model: CoreSpuriousModel,
    *,
    norm: str,
    eps_grid: Sequence[float],
    num_steps: int = 6000,
    learning_rate: float = 0.05,
) -> list[float]:
    """Minimal population adversarial risk of a predictor that uses the core features only.

    The minimiser of `tradeoff.gaussian_adversarial_risk` restricted to the core block of
    the moments (spurious weights fixed at 0), per radius. Compared with the risk of the
    unrestricted minimiser (``reliance_sweep``'s ``adv_risk``) it measures how much a
    spurious correlation that persists at test time lowers the adversarial risk.
    """
    cov, c, vy = model.moments()
    k = model.d_core
    weights = tradeoff.minimize_adversarial_risk(
        cov_xx=cov[:k, :k],
        cov_xy=c[:k],
        var_y=vy,
        norm=norm,
        eps_grid=eps_grid,
        num_steps=num_steps,
        learning_rate=learning_rate,
    )
    return [
        float(
            tradeoff.gaussian_adversarial_risk(
                w,
                cov_xx=jnp.asarray(cov[:k, :k]),
                cov_xy=jnp.asarray(c[:k]),
                var_y=vy,
                norm=norm,
                eps=e,
            )
        )
        for w, e in zip(weights, eps_grid, strict=True)
    ]


# ---------------------------------------------------------------------------------------
# Image metrics: RFS (RIVAL10), BG-gap (ImageNet-9), worst-group accuracy (Waterbirds).
# ---------------------------------------------------------------------------------------


def relative_foreground_sensitivity(a_fg: float | jax.Array, a_bg: float | jax.Array):
    """RIVAL10 relative foreground sensitivity.

    ``RFS = (a_bg - a_fg) / (2 min(abar, 1 - abar))`` with ``abar = (a_fg + a_bg) / 2``, where
    ``a_fg`` / ``a_bg`` are accuracies under foreground-only / background-only noise. In
    [-1, 1]; +1 = only foreground noise hurts (the model reads the object), -1 = only
    background noise hurts.
    """
    a_fg = jnp.asarray(a_fg, jnp.float32)
    a_bg = jnp.asarray(a_bg, jnp.float32)
    abar = 0.5 * (a_fg + a_bg)
    denom = 2.0 * jnp.minimum(abar, 1.0 - abar)
    return jnp.where(denom > 0, (a_bg - a_fg) / jnp.where(denom > 0, denom, 1.0), 0.0)


def region_noise(
    x: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    sigma: float,
    region: str,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Adds Gaussian noise of std ``sigma`` inside one region only, then clips to ``bounds``.

    Args:
      x: images ``[n, H, W, C]``.
      mask: foreground masks ``[n, H, W]`` or ``[n, H, W, 1]`` (1 = object).
      key: PRNG key.
      sigma: noise standard deviation.
      region: ``'fg'`` (noise on the object) or ``'bg'`` (noise on the background).
      bounds: input box.

    Returns:
      Noisy images, same shape as ``x``.
    """
    if region not in ("fg", "bg"):
        raise ValueError(f"region must be 'fg' or 'bg', got {region!r}")
    m = mask.astype(x.dtype)
    if m.ndim == x.ndim - 1:
        m = m[..., None]
    sel = m if region == "fg" else 1.0 - m
    noise = sigma * jax.random.normal(key, x.shape, x.dtype)
    return jnp.clip(x + sel * noise, *bounds)


def make_predictors(
    logits_fn: Callable[[jax.Array], jax.Array], bounds: tuple[float, float] = (0.0, 1.0)
):
    """Jitted clean and region-noise arg-max predictors of one model.

    Noise level and region are traced arguments, so a sweep over them reuses one compiled
    function (per chunk shape). Build them once per model and pass them as ``predictors``
    to `predict` and `noise_accuracies`.

    Returns:
      ``(clean(x), noisy(x, mask, key, sigma, on_foreground))``.
    """

    @jit
    def clean(x):
        return jnp.argmax(logits_fn(x), axis=-1)

    @jit
    def noisy(x, mask, key, sigma, on_foreground):
        m = mask.astype(x.dtype)[..., None]
        sel = jnp.where(on_foreground, m, 1.0 - m)
        noise = sigma * jax.random.normal(key, x.shape, x.dtype)
        return jnp.argmax(logits_fn(jnp.clip(x + sel * noise, *bounds)), axis=-1)

    return clean, noisy


def _chunks(n: int, chunk_size: int):
    return range(0, n + (-n) % chunk_size, chunk_size)


def _pad(a: np.ndarray, chunk_size: int) -> np.ndarray:
    pad = (-a.shape[0]) % chunk_size
    return np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a


def noise_accuracies(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    key: jax.Array,
    *,
    sigma: float,
    bounds: tuple[float, float] = (0.0, 1.0),
    chunk_size: int = 256,
    predictors=None,
) -> dict[str, float]:
    """Clean, foreground-noise and background-noise accuracies and their RFS (RIVAL10).

    The noisy inputs are those of `region_noise` (Gaussian noise of std ``sigma`` inside one
    region, clipped to ``bounds``); chunk ``c`` draws its noise from ``fold_in(key, c)``.

    Args:
      logits_fn: eval-mode model ``x -> logits``.
      x, y, mask: images ``[n, H, W, C]``, integer labels, foreground masks ``[n, H, W]``.
      key: PRNG key.
      sigma: Gaussian noise std.
      bounds: input box.
      chunk_size: images per compiled call (shapes stay static: the last chunk is padded).
      predictors: `make_predictors` of this model and ``bounds`` (built here if None).

    Returns:
      ``{"clean", "fg_noise", "bg_noise", "rfs"}``.
    """
    clean_fn, noisy_fn = predictors or make_predictors(logits_fn, tuple(map(float, bounds)))
    n = x.shape[0]
    xp, mp = _pad(np.asarray(x), chunk_size), _pad(np.asarray(mask), chunk_size)
    preds = {"clean": [], "fg_noise": [], "bg_noise": []}
    for c, s in enumerate(_chunks(n, chunk_size)):
        xc, mc = xp[s : s + chunk_size], mp[s : s + chunk_size]
        preds["clean"].append(np.asarray(clean_fn(xc)))
        for name, fg in (("fg_noise", True), ("bg_noise", False)):
            k = jax.random.fold_in(jax.random.fold_in(key, int(fg)), c)
            preds[name].append(np.asarray(noisy_fn(xc, mc, k, jnp.float32(sigma), fg)))
    out = {k: float(np.mean(np.concatenate(v)[:n] == np.asarray(y))) for k, v in preds.items()}
    out["rfs"] = float(relative_foreground_sensitivity(out["fg_noise"], out["bg_noise"]))
    return out


def predict(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: np.ndarray,
    *,
    chunk_size: int = 256,
    predictors=None,
) -> np.ndarray:
    """Arg-max predictions of ``logits_fn`` over ``x`` in fixed-size chunks.

    Pass ``predictors`` (`make_predictors`) to reuse one compiled function across calls.
    """
    clean_fn, _ = predictors or make_predictors(logits_fn)
    n = x.shape[0]
    xp = _pad(np.asarray(x), chunk_size)
    return np.concatenate(
        [np.asarray(clean_fn(xp[s : s + chunk_size])) for s in _chunks(n, chunk_size)]
    )[:n]


def background_gap(acc_same: float, acc_random: float) -> float:
    """ImageNet-9 BG-gap: accuracy on class-matched minus random backgrounds."""
    return float(acc_same) - float(acc_random)


def worst_group_accuracy(
    correct: np.ndarray, groups: np.ndarray, *, min_count: int = 1
) -> tuple[float, dict[int, float]]:
    """Minimum over groups of the group accuracy (Sagawa et al.; Waterbirds).

    Args:
      correct: per-example 0/1 correctness ``[n]``.
      groups: per-example group ids ``[n]`` (e.g. ``label * K + background_class``).
      min_count: groups with fewer examples are ignored.

    Returns:
      ``(worst, {group: accuracy})``.
    """
    correct = np.asarray(correct, float)
    groups = np.asarray(groups)
    per = {}
    for g in np.unique(groups):
        sel = groups == g
        if sel.sum() >= min_count:
            per[int(g)] = float(correct[sel].mean())
    return (min(per.values()) if per else float("nan")), per
