"""Interpretation regularisation (IR) of Noack et al. (2021): train the input gradient of the
true-class logit to point like a target saliency map and to stay small.

    g_b  = grad_x z_{y_b}(x_b)                         (signed, from the training forward)
    cs   = 1 - mean_b cos(vec g_b, vec t_b)            (direction term)
    gm   = ||G||_F = sqrt(sum_b ||g_b||^2)             (magnitude of the whole minibatch)
    L_IR = CE(f(x), y) + lambda_cs * cs + lambda_gm * gm

The loss differentiates a gradient, so its parameter gradient is second order (``jax.vjp``
inside ``jax.grad``). The 'norm_match' variant replaces the direction term by
lambda_match * || |G| - T ||_F (the authors' ``norm_im``).

Targets t are computed once from a teacher (by default SmoothGrad of an l_2-adversarially
trained network: 50 draws, sigma 0.15, plus the clean gradient), cached as an ``.npz`` file
beside the run, and reach the loss as ``batch["target"]`` through
``Objective.extra_train_arrays``. Optional processing follows the authors' dataset code:
thresholding (keep only values outside mean +- k std of each map) and permuting a fraction
of each map's entries (a control).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advjax import saliency
from advjax.compile import jit
from advjax.models import as_model

VARIANTS = ("cosine", "norm_match")
TARGET_METHODS = ("smoothgrad", "gradient")

TARGET_DEFAULTS: dict[str, Any] = {
    "path": "",
    "teacher_workdir": "",
    "method": "smoothgrad",
    "num_samples": 50,
    "sigma": 0.15,
    "include_clean": True,
    "chunk_size": 10,
    "batch_size": 250,
    "seed": 0,
    "threshold_std": 0.0,
    "permute_fraction": 0.0,
    "permute_seed": 0,
}


def safe_norm(v: jax.Array) -> jax.Array:
    """sqrt(sum v^2) with a zero (not NaN) gradient at v = 0."""
    sq = jnp.sum(v * v)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def logits_and_input_gradient(
    params: Any, forward: Any, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, jax.Array, Any]:
    """One train-mode forward giving the logits, grad_x z_y per example and the model state.

    The gradient comes from the same forward as the cross-entropy (same dropout mask), and
    stays differentiable in ``params`` for the second-order update.

    Returns:
      (logits [B, K], input gradients [B, ...], new model state).
    """

    def f(xs):
        logits, new_state = forward.train(params, xs)
        return logits, new_state

    logits, vjp_fn, new_state = jax.vjp(f, x, has_aux=True)
    (grads,) = vjp_fn(jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype))
    return logits, grads, new_state


def ir_loss(
    params: Any,
    forward: Any,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    carry: Any = None,
    *,
    lambda_cs: float = 3.0,
    lambda_gm: float = 0.15,
    variant: str = "cosine",
    lambda_match: float = 1.0,
) -> tuple[jax.Array, dict[str, Any]]:
    """IR loss (Noack et al., loss_utils.cos_sim / norm_im) in the advjax objective interface.

    Args:
      params: model parameters (differentiated).
      forward: object with ``train(params, x) -> (logits, new_model_state)``.
      batch: {"x": [B, ...], "y": [B], "target": [B, ...]}.
      key: unused (the loss is deterministic given the forward); kept for the interface.
      carry: unused.
      lambda_cs: weight of the direction term 1 - mean cos(g, t).
      lambda_gm: weight of ||G||_F.
      variant: 'cosine' (CE + lambda_cs cs + lambda_gm gm) or 'norm_match'
        (CE + lambda_match || |G| - T ||_F + lambda_gm gm).
      lambda_match: weight of the norm-matching term.

    Returns:
      (loss, aux) with aux = {"model_state", "metrics"}; metrics hold ce, cs, gm, the mean
      cosine to the target (``cos_target``), the mean per-example input-gradient norm
      (``input_grad_norm``; the train step logs the parameter-gradient norm as ``grad_norm``)
      and accuracy.
    """
    del key, carry
    x, y, target = batch["x"], batch["y"], batch["target"]
    logits, grads, new_state = logits_and_input_gradient(params, forward, x, y)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    cos = saliency.cosine_similarity(grads, target.astype(grads.dtype))
    cs = 1.0 - jnp.mean(cos)
    gm = safe_norm(grads)
    per_example_norm = jnp.sqrt(jnp.sum(grads.reshape(len(x), -1) ** 2, axis=1))
    metrics = {
        "ce": ce,
        "cs": cs,
        "gm": gm,
        "cos_target": jnp.mean(cos),
        "input_grad_norm": jnp.mean(per_example_norm),
        "accuracy": jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32)),
    }
    if variant == "cosine":
        loss = ce + lambda_cs * cs + lambda_gm * gm
    elif variant == "norm_match":
        match = safe_norm(jnp.abs(grads) - target)
        loss = ce + lambda_match * match + lambda_gm * gm
        metrics["match"] = match
    else:
        raise ValueError(f"variant: got {variant!r}; allowed: {list(VARIANTS)}")
    metrics["loss"] = loss
    return loss, {"model_state": new_state, "metrics": jax.lax.stop_gradient(metrics)}


# ---------------------------------------------------------------------------------------
# Targets.


def threshold_targets(targets: np.ndarray, *, num_std: float) -> np.ndarray:
    """Zeroes every value inside (mu - k sigma, mu + k sigma) of its own map (authors' thresh=k).

    Args:
      targets: [N, ...] maps.
      num_std: k; values v with mu - k sigma <= v <= mu + k sigma become 0.

    Returns:
      [N, ...] sparsified maps (a new array).
    """
    t = np.asarray(targets)
    axes = tuple(range(1, t.ndim))
    mu = t.mean(axis=axes, keepdims=True)
    sd = t.std(axis=axes, keepdims=True)
    keep = (t > mu + num_std * sd) | (t < mu - num_std * sd)
    return np.where(keep, t, 0.0).astype(t.dtype)


def permute_targets(targets: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """Permutes a random ``fraction`` of the entries of each map among themselves.

    Entries never move across maps; the multiset of values of every map is preserved.

    Args:
      targets: [N, ...] maps.
      fraction: share of the entries of each map that are shuffled.
      seed: numpy seed.

    Returns:
      [N, ...] maps (a new array).
    """
    t = np.array(targets, copy=True)
    flat = t.reshape(len(t), -1)
    n = flat.shape[1]
    count = int(n * fraction)
    if count < 2:
        return t
    rng = np.random.default_rng(seed)
    for row in flat:
        idx = rng.permutation(n)[:count]
        row[idx] = row[idx[rng.permutation(count)]]
    return t


def compute_targets(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: np.ndarray,
    y: np.ndarray,
    *,
    method: str = "smoothgrad",
    num_samples: int = 50,
    sigma: float = 0.15,
    include_clean: bool = True,
    chunk_size: int = 10,
    batch_size: int = 250,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Teacher saliency maps of the true-class logit for a whole dataset.

    Args:
      logits_fn: teacher, eval mode.
      x: [N, ...] inputs; y: [N] labels.
      method: 'smoothgrad' (Noack et al.'s default targets) or 'gradient'.
      num_samples, sigma, include_clean, chunk_size: SmoothGrad settings (see
        `advjax.saliency.smoothgrad`).
      batch_size: examples per compiled call.
      seed: PRNG seed of the noise.
      bounds: input box.

    Returns:
      [N, ...] float32 maps.
    """
    if method not in TARGET_METHODS:
        raise ValueError(f"method: got {method!r}; allowed: {list(TARGET_METHODS)}")
    model = as_model(logits_fn)
    if method == "gradient":
        return saliency.map_in_batches(
            lambda xb, yb: _gradient_maps(model, xb, yb), x, y, batch_size=batch_size,
            progress="targets",
        )  # fmt: skip
    settings = dict(
        num_samples=num_samples,
        sigma=sigma,
        chunk_size=chunk_size,
        include_clean=include_clean,
        bounds=tuple(bounds),
    )
    return saliency.map_in_batches(
        lambda xb, yb, k: _smoothgrad_maps(model, xb, yb, k, **settings),
        x,
        y,
        batch_size=batch_size,
        key=jax.random.PRNGKey(seed),
        progress="targets",
    ).astype(np.float32)


# Module level with the teacher as data: teachers of one architecture share the programs.
@jit
def _gradient_maps(model, x, y):
    return saliency.gradient(model, x, y)


@functools.partial(
    jit, static_argnames=("num_samples", "sigma", "chunk_size", "include_clean", "bounds")
)
def _smoothgrad_maps(model, x, y, key, **settings):
    return saliency.smoothgrad(model, x, y, key, **settings)


def data_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """Hash identifying a training set, so cached targets are never paired with other data."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()[:16]


def load_targets(
    targets_config: Mapping[str, Any],
    x: np.ndarray,
    y: np.ndarray,
) -> np.ndarray:
    """Raw (unprocessed) targets for ``x``, read from ``targets_config['path']``.

    The file is an ``.npz`` written for the same data (checked by fingerprint); the
    objective's ``prepare`` step writes it from the teacher run before training.
    """
    cfg = {**TARGET_DEFAULTS, **dict(targets_config)}
    fingerprint = data_fingerprint(x, y)
    path = cfg["path"]
    if path and os.path.exists(path):
        with np.load(path) as f:
            if str(f["fingerprint"]) != fingerprint:
                raise ValueError(
                    f"targets file {path} was computed for different training data "
                    f"(fingerprint {f['fingerprint']} != {fingerprint})"
                )
            return np.asarray(f["target"], dtype=np.float32)
    if not cfg["teacher_workdir"]:
        raise ValueError(
            "config key 'train.objective.targets': neither an existing 'path' "
            f"({path!r}) nor a 'teacher_workdir' to compute targets from"
        )
    raise ValueError(
        f"config key 'train.objective.targets.path': {path!r} does not exist yet; it is "
        "written from the teacher run before training (advjax.runs.train_or_load)"
    )


def write_targets(
    teacher: Any,
    targets_config: Mapping[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Computes the teacher's maps on ``(x, y)`` and writes them to ``path``.

    Args:
      teacher: the teacher as an `advjax.models.Model` (or an eval-mode logits function).
      targets_config: ``TARGET_DEFAULTS`` keys; ``path`` must be set.
      x, y: training inputs and labels.
      bounds: input box.

    Returns:
      The raw targets.
    """
    cfg = {**TARGET_DEFAULTS, **dict(targets_config)}
    targets = compute_targets(
        teacher,
        x,
        y,
        method=cfg["method"],
        num_samples=cfg["num_samples"],
        sigma=cfg["sigma"],
        include_clean=cfg["include_clean"],
        chunk_size=cfg["chunk_size"],
        batch_size=cfg["batch_size"],
        seed=cfg["seed"],
        bounds=bounds,
    )
    save_targets(cfg["path"], targets, fingerprint=data_fingerprint(x, y), settings=cfg)
    return targets


def save_targets(
    path: str, targets: np.ndarray, *, fingerprint: str, settings: Mapping[str, Any]
) -> str:
    """Writes targets atomically as ``.npz`` with the data fingerprint and settings."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(
        tmp,
        target=np.asarray(targets, np.float32),
        fingerprint=np.asarray(fingerprint),
        settings=np.asarray(json.dumps(dict(settings), default=str)),
    )
    os.replace(tmp, path)
    return path


def process_targets(targets: np.ndarray, targets_config: Mapping[str, Any]) -> np.ndarray:
    """Applies the optional thresholding, then the optional permutation."""
    cfg = {**TARGET_DEFAULTS, **dict(targets_config)}
    t = np.asarray(targets, np.float32)
    if cfg["threshold_std"] > 0:
        t = threshold_targets(t, num_std=cfg["threshold_std"])
    if cfg["permute_fraction"] > 0:
        t = permute_targets(t, fraction=cfg["permute_fraction"], seed=cfg["permute_seed"])
    return t


def build_interpretation(objective_config):
    """Builds the IR objective from ``config.train.objective``.

    Keys: ``lambda_cs`` (3.0, MNIST script), ``lambda_gm`` (0.15), ``variant`` ('cosine' |
    'norm_match'), ``lambda_match`` (1.0), and ``targets`` (see ``TARGET_DEFAULTS``: ``path``,
    ``teacher_workdir``, SmoothGrad settings, ``threshold_std``, ``permute_fraction``,
    ``permute_seed``).

    Returns:
      ``advjax.objectives.Objective`` whose ``extra_train_arrays`` supplies ``target``.
    """
    from advjax.objectives import Objective

    cfg = dict(objective_config)
    unknown_top = set(cfg) - {
        "name",
        "lambda_cs",
        "lambda_gm",
        "variant",
        "lambda_match",
        "targets",
    }
    if unknown_top:
        raise ValueError(
            f"config key 'train.objective.{sorted(unknown_top)[0]}': objective 'interpretation' "
            "takes lambda_cs, lambda_gm, variant, lambda_match, targets"
        )
    variant = cfg.get("variant", "cosine")
    if variant not in VARIANTS:
        raise ValueError(
            f"config key 'train.objective.variant': got {variant!r}; allowed: {list(VARIANTS)}"
        )
    targets_cfg = {**TARGET_DEFAULTS, **dict(cfg.get("targets", {}) or {})}
    unknown = set(targets_cfg) - set(TARGET_DEFAULTS)
    if unknown:
        raise ValueError(
            f"config key 'train.objective.targets': unknown keys {sorted(unknown)}; "
            f"allowed: {sorted(TARGET_DEFAULTS)}"
        )
    if targets_cfg["method"] not in TARGET_METHODS:
        raise ValueError(
            "config key 'train.objective.targets.method': got "
            f"{targets_cfg['method']!r}; allowed: {list(TARGET_METHODS)}"
        )
    if not 0.0 <= float(targets_cfg["permute_fraction"]) <= 1.0:
        raise ValueError(
            "config key 'train.objective.targets.permute_fraction': got "
            f"{targets_cfg['permute_fraction']!r}; allowed: a number in [0, 1]"
        )
    loss_fn = functools.partial(
        ir_loss,
        lambda_cs=float(cfg.get("lambda_cs", 3.0)),
        lambda_gm=float(cfg.get("lambda_gm", 0.15)),
        variant=variant,
        lambda_match=float(cfg.get("lambda_match", 1.0)),
    )

    if targets_cfg["teacher_workdir"] and not targets_cfg["path"]:
        raise ValueError(
            "config key 'train.objective.targets.path': set where the teacher's targets are "
            f"written (teacher_workdir {targets_cfg['teacher_workdir']!r} is given)"
        )

    def prepare(dataset, *, load_model) -> None:
        path = targets_cfg["path"]
        if not targets_cfg["teacher_workdir"] or (path and os.path.exists(path)):
            return
        bounds = tuple(getattr(dataset.info, "bounds", (0.0, 1.0)))
        teacher = load_model(targets_cfg["teacher_workdir"])
        write_targets(teacher, targets_cfg, dataset.train_x, dataset.train_y, bounds=bounds)

    def extra_train_arrays(dataset) -> dict[str, np.ndarray]:
        raw = load_targets(targets_cfg, dataset.train_x, dataset.train_y)
        if raw.shape != dataset.train_x.shape:
            raise ValueError(
                f"targets shape {raw.shape} != training inputs {dataset.train_x.shape}"
            )
        return {"target": process_targets(raw, targets_cfg)}

    return Objective(loss_fn=loss_fn, extra_train_arrays=extra_train_arrays, prepare=prepare)
