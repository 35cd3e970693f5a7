"""Honest robustness evaluation: clean and robust accuracy, eps sweeps, sanity checks.

`evaluate` runs every attack of ``config.eval.attacks`` on the clean-correct examples,
reports each attack's robust accuracy with its threat model (norm, eps), budget and
seed, and the per-example worst case over all attacks. An attack with ``components``
(the AutoAttack-style ``ensemble``) runs them in order, each only on the points still
robust. An optional eps sweep evaluates one attack over ``config.eval.eps_grid`` in one
compiled call per batch (a ``vmap`` over eps, streamed in chunks). Sanity checks after
Carlini et al. 2019, "On evaluating adversarial robustness" (Sec. 5) and Croce & Hein
2020 (AutoAttack) flag the usual signs of gradient masking or a model in the wrong
mode; a failing check warns with the likely cause.

Randomness is per example: example ``i`` of the evaluated set gets the key
``fold_in(fold_in(key, attack_id), i)``, so results do not depend on the batch size or
on which points are still being attacked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax import checkpoints, distributed, geometry, losses
from advjax.attacks import ATTACKS, Attack, build_attack, name_id
from advjax.compile import jit
from advjax.models import Model, as_model
from advjax.progress import progress_bar

LogitsFn = Callable[[jax.Array], jax.Array]
ModelLike = Model | LogitsFn

_DEFAULTS = {
    "batch_size": 128,
    "num_examples": 0,
    "eps_grid": (),
    "sanity_checks": True,
    # Which attack the eps sweep uses (default: the first white-box attack that is not
    # an ensemble) and how many eps values are vmapped at once.
    "sweep_attack": "",
    "sweep_chunk_size": 8,
    # Sanity checks run on the first examples only, to bound their cost.
    "sanity_num_examples": 200,
    "sanity_large_eps_max_accuracy": 0.05,
    "sanity_zero_grad_max_fraction": 0.1,
    "sanity_square_queries": 300,
    # Largest fraction of examples a black-box attack may fool beyond every white-box
    # attack at the same threat model before the check calls it gradient masking.
    "sanity_black_box_max_fraction": 0.002,
    "progress": True,
}

# Relative slack for the "perturbation within budget" check (float32 rounding).
_BUDGET_RTOL = 1e-4


# ----------------------------------------------------------------------------- config


def _get(cfg: Any, name: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, _DEFAULTS.get(name))
    try:
        value = cfg.get(name, _DEFAULTS.get(name))
    except AttributeError:
        value = getattr(cfg, name, _DEFAULTS.get(name))
    return value


def _as_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return dict(cfg)


def _attack_configs(attacks: Any) -> list[tuple[str, dict[str, Any]]]:
    """Named attack configs from a mapping or a list (list entries may carry 'label')."""
    if attacks is None:
        return []
    if isinstance(attacks, Mapping) or hasattr(attacks, "items"):
        return [(str(k), _as_dict(v)) for k, v in attacks.items()]
    out = []
    for i, cfg in enumerate(attacks):
        d = _as_dict(cfg)
        label = d.pop("label", None) or f"{d.get('name', 'attack')}_{i}"
        out.append((str(label), d))
    return out


def _validate(eval_config: Any) -> dict[str, Any]:
    v = {k: _get(eval_config, k) for k in _DEFAULTS}
    for k in ("batch_size", "sweep_chunk_size", "sanity_num_examples"):
        if not isinstance(v[k], int) or isinstance(v[k], bool) or v[k] < 1:
            raise ValueError(f"config key 'eval.{k}': must be an integer >= 1, got {v[k]!r}")
    n = v["num_examples"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"config key 'eval.num_examples': must be an integer >= 0, got {n!r}")
    grid = list(v["eps_grid"] or [])
    for e in grid:
        if isinstance(e, bool) or not isinstance(e, int | float) or e < 0:
            raise ValueError(f"config key 'eval.eps_grid': entries must be numbers >= 0, got {e!r}")
    v["eps_grid"] = sorted(float(e) for e in grid)
    v["attacks"] = _attack_configs(_get(eval_config, "attacks"))
    for name, cfg in v["attacks"]:
        if "name" not in cfg:
            raise ValueError(f"config key 'eval.attacks.{name}.name' is missing")
        ATTACKS.check(cfg["name"], key=f"eval.attacks.{name}.name")
    return v


def _key_data(key: jax.Array) -> list[int]:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()


def _attack_id(name: str) -> int:
    return name_id(name)


def _example_keys(key: jax.Array, attack_id: int, n: int) -> jax.Array:
    k = jax.random.fold_in(key, attack_id)
    return jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(n))


def _budget_eps(norm: str, bounds: tuple[float, float], dim: int) -> float:
    """An eps at which the ball covers the whole box: every input is reachable."""
    span = float(bounds[1] - bounds[0])
    return {"linf": span, "l2": span * math.sqrt(dim), "l1": span * dim}[norm]


# ----------------------------------------------------------------------------- batching


class EvalStore:
    """Finished evaluation batches on disk, so a killed evaluation resumes where it stopped.

    As AutoAttack's own evaluation state: every batch's outcome is written when it
    finishes, keyed by the evaluation's fingerprint (config, key, model, data), the stage
    (clean, attack/component, sweep) and the batch's example indices. Because example keys
    are per example and a component attacks the points still robust after the stored
    earlier results, the resumed report equals an uninterrupted one.
    """

    def __init__(self, directory: str, fingerprint: str):
        self.directory = os.path.join(directory, fingerprint)
        self.batches_written = 0
        os.makedirs(self.directory, exist_ok=True)

    def batch_name(self, stage: str, idx: np.ndarray) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(idx, np.int64).tobytes()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() else "_" for c in stage)
        return f"{safe}-{digest}"

    def load(self, name: str) -> list[np.ndarray] | None:
        path = os.path.join(self.directory, name + ".npz")
        if not os.path.exists(path):
            return None
        try:
            with np.load(path) as f:
                return [f[f"out{i}"] for i in range(len(f.files))]
        except (OSError, ValueError, KeyError):
            return None  # a batch cut off mid-write is simply computed again

    def save(self, name: str, outputs: list[np.ndarray]) -> None:
        path = os.path.join(self.directory, name + ".npz")
        tmp = path + ".tmp.npz"
        np.savez(tmp, **{f"out{i}": o for i, o in enumerate(outputs)})
        os.replace(tmp, path)
        self.batches_written += 1
        checkpoints.kill_point("eval_batch", self.batches_written)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts and arrays (an evaluation's identity)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray | jax.Array):
            arr = np.ascontiguousarray(np.asarray(part))
            h.update(str((arr.shape, arr.dtype)).encode())
            h.update(arr.tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


class _Runner:
    """Runs jitted per-batch functions over index sets with one padded batch shape.

    A randomised model gets a fresh key for every batch call (``model_key``).
    """

    def __init__(
        self, x: np.ndarray, y: np.ndarray, batch_size: int, pbar, model_key=None, store=None
    ):
        self.x, self.y, self.batch_size, self.pbar = x, y, batch_size, pbar
        self.model_key = model_key
        self.calls = 0
        self.store = store
        self.stage = ""

    def next_model_key(self) -> jax.Array:
        self.calls += 1
        base = self.model_key if self.model_key is not None else jax.random.key(0)
        return jax.random.fold_in(base, self.calls)

    def run(self, fn, idx: np.ndarray, keys: jax.Array | None = None, *extra) -> list[np.ndarray]:
        """``fn(x_b, y_b, [keys_b], model_key, *extra)`` over ``idx`` in padded batches.

        Outputs have the batch first (or second, after a model axis, when ``fn`` returns
        ``(model, batch)`` arrays: see ``batch_axis``); returns them per index of ``idx``.

        In a multi-process run (`advjax.distributed`) batch ``j`` runs on process
        ``j mod P`` only, with the model key it has in one process, and every process
        receives all outputs, so each builds the same report; every process must call
        ``run`` with the same arguments.
        """
        idx = np.asarray(idx, dtype=np.int64)
        rank, size = distributed.process_index(), distributed.process_count()
        done: dict[int, list[np.ndarray]] = {}
        for j, start in enumerate(range(0, len(idx), self.batch_size)):
            b = idx[start : start + self.batch_size]
            model_key = self.next_model_key()
            if j % size != rank:
                continue
            name = self.store.batch_name(self.stage, b) if self.store is not None else None
            res = self.store.load(name) if name is not None else None
            if res is None:
                pad = np.concatenate([b, np.repeat(b[-1:], self.batch_size - len(b))])
                args = [jnp.asarray(self.x[pad]), jnp.asarray(self.y[pad])]
                if keys is not None:
                    args.append(keys[pad])
                res = fn(*args, model_key, *extra)
                res = res if isinstance(res, tuple) else (res,)
                res = [np.asarray(r)[..., : len(b)] for r in res]
                if name is not None:
                    self.store.save(name, res)
            done[j] = res
            if self.pbar is not None:
                self.pbar.update(len(b))
        if size > 1:
            for part in distributed.allgather_objects(done):
                done.update(part)
        outs = [done[j] for j in sorted(done)]
        if not outs:
            return []
        return [np.concatenate([o[i] for o in outs], axis=-1) for i in range(len(outs[0]))]


def _bound(model: Model, model_key: jax.Array) -> LogitsFn:
    return model.bind(model_key if model.takes_key else None)


def _outcome(attack: Attack, model: Model, x, y, keys, model_key, bounds, eps=None):
    logits_fn = _bound(model, model_key)
    x_adv = attack(logits_fn, x, y, keys, bounds=bounds, eps=eps)
    correct = jnp.argmax(logits_fn(x_adv), axis=1) == y
    pert = geometry.lp_norm(x_adv - x, norm=attack.norm)
    lo, hi = bounds
    flat = x_adv.reshape(x.shape[0], -1)
    in_box = jnp.all((flat >= lo) & (flat <= hi), axis=1)
    return correct, pert, in_box


# Module-level jitted functions with the attack static and the model as data: the cache
# key is (attack config, architecture, shapes), so evaluating another model of the same
# architecture, or calling `evaluate` again, compiles nothing new.
@functools.partial(jit, static_argnames=("attack", "bounds"))
def attack_outcome(attack: Attack, model: Model, x, y, keys, model_key, *, bounds, eps=None):
    """``(correct_adv, pert_norm, in_box)`` per example of one attack on one batch.

    ``eps`` (traced) overrides the attack's radius, e.g. for a sweep in a Python loop.
    """
    return _outcome(attack, model, x, y, keys, model_key, bounds, eps)


@functools.partial(jit, static_argnames=("attack", "bounds"))
def attack_outcome_stack(attack: Attack, models: Model, x, y, keys, model_key, *, bounds):
    """`attack_outcome` for a stack of models (leading model axis of the variables)."""

    def one(variables):
        return _outcome(
            attack, Model(models.apply, variables, models.takes_key), x, y, keys, model_key, bounds
        )

    return jax.vmap(one)(models.variables)


@jit
def clean_correct_batch(model: Model, x, y, model_key):
    """Per-example clean correctness of one batch."""
    return jnp.argmax(_bound(model, model_key)(x), axis=1) == y


@jit
def clean_correct_stack(models: Model, x, y, model_key):
    """`clean_correct_batch` for a stack of models."""
    return jax.vmap(
        lambda v: clean_correct_batch(Model(models.apply, v, models.takes_key), x, y, model_key)
    )(models.variables)


@functools.partial(jit, static_argnames=("attack", "bounds", "chunk_size"))
def sweep_outcome(attack: Attack, model: Model, x, y, keys, model_key, eps_grid, *, bounds,
                  chunk_size):  # fmt: skip
    """Correctness ``(num_eps, batch)`` of one attack over an eps grid (a vmap over eps)."""
    logits_fn = _bound(model, model_key)

    def one(eps):
        x_adv = attack(logits_fn, x, y, keys, bounds=bounds, eps=eps)
        return jnp.argmax(logits_fn(x_adv), axis=1) == y

    if chunk_size >= eps_grid.shape[0]:
        # One vmap, no loop: XLA:CPU runs convolutions inside loops much slower.
        return jax.vmap(one)(eps_grid)
    return jax.lax.map(one, eps_grid, batch_size=chunk_size)


def accuracy(
    model: ModelLike,
    x: np.ndarray,
    y: np.ndarray,
    *,
    attack: Attack | None = None,
    key: jax.Array | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    eps: float | None = None,
    batch_size: int = 256,
) -> float:
    """Accuracy of ``model`` on ``(x, y)``, clean or under ``attack`` (at ``eps``).

    The shared kit of experiments that need one number: every batch runs the same
    compiled programs as `evaluate` (per-example keys ``fold_in(key, i)``, padded last
    batch), so models of one architecture compile once. Unlike `evaluate`, clean
    mistakes are not excluded first: this is the accuracy on ``attack``'s outputs.
    """
    model = as_model(model)
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("accuracy: no examples")
    bounds = (float(bounds[0]), float(bounds[1]))
    key = jax.random.key(0) if key is None else key
    runner = _Runner(x, y, min(batch_size, n), None, jax.random.fold_in(key, 0x3A7))
    if attack is None:
        correct = runner.run(
            lambda xb, yb, mk: clean_correct_batch(model, xb, yb, mk), np.arange(n)
        )
        return float(np.mean(correct[0]))
    keys = _example_keys(key, 0, n)
    e = None if eps is None else jnp.float32(eps)
    correct = runner.run(
        lambda xb, yb, kb, mk: attack_outcome(attack, model, xb, yb, kb, mk, bounds=bounds, eps=e),
        np.arange(n),
        keys,
    )
    return float(np.mean(correct[0]))


# ----------------------------------------------------------------------------- evaluate


def _attack_meta(attack: Attack) -> dict[str, Any]:
    conf = attack.config
    return {
        "name": attack.name,
        "norm": attack.norm,
        "eps": attack.eps,
        "budget": attack.budget_dict(),
        "kind": attack.kind,
        "white_box": attack.white_box,
        "config": {k: v for k, v in conf.items() if _jsonable(v)},
    }


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool | type(None)) or (
        isinstance(v, list | tuple) and all(_jsonable(u) for u in v)
    )


def _build_all(cfg: dict[str, Any]) -> list[tuple[str, Attack]]:
    return [
        (name, build_attack(acfg, key=f"eval.attacks.{name}.name")) for name, acfg in cfg["attacks"]
    ]


def _prepare(eval_config: Any, x, y):
    cfg = _validate(eval_config)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int32)
    if cfg["num_examples"] > 0:
        x, y = x[: cfg["num_examples"]], y[: cfg["num_examples"]]
    if x.shape[0] == 0:
        raise ValueError("evaluate: no examples to evaluate")
    return cfg, x, y


def _parts(attack: Attack) -> tuple[Attack, ...]:
    return attack.components or (attack,)


def _run_attacks(built, runner, key, clean_correct, *, bounds, stack: bool):
    """Every attack (components in order, each on the points still robust).

    ``clean_correct`` is ``[n]`` or, for a stack, ``[models, n]``; a component runs on
    the union of still-robust points and each model keeps only its own outcomes, so a
    stack gives exactly the per-model results (per-example keys).
    """
    n = clean_correct.shape[-1]
    metas: dict[str, dict] = {}
    per_attack: dict[str, np.ndarray] = {}
    violations: dict[str, float] = {}
    # Robust to the white-box attacks (and white-box components) alone: what a
    # black-box attack is compared with.
    white_box_robust: dict[str, np.ndarray] = {}
    model = runner.model
    for name, attack in built:
        meta = _attack_meta(attack)
        meta["seed"] = {"fold_in": _attack_id(name)}
        keys = _example_keys(key, _attack_id(name), n)
        robust = clean_correct.copy()
        wb_robust = clean_correct.copy()
        t0 = time.perf_counter()
        parts = _parts(attack)
        comp_report = {}
        for comp in parts:
            comp_keys = keys if len(parts) == 1 else _fold_keys(keys, _attack_id(comp.name))
            fn = attack_outcome_stack if stack else attack_outcome
            idx = np.flatnonzero(robust.any(axis=0) if stack else robust)
            before = robust.copy()
            runner.stage = f"attack/{name}/{comp.name}"
            if len(idx):
                correct, pert, in_box = runner.run(
                    lambda xb, yb, kb, mk, _c=comp, _f=fn: _f(
                        _c, model, xb, yb, kb, mk, bounds=bounds
                    ),
                    idx,
                    comp_keys,
                )
                robust[..., idx] &= correct.astype(bool)
                if comp.white_box:
                    wb_robust[..., idx] &= correct.astype(bool)
                excess = np.max(pert - attack.eps * (1 + _BUDGET_RTOL) - 1e-6, initial=0.0)
                if excess > 0 or not np.all(in_box):
                    violations[f"{name}/{comp.name}"] = float(max(excess, 0.0))
            if runner.pbar is not None:
                runner.pbar.update(n - len(idx))
            comp_report[comp.name] = {
                "kind": comp.kind,
                "robust_accuracy_after": _mean(robust),
                # Examples this component fooled that every earlier component left robust.
                "newly_fooled_fraction": _mean(before & ~robust),
                "budget": comp.budget_dict(),
            }
        meta["robust_accuracy"] = _mean(robust)
        meta["time_s"] = round(time.perf_counter() - t0, 3)
        if len(parts) > 1:
            meta["components"] = comp_report
        metas[name] = meta
        per_attack[name] = robust
        if any(c.white_box for c in parts):
            white_box_robust[name] = wb_robust
    runner.white_box_robust = white_box_robust
    return metas, per_attack, violations


def _mean(a: np.ndarray) -> Any:
    """Mean over examples: a float, or a list of floats per model for a stack."""
    m = np.asarray(a, dtype=np.float64).mean(axis=-1)
    return float(m) if np.ndim(m) == 0 else [float(v) for v in m]


def _new_bar(cfg, total: int):
    return progress_bar(total=total, desc="evaluate", unit="ex", enabled=cfg["progress"])


def evaluate(
    eval_config: Any,
    model: ModelLike,
    x: np.ndarray,
    y: np.ndarray,
    *,
    key: jax.Array,
    bounds: tuple[float, float] = (0.0, 1.0),
    state_dir: str | None = None,
) -> dict[str, Any]:
    """Clean accuracy, per-attack and worst-case robust accuracy, eps sweep, sanity checks.

    Robust accuracy counts an example as robust only if it is classified correctly
    clean and under every attack (per-example worst case over attacks and, inside each
    attack, over restarts; Carlini et al. 2019, Sec. 4.2; AutoAttack, Croce & Hein
    2020, Sec. 5).

    Args:
      eval_config: ``config.eval``: ``batch_size``, ``num_examples`` (0 = all),
        ``attacks`` (named attack configs, each with a registry 'name'), ``eps_grid``
        (empty = no sweep), ``sanity_checks``; optional ``sweep_attack``,
        ``sweep_chunk_size``, ``sanity_num_examples``, ``progress``.
      model: an `advjax.models.Model` (apply + variables: every compiled attack is
        shared with other models of the same architecture) or an eval-mode
        ``x -> logits`` callable.
      x: inputs, numpy ``(n, ...)`` in ``bounds``.
      y: integer labels ``(n,)``.
      key: PRNG key; every attack and example derives its own key from it.
      bounds: input box ``(lo, hi)``.
      state_dir: if set, every finished batch is stored there (`EvalStore`), and an
        evaluation killed midway resumes from the stored batches to the same report.

    Returns:
      A JSON-serialisable report section (see the keys below).
    """
    cfg, x, y = _prepare(eval_config, x, y)
    model = as_model(model)
    bounds = (float(bounds[0]), float(bounds[1]))
    n = int(x.shape[0])
    built = _build_all(cfg)
    sweep_name = _pick_sweep_attack(cfg, built)
    components = sum(len(_parts(a)) for _, a in built)
    pbar = _new_bar(cfg, n * (1 + components + (1 if sweep_name else 0)))
    store = None
    if state_dir:
        ident = fingerprint(
            _as_dict(eval_config), _key_data(key), list(bounds), x, y,
            *jax.tree.leaves(model.variables), repr(model.apply),
        )  # fmt: skip
        store = EvalStore(state_dir, ident)
    runner = _Runner(x, y, cfg["batch_size"], pbar, jax.random.fold_in(key, 0x3A7), store)
    runner.model = model

    runner.stage = "clean"
    clean_correct = runner.run(
        lambda xb, yb, mk: clean_correct_batch(model, xb, yb, mk), np.arange(n)
    )[0].astype(bool)
    report: dict[str, Any] = {
        "num_examples": n,
        "batch_size": cfg["batch_size"],
        "bounds": list(bounds),
        "seed": {"key_data": _key_data(key)},
        "randomised_model": bool(model.takes_key),
        "clean_accuracy": float(clean_correct.mean()),
    }
    metas, per_attack_correct, violations = _run_attacks(
        built, runner, key, clean_correct, bounds=bounds, stack=False
    )
    report["attacks"] = metas
    report["worst_case"] = _worst_case(metas, per_attack_correct, clean_correct)
    report["robust_accuracy"] = report["worst_case"]["robust_accuracy"]
    report["eps_sweep"] = (
        _eps_sweep(sweep_name, built, cfg, key, runner, clean_correct, bounds)
        if sweep_name
        else None
    )
    pbar.close()

    if cfg["sanity_checks"]:
        checks = _sanity_checks(
            cfg, built, report, per_attack_correct, violations, model, x, y, key, bounds,
            runner.white_box_robust,
        )  # fmt: skip
        report["sanity_checks"] = checks
        report["sanity_passed"] = all(c["passed"] is not False for c in checks.values())
    else:
        report["sanity_checks"] = {}
        report["sanity_passed"] = None
    return report


def evaluate_stack(
    eval_config: Any,
    models: Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    key: jax.Array,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> dict[str, Any]:
    """`evaluate` for a stack of models of one architecture, in one compiled call per batch.

    ``models`` carries a leading model axis on its variables (`advjax.models.stack_models`:
    seeds of one recipe, or checkpoints of one run). Every attack is vmapped over the
    models, with the same per-example keys as `evaluate`, so model ``m``'s numbers equal
    those of ``evaluate`` on model ``m`` alone. No eps sweep or sanity checks here: run
    `evaluate` on a model of interest for those.

    Returns:
      ``{"num_models", "num_examples", "clean_accuracy": [per model], "attacks": {name:
      {... "robust_accuracy": [per model]}}, "robust_accuracy": [per model], "models":
      [per-model summaries]}``.
    """
    cfg, x, y = _prepare(eval_config, x, y)
    bounds = (float(bounds[0]), float(bounds[1]))
    num_models = int(jax.tree.leaves(models.variables)[0].shape[0])
    n = int(x.shape[0])
    built = _build_all(cfg)
    components = sum(len(_parts(a)) for _, a in built)
    pbar = _new_bar(cfg, n * (1 + components))
    runner = _Runner(x, y, cfg["batch_size"], pbar, jax.random.fold_in(key, 0x3A7))
    runner.model = models
    clean_correct = runner.run(
        lambda xb, yb, mk: clean_correct_stack(models, xb, yb, mk), np.arange(n)
    )[0].astype(bool)
    metas, per_attack_correct, _ = _run_attacks(
        built, runner, key, clean_correct, bounds=bounds, stack=True
    )
    pbar.close()
    robust_all = clean_correct.copy()
    for name in metas:
        robust_all &= per_attack_correct[name]
    clean = _mean(clean_correct)
    robust = _mean(robust_all)
    return {
        "num_models": num_models,
        "num_examples": n,
        "seed": {"key_data": _key_data(key)},
        "clean_accuracy": clean,
        "attacks": metas,
        "robust_accuracy": robust,
        "models": [
            {
                "clean_accuracy": clean[m],
                "robust_accuracy": robust[m],
                "attacks": {k: v["robust_accuracy"][m] for k, v in metas.items()},
            }
            for m in range(num_models)
        ],
    }


def _fold_keys(keys: jax.Array, data: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def _pick_sweep_attack(cfg: dict[str, Any], built) -> str:
    if not cfg["eps_grid"]:
        return ""
    names = [name for name, _ in built]
    if cfg["sweep_attack"]:
        if cfg["sweep_attack"] not in names:
            raise ValueError(
                f"config key 'eval.sweep_attack': got {cfg['sweep_attack']!r}; allowed: {names}"
            )
        return cfg["sweep_attack"]

    # Prefer an iterative white-box attack: the sweep should be the strongest single one.
    def rank(item):
        _, attack = item
        return (not attack.white_box, attack.name == "fgsm")

    return min(built, key=rank)[0] if built else ""


def _worst_case(attacks: dict, per_attack_correct: dict, clean_correct: np.ndarray) -> dict:
    robust_all = clean_correct.copy()
    groups: dict[str, dict[str, Any]] = {}
    for name, meta in attacks.items():
        robust_all &= per_attack_correct[name]
        tm = f"{meta['norm']}:{meta['eps']:g}"
        g = groups.setdefault(tm, {"robust": clean_correct.copy(), "attacks": []})
        g["robust"] &= per_attack_correct[name]
        g["attacks"].append(name)
    return {
        "robust_accuracy": float(robust_all.mean()),
        "threat_models": {
            tm: {
                "norm": tm.split(":")[0],
                "eps": float(tm.split(":")[1]),
                "robust_accuracy": float(g["robust"].mean()),
                "attacks": g["attacks"],
            }
            for tm, g in groups.items()
        },
        "mixed_threat_models": len(groups) > 1,
    }


def _eps_sweep(sweep_name, built, cfg, key, runner, clean_correct, bounds) -> dict:
    name, attack = next(b for b in built if b[0] == sweep_name)
    grid = np.asarray(cfg["eps_grid"], np.float32)
    keys = _example_keys(key, _attack_id(name + "/sweep"), runner.x.shape[0])
    model, chunk = runner.model, cfg["sweep_chunk_size"]
    runner.stage = f"sweep/{name}"
    t0 = time.perf_counter()
    correct = runner.run(
        lambda xb, yb, kb, mk, g: sweep_outcome(
            attack, model, xb, yb, kb, mk, g, bounds=bounds, chunk_size=chunk
        ),
        np.arange(runner.x.shape[0]),
        keys,
        jnp.asarray(grid),
    )[0]
    correct = correct.astype(bool) & clean_correct[None]
    # An example robust at eps is robust at every smaller eps (nested balls); the
    # envelope reports that bound, the raw curve is what the attack found.
    envelope = np.logical_and.accumulate(correct, axis=0)
    return {
        "attack": name,
        "norm": attack.norm,
        "budget": attack.budget_dict(),
        "seed": {"fold_in": _attack_id(name + "/sweep")},
        "eps": [float(e) for e in cfg["eps_grid"]],
        "robust_accuracy": [float(c) for c in correct.mean(axis=1)],
        "robust_accuracy_envelope": [float(c) for c in envelope.mean(axis=1)],
        "clean_accuracy": float(clean_correct.mean()),
        "time_s": round(time.perf_counter() - t0, 3),
    }


# ----------------------------------------------------------------------------- sanity checks


def _check(passed: bool | None, value: Any, threshold: Any, detail: str, cause: str) -> dict:
    return {
        "passed": passed,
        "value": value,
        "threshold": threshold,
        "detail": detail,
        "likely_cause": cause if passed is False else "",
    }


def _sanity_checks(
    cfg, built, report, per_attack_correct, budget_violations, model: Model, x, y, key, bounds,
    white_box_robust,
) -> dict[str, dict]:  # fmt: skip
    ns = min(cfg["sanity_num_examples"], x.shape[0])
    xs, ys = jnp.asarray(x[:ns]), jnp.asarray(y[:ns])
    bs = min(cfg["batch_size"], ns)
    small = _Runner(x[:ns], y[:ns], bs, None, jax.random.fold_in(key, 0x5A1))
    small.model = model
    small.parent_white_box_robust = white_box_robust
    idx = np.arange(ns)
    checks: dict[str, dict] = {}
    fixed_key = jax.random.fold_in(key, 0xF1)
    logits_jit = jit(lambda xb, mk: _bound(model, mk)(xb))
    logits = np.asarray(logits_jit(xs[:bs], fixed_key))
    clean_small = np.asarray(
        small.run(lambda xb, yb, mk: clean_correct_batch(model, xb, yb, mk), idx)[0], bool
    )

    # 1. Outputs are logits, not probabilities (softmax on probabilities flattens the
    # loss surface and hides gradients).
    rows_sum_one = np.allclose(logits.sum(axis=1), 1.0, atol=1e-3)
    in_unit = bool(np.all(logits >= 0) and np.all(logits <= 1))
    is_prob = bool(rows_sum_one and in_unit)
    checks["outputs_are_logits"] = _check(
        not is_prob,
        {"min": float(logits.min()), "max": float(logits.max())},
        None,
        "model outputs look like probabilities (in [0,1], rows sum to 1)"
        if is_prob
        else "model outputs are unnormalised scores",
        "the model ends in a softmax: attack the pre-softmax logits",
    )

    # 2. Deterministic, batch-independent predictions. A randomised model (one that
    # takes a key) is called under fresh keys, as every evaluation call does.
    again_key = jax.random.fold_in(key, 0xF2) if model.takes_key else fixed_key
    again = np.asarray(logits_jit(xs[:bs], again_key))
    scale = max(1.0, float(np.abs(logits).max()))
    repeat_diff = float(np.abs(again - logits).max()) / scale
    checks["deterministic_model"] = _check(
        repeat_diff < 1e-5,
        {"max_relative_change": repeat_diff, "randomised_model": bool(model.takes_key)},
        1e-5,
        "max relative change of the logits between two calls (fresh model keys for a model "
        "that takes a key)",
        "a randomised model: robust accuracy depends on the draw; evaluate with EOT "
        "(advjax.attacks.wrappers.eot) over many draws and report the model as randomised",
    )
    if model.takes_key:
        checks["batch_independent_predictions"] = _check(
            None, None, None, "randomised model: checked under fresh keys above", ""
        )
    else:
        rev = np.asarray(logits_jit(xs[:bs][::-1], fixed_key))[::-1]
        single = np.asarray(logits_jit(xs[:1], fixed_key))
        batch_diff = max(
            float(np.abs(rev - logits).max()), float(np.abs(single - logits[:1]).max())
        )
        batch_diff /= scale
        checks["batch_independent_predictions"] = _check(
            batch_diff < 1e-4,
            batch_diff,
            1e-4,
            "max relative change of an example's logits when the batch is reordered or split",
            "wrong model mode: BatchNorm/dropout in train mode during evaluation",
        )

    # 3. Fraction of examples whose input gradient is exactly zero.
    @jit
    def grad_norm(xb, yb, mk):
        f = _bound(model, mk)
        g = jax.grad(lambda v: jnp.sum(losses.cross_entropy(f(v), yb)))(xb)
        return geometry.lp_norm(g, norm="l1")

    gnorm = small.run(grad_norm, idx)[0]
    zero_frac = float(np.mean(gnorm == 0.0))
    checks["zero_gradient_fraction"] = _check(
        zero_frac <= cfg["sanity_zero_grad_max_fraction"],
        zero_frac,
        cfg["sanity_zero_grad_max_fraction"],
        "fraction of examples with an exactly zero input gradient of the cross-entropy",
        "gradient masking (saturated softmax, quantisation or other non-differentiable "
        "layers): use margin/DLR losses, BPDA or a black-box attack",
    )

    # 4. Perturbations inside the declared threat model.
    checks["perturbation_within_budget"] = _check(
        not budget_violations,
        budget_violations,
        _BUDGET_RTOL,
        "every adversarial input lies in the eps-ball and the input box",
        "an attack implementation or config bug (eps, bounds): the reported accuracy is "
        "not for the declared threat model",
    )

    gradient_based = [(nm, a) for nm, a in built if a.kind != "black_box"]
    iterative = [(nm, a) for nm, a in gradient_based if a.name != "fgsm"]

    def run_attack(attack: Attack, fold: str) -> np.ndarray:
        keys = _example_keys(key, _attack_id(fold), ns)
        return small.run(
            lambda xb, yb, kb, mk: attack_outcome(attack, model, xb, yb, kb, mk, bounds=bounds),
            idx,
            keys,
        )[0].astype(bool)

    # 5. Iterative attacks at least as strong as FGSM at the same norm and eps, counted
    # on the clean-correct points only (FGSM can "fix" a misclassified point).
    fgsm_results: dict[tuple, np.ndarray] = {}
    worst_gap = 0.0
    details = {}
    for nm, attack in iterative:
        tm = (attack.norm, attack.eps)
        if tm not in fgsm_results:
            fg = build_attack({"name": "fgsm", "norm": tm[0], "eps": tm[1]})
            fgsm_results[tm] = run_attack(fg, "sanity/fgsm") & clean_small
        it_acc = float(per_attack_correct[nm][:ns].mean())
        fg_acc = float(fgsm_results[tm].mean())
        details[nm] = {"iterative": it_acc, "fgsm": fg_acc}
        worst_gap = max(worst_gap, it_acc - fg_acc)
    if iterative:
        checks["iterative_stronger_than_fgsm"] = _check(
            worst_gap <= 1.0 / ns + 1e-9,
            details,
            "acc(iterative) <= acc(FGSM) + 1 example",
            "robust accuracy on the first examples (clean-correct only): iterative vs FGSM",
            "gradient masking or too small a step size / too few steps",
        )
    else:
        checks["iterative_stronger_than_fgsm"] = _check(None, None, None, "no iterative attack", "")

    # 6. Close to zero robust accuracy when the ball covers the whole box.
    if gradient_based:
        norm = gradient_based[0][1].norm
        big = _budget_eps(norm, bounds, int(np.prod(x.shape[1:])))
        pg = build_attack(
            {
                "name": "pgd",
                "norm": norm,
                "eps": big,
                "num_steps": 20,
                "step_size": big / 8,
                "loss": "margin",
            }
        )
        acc = float(run_attack(pg, "sanity/large_eps").mean())
        checks["large_eps_accuracy"] = _check(
            acc <= cfg["sanity_large_eps_max_accuracy"],
            {"norm": norm, "eps": big, "robust_accuracy": acc},
            cfg["sanity_large_eps_max_accuracy"],
            "robust accuracy of PGD-20 (margin loss) when every input in the box is reachable",
            "gradient masking (the attack cannot follow the gradient) or a broken attack",
        )
    else:
        checks["large_eps_accuracy"] = _check(None, None, None, "no white-box attack", "")

    # 7. Robust accuracy non-increasing in eps.
    sweep = report.get("eps_sweep")
    if sweep and len(sweep["eps"]) > 1:
        accs = np.asarray(sweep["robust_accuracy"])
        rise = float(np.max(np.diff(accs), initial=0.0))
        n = report["num_examples"]
        checks["monotone_in_eps"] = _check(
            rise <= 1.0 / n + 1e-9,
            rise,
            "<= 1 example",
            "largest increase of robust accuracy between consecutive eps of the sweep",
            "a weak or gradient-masked attack (larger balls contain smaller ones)",
        )
    else:
        checks["monotone_in_eps"] = _check(None, None, None, "no eps sweep configured", "")

    # 8. Attack randomness: the same key gives the same adversarial batch (a randomised
    # model, called under fresh keys, breaks this), another key another start.
    rnd = [(nm, a) for nm, a in built if a.white_box and a.randomised]
    if rnd:
        nm, a = rnd[0]
        xb, yb = xs[:bs], ys[:bs]
        k1 = _example_keys(key, 1, bs)
        k2 = _example_keys(key, 2, bs)
        run = jit(lambda xx, yy, kk, mk: a(_bound(model, mk), xx, yy, kk, bounds=bounds))
        mk1 = jax.random.fold_in(key, 0xA1)
        mk2 = jax.random.fold_in(key, 0xA2) if model.takes_key else mk1
        a1, a1b, a2 = (
            np.asarray(run(xb, yb, k, mk)) for k, mk in ((k1, mk1), (k1, mk2), (k2, mk1))
        )
        same = bool(np.array_equal(a1, a1b))
        differ = bool(not np.array_equal(a1, a2))
        checks["attack_randomness"] = _check(
            same,
            {"attack": nm, "reproducible": same, "keys_matter": differ},
            None,
            "the same key gives the same adversarial batch (keys_matter: another key gives "
            "another one; False means every start converges to the same points)",
            "a randomised model: results change between identical calls (use EOT)",
        )
    else:
        checks["attack_randomness"] = _check(None, None, None, "no randomised attack", "")

    # 9. The black-box attack must not beat the white-box ones.
    checks["black_box_not_stronger"] = _black_box_check(
        cfg, built, report, per_attack_correct, small, run_attack, ns
    )

    for name, c in checks.items():
        if c["passed"] is False:
            warnings.warn(
                f"sanity check '{name}' failed ({c['detail']}: {c['value']}); "
                f"likely cause: {c['likely_cause']}",
                stacklevel=3,
            )
    return checks


def _black_box_check(cfg, built, report, per_attack_correct, small, run_attack, ns) -> dict:
    """Extra successes of black-box attacks over the white-box ones at the same threat model.

    Inside an ensemble, per component (as AutoAttack's own check): the fraction of
    examples a black-box component fooled that every white-box component before it left
    robust. Across separately configured attacks: the fraction fooled by a black-box
    attack but robust to every white-box attack (and white-box component) at its norm and
    eps. Without any black-box attack, a short Square run on the first examples plays
    that part.
    """
    white_robust = getattr(small, "parent_white_box_robust", None) or {}
    threshold = cfg["sanity_black_box_max_fraction"]
    details: dict[str, Any] = {}
    worst = 0.0
    for name, attack in built:
        if attack.kind != "ensemble":
            continue
        seen_white = False
        for comp in attack.components:
            if comp.white_box:
                seen_white = True
            elif seen_white:
                frac = report["attacks"][name]["components"][comp.name]["newly_fooled_fraction"]
                details[f"{name}/{comp.name}"] = {"fraction_only_black_box_fools": frac}
                worst = max(worst, frac)

    def white_box_robust_at(tm, n_slice=None):
        arrays = [
            white_robust[nm] for nm, a in built if nm in white_robust and (a.norm, a.eps) == tm
        ]
        if not arrays:
            return None
        out = np.logical_and.reduce(arrays)
        return out if n_slice is None else out[:n_slice]

    blacks = [(nm, a) for nm, a in built if a.kind == "black_box"]
    for nm, attack in blacks:
        wb = white_box_robust_at((attack.norm, attack.eps))
        if wb is None:
            continue
        frac = float(np.mean(wb & ~per_attack_correct[nm]))
        details[nm] = {"fraction_only_black_box_fools": frac}
        worst = max(worst, frac)
    has_black = bool(blacks) or any(not c.white_box for _, a in built for c in a.components)
    if not has_black and white_robust:
        first = next(a for nm, a in built if nm in white_robust)
        tm = (first.norm, first.eps)
        if tm[0] in ("linf", "l2"):
            sq = build_attack(
                {"name": "square", "norm": tm[0], "eps": tm[1],
                 "num_queries": cfg["sanity_square_queries"]}
            )  # fmt: skip
            sq_correct = run_attack(sq, "sanity/square")
            frac = float(np.mean(white_box_robust_at(tm, ns) & ~sq_correct))
            details["square(sanity)"] = {
                "fraction_only_black_box_fools": frac,
                "num_queries": cfg["sanity_square_queries"],
            }
            worst = max(worst, frac)
    if not details:
        return _check(None, None, None, "no black-box attack at a white-box threat model", "")
    return _check(
        worst <= threshold,
        details,
        threshold,
        "fraction of examples fooled by a black-box attack but robust to every white-box "
        "attack at the same threat model",
        "gradient masking: white-box gradients are uninformative (try BPDA/EOT, margin "
        "loss, more restarts; --mode analyze with configs/black_box_gap.py shows where the "
        "white-box attacks stall); quote the worst case that includes the black-box attack",
    )


# ----------------------------------------------------------------------------- figure


def plot_eps_curve(report_section: Mapping[str, Any], path: str) -> str:
    """Robust accuracy against eps (the sweep) with each attack's point, as a PNG.

    Args:
      report_section: the dict returned by `evaluate`.
      path: output PNG path.

    Returns:
      The path written.
    """
    import matplotlib.pyplot as plt

    from advjax import plots

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sweep = report_section.get("eps_sweep")
    if sweep:
        ax.plot(
            sweep["eps"],
            sweep["robust_accuracy"],
            marker="o",
            ms=3,
            label=f"{sweep['attack']} ({sweep['norm']})",
        )
        if sweep.get("robust_accuracy_envelope") != sweep["robust_accuracy"]:
            ax.plot(
                sweep["eps"], sweep["robust_accuracy_envelope"], ls="--", lw=1, label="envelope"
            )
    for name, meta in report_section.get("attacks", {}).items():
        ax.scatter([meta["eps"]], [meta["robust_accuracy"]], marker="x", label=name, zorder=3)
    ax.axhline(
        report_section.get("clean_accuracy", np.nan), color="gray", lw=0.8, ls=":", label="clean"
    )
    norm = sweep["norm"] if sweep else ""
    ax.set_xlabel(f"eps ({norm})" if norm else "eps")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save(fig, path)
