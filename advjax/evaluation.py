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

import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from advjax import geometry, losses
from advjax.attacks import ATTACKS, name_id

LogitsFn = Callable[[jax.Array], jax.Array]

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


class _Runner:
    """Runs jitted per-batch functions over index sets with one padded batch shape."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, pbar):
        self.x, self.y, self.batch_size, self.pbar = x, y, batch_size, pbar

    def run(self, fn, idx: np.ndarray, keys: jax.Array | None = None, *extra) -> list[np.ndarray]:
        """``fn(x_b, y_b, keys_b, *extra)`` over ``idx`` in padded batches.

        Outputs have the batch first; returns them per index of ``idx``.
        """
        idx = np.asarray(idx, dtype=np.int64)
        outs: list[list[np.ndarray]] = []
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            pad = np.concatenate([b, np.repeat(b[-1:], self.batch_size - len(b))])
            args = [jnp.asarray(self.x[pad]), jnp.asarray(self.y[pad])]
            if keys is not None:
                args.append(keys[pad])
            res = fn(*args, *extra)
            res = res if isinstance(res, tuple) else (res,)
            outs.append([np.asarray(r)[: len(b)] for r in res])
            if self.pbar is not None:
                self.pbar.update(len(b))
        if not outs:
            return []
        return [np.concatenate([o[i] for o in outs], axis=0) for i in range(len(outs[0]))]


def _make_attack_fn(attack, logits_fn: LogitsFn, bounds, norm: str, eps: float):
    """Jitted ``(x, y, keys) -> (correct_adv, pert_norm, in_box)`` for one attack."""
    lo, hi = bounds

    def fn(x, y, keys):
        x_adv = attack(logits_fn, x, y, keys, bounds=bounds)
        correct = jnp.argmax(logits_fn(x_adv), axis=1) == y
        pert = geometry.lp_norm(x_adv - x, norm=norm)
        flat = x_adv.reshape(x.shape[0], -1)
        in_box = jnp.all((flat >= lo) & (flat <= hi), axis=1)
        return correct, pert, in_box

    return jax.jit(fn)


def _make_sweep_fn(attack, logits_fn: LogitsFn, bounds, chunk_size: int):
    """Jitted ``(x, y, keys, eps_grid) -> correct (batch, num_eps)``: vmap over eps."""

    def fn(x, y, keys, eps_grid):
        def one(eps):
            x_adv = attack(logits_fn, x, y, keys, bounds=bounds, eps=eps)
            return jnp.argmax(logits_fn(x_adv), axis=1) == y

        if chunk_size >= eps_grid.shape[0]:
            # One vmap, no loop: XLA:CPU runs convolutions inside loops much slower.
            return jax.vmap(one)(eps_grid).T
        return jax.lax.map(one, eps_grid, batch_size=chunk_size).T

    return jax.jit(fn)


# ----------------------------------------------------------------------------- evaluate


def _attack_meta(name: str, attack, cfg: dict[str, Any]) -> dict[str, Any]:
    conf = dict(getattr(attack, "config", cfg))
    return {
        "name": cfg["name"],
        "norm": conf.get("norm", "linf"),
        "eps": float(conf["eps"]),
        "budget": dict(getattr(attack, "budget", {})),
        "white_box": bool(getattr(attack, "white_box", True)),
        "config": {k: v for k, v in conf.items() if _jsonable(v)},
    }


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool | type(None)) or (
        isinstance(v, list | tuple) and all(_jsonable(u) for u in v)
    )


def evaluate(
    eval_config: Any,
    logits_fn: LogitsFn,
    x: np.ndarray,
    y: np.ndarray,
    *,
    key: jax.Array,
    bounds: tuple[float, float] = (0.0, 1.0),
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
      logits_fn: eval-mode ``x -> logits``.
      x: inputs, numpy ``(n, ...)`` in ``bounds``.
      y: integer labels ``(n,)``.
      key: PRNG key; every attack and example derives its own key from it.
      bounds: input box ``(lo, hi)``.

    Returns:
      A JSON-serialisable report section (see the keys below).
    """
    cfg = _validate(eval_config)
    bounds = (float(bounds[0]), float(bounds[1]))
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int32)
    if cfg["num_examples"] > 0:
        x, y = x[: cfg["num_examples"]], y[: cfg["num_examples"]]
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("evaluate: no examples to evaluate")
    built = []
    for name, acfg in cfg["attacks"]:
        attack = ATTACKS.get(acfg["name"], key=f"eval.attacks.{name}.name")(acfg)
        built.append((name, acfg, attack))
    sweep_name = _pick_sweep_attack(cfg, built)
    components = sum(len(getattr(a, "components", [None])) for _, _, a in built)
    total = n * (1 + components + (1 if sweep_name else 0))
    pbar = tqdm(total=total, desc="evaluate", unit="ex", disable=not cfg["progress"])
    runner = _Runner(x, y, cfg["batch_size"], pbar)
    all_idx = np.arange(n)

    clean_fn = jax.jit(lambda xb, yb: jnp.argmax(logits_fn(xb), axis=1) == yb)
    clean_correct = runner.run(clean_fn, all_idx)[0].astype(bool)
    report: dict[str, Any] = {
        "num_examples": n,
        "batch_size": cfg["batch_size"],
        "bounds": list(bounds),
        "seed": {"key_data": _key_data(key)},
        "clean_accuracy": float(clean_correct.mean()),
        "attacks": {},
    }
    per_attack_correct: dict[str, np.ndarray] = {}
    budget_violations: dict[str, float] = {}
    for name, acfg, attack in built:
        meta = _attack_meta(name, attack, acfg)
        meta["seed"] = {"fold_in": _attack_id(name)}
        keys = _example_keys(key, _attack_id(name), n)
        robust = clean_correct.copy()
        t0 = time.perf_counter()
        parts = getattr(attack, "components", None) or [(meta["name"], attack)]
        comp_report = {}
        for comp_name, comp in parts:
            comp_keys = keys if len(parts) == 1 else _fold_keys(keys, _attack_id(comp_name))
            fn = _make_attack_fn(comp, logits_fn, bounds, meta["norm"], meta["eps"])
            idx = np.flatnonzero(robust)
            if len(idx):
                correct, pert, in_box = runner.run(fn, idx, comp_keys)
                robust[idx] = correct.astype(bool)
                excess = np.max(pert - meta["eps"] * (1 + _BUDGET_RTOL) - 1e-6, initial=0.0)
                if excess > 0 or not np.all(in_box):
                    budget_violations[f"{name}/{comp_name}"] = float(max(excess, 0.0))
            if pbar is not None:
                pbar.update(n - len(idx))
            comp_report[comp_name] = {
                "robust_accuracy_after": float(robust.mean()),
                "budget": dict(getattr(comp, "budget", {})),
            }
        meta["robust_accuracy"] = float(robust.mean())
        meta["time_s"] = round(time.perf_counter() - t0, 3)
        if len(parts) > 1:
            meta["components"] = comp_report
        report["attacks"][name] = meta
        per_attack_correct[name] = robust

    report["worst_case"] = _worst_case(report["attacks"], per_attack_correct, clean_correct)
    report["robust_accuracy"] = report["worst_case"]["robust_accuracy"]

    if sweep_name:
        report["eps_sweep"] = _eps_sweep(
            sweep_name, built, cfg, logits_fn, key, runner, clean_correct, bounds
        )
    else:
        report["eps_sweep"] = None
    pbar.close()

    if cfg["sanity_checks"]:
        checks = _sanity_checks(
            cfg,
            built,
            report,
            per_attack_correct,
            budget_violations,
            logits_fn,
            x,
            y,
            key,
            bounds,
        )
        report["sanity_checks"] = checks
        report["sanity_passed"] = all(c["passed"] is not False for c in checks.values())
    else:
        report["sanity_checks"] = {}
        report["sanity_passed"] = None
    return report


def _fold_keys(keys: jax.Array, data: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def _pick_sweep_attack(cfg: dict[str, Any], built) -> str:
    if not cfg["eps_grid"]:
        return ""
    names = [name for name, _, _ in built]
    if cfg["sweep_attack"]:
        if cfg["sweep_attack"] not in names:
            raise ValueError(
                f"config key 'eval.sweep_attack': got {cfg['sweep_attack']!r}; allowed: {names}"
            )
        return cfg["sweep_attack"]

    # Prefer an iterative white-box attack: the sweep should be the strongest single one.
    def rank(item):
        _, acfg, attack = item
        plain = getattr(attack, "white_box", True) and not getattr(attack, "components", None)
        return (not plain, acfg["name"] == "fgsm")

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


def _eps_sweep(sweep_name, built, cfg, logits_fn, key, runner, clean_correct, bounds) -> dict:
    name, acfg, attack = next(b for b in built if b[0] == sweep_name)
    meta = _attack_meta(name, attack, acfg)
    grid = np.asarray(cfg["eps_grid"], np.float32)
    keys = _example_keys(key, _attack_id(name + "/sweep"), runner.x.shape[0])
    fn = _make_sweep_fn(attack, logits_fn, bounds, cfg["sweep_chunk_size"])
    t0 = time.perf_counter()
    correct = runner.run(fn, np.arange(runner.x.shape[0]), keys, jnp.asarray(grid))[0].T
    correct = correct.astype(bool) & clean_correct[None]
    # An example robust at eps is robust at every smaller eps (nested balls); the
    # envelope reports that bound, the raw curve is what the attack found.
    envelope = np.logical_and.accumulate(correct, axis=0)
    return {
        "attack": name,
        "norm": meta["norm"],
        "budget": meta["budget"],
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
    cfg, built, report, per_attack_correct, budget_violations, logits_fn, x, y, key, bounds
) -> dict[str, dict]:
    ns = min(cfg["sanity_num_examples"], x.shape[0])
    xs, ys = jnp.asarray(x[:ns]), jnp.asarray(y[:ns])
    bs = min(cfg["batch_size"], ns)
    small = _Runner(x[:ns], y[:ns], bs, None)
    idx = np.arange(ns)
    checks: dict[str, dict] = {}
    logits_jit = jax.jit(logits_fn)
    logits = np.asarray(logits_jit(xs[:bs]))

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

    # 2. Deterministic, batch-independent predictions (a model in train mode or a
    # randomised model breaks both).
    again = np.asarray(logits_jit(xs[:bs]))
    rev = np.asarray(logits_jit(xs[:bs][::-1]))[::-1]
    single = np.asarray(logits_jit(xs[:1]))
    scale = max(1.0, float(np.abs(logits).max()))
    repeat_diff = float(np.abs(again - logits).max()) / scale
    batch_diff = max(float(np.abs(rev - logits).max()), float(np.abs(single - logits[:1]).max()))
    batch_diff /= scale
    checks["deterministic_model"] = _check(
        repeat_diff < 1e-5,
        repeat_diff,
        1e-5,
        "max relative change of the logits between two identical calls",
        "a randomised model: evaluate with EOT (advjax.attacks.wrappers.eot)",
    )
    checks["batch_independent_predictions"] = _check(
        batch_diff < 1e-4,
        batch_diff,
        1e-4,
        "max relative change of an example's logits when the batch is reordered or split",
        "wrong model mode: BatchNorm/dropout in train mode during evaluation",
    )

    # 3. Fraction of examples whose input gradient is exactly zero.
    grad_fn = jax.jit(jax.grad(lambda xb, yb: jnp.sum(losses.cross_entropy(logits_fn(xb), yb))))
    gnorm = small.run(lambda xb, yb: geometry.lp_norm(grad_fn(xb, yb), norm="l1"), idx)[0]
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

    white = [(nm, c, a) for nm, c, a in built if getattr(a, "white_box", True)]
    iterative = [(nm, c, a) for nm, c, a in white if report["attacks"][nm]["name"] != "fgsm"]

    # 5. Iterative attacks at least as strong as FGSM at the same norm and eps.
    fgsm_results = {}
    worst_gap = 0.0
    details = {}
    for nm, _, _ in iterative:
        meta = report["attacks"][nm]
        tm = (meta["norm"], meta["eps"])
        if tm not in fgsm_results:
            fg = ATTACKS.get("fgsm")({"name": "fgsm", "norm": tm[0], "eps": tm[1]})
            fn = _make_attack_fn(fg, logits_fn, bounds, tm[0], tm[1])
            keys = _example_keys(key, _attack_id("sanity/fgsm"), ns)
            fgsm_results[tm] = small.run(fn, idx, keys)[0].astype(bool)
        it_acc = float(per_attack_correct[nm][:ns].mean())
        fg_acc = float(fgsm_results[tm].mean())
        details[nm] = {"iterative": it_acc, "fgsm": fg_acc}
        worst_gap = max(worst_gap, it_acc - fg_acc)
    if iterative:
        checks["iterative_stronger_than_fgsm"] = _check(
            worst_gap <= 1.0 / ns + 1e-9,
            details,
            "acc(iterative) <= acc(FGSM) + 1 example",
            "robust accuracy on the first examples: iterative attack vs FGSM",
            "gradient masking or too small a step size / too few steps",
        )
    else:
        checks["iterative_stronger_than_fgsm"] = _check(None, None, None, "no iterative attack", "")

    # 6. Close to zero robust accuracy when the ball covers the whole box.
    if white:
        meta = report["attacks"][white[0][0]]
        norm = meta["norm"]
        big = _budget_eps(norm, bounds, int(np.prod(x.shape[1:])))
        pg = ATTACKS.get("pgd")(
            {
                "name": "pgd",
                "norm": norm,
                "eps": big,
                "num_steps": 20,
                "step_size": big / 8,
                "loss": "margin",
            }
        )
        fn = _make_attack_fn(pg, logits_fn, bounds, norm, big)
        keys = _example_keys(key, _attack_id("sanity/large_eps"), ns)
        acc = float(small.run(fn, idx, keys)[0].mean())
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

    # 8. Attack randomness: same key -> same result, different key -> different start.
    rnd = [(nm, c, a) for nm, c, a in white if getattr(a, "config", {}).get("random_start", False)]
    if rnd:
        nm, _, a = rnd[0]
        xb, yb = xs[:bs], ys[:bs]
        k1 = _example_keys(key, 1, bs)
        k2 = _example_keys(key, 2, bs)
        run = jax.jit(lambda xx, yy, kk: a(logits_fn, xx, yy, kk, bounds=bounds))
        a1, a1b, a2 = (np.asarray(run(xb, yb, k)) for k in (k1, k1, k2))
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
        cfg, built, report, per_attack_correct, logits_fn, key, bounds, small, idx, ns
    )

    for name, c in checks.items():
        if c["passed"] is False:
            warnings.warn(
                f"sanity check '{name}' failed ({c['detail']}: {c['value']}); "
                f"likely cause: {c['likely_cause']}",
                stacklevel=3,
            )
    return checks


def _black_box_check(
    cfg, built, report, per_attack_correct, logits_fn, key, bounds, small, idx, ns
) -> dict:
    white = [nm for nm, _, a in built if getattr(a, "white_box", True)]
    black = [nm for nm, _, a in built if not getattr(a, "white_box", True)]
    if not white:
        return _check(None, None, None, "no white-box attack", "")
    details = {}
    worst = 0.0
    if black:
        for b in black:
            tm = (report["attacks"][b]["norm"], report["attacks"][b]["eps"])
            same = [
                w
                for w in white
                if (report["attacks"][w]["norm"], report["attacks"][w]["eps"]) == tm
            ]
            if not same:
                continue
            wb_robust = np.logical_and.reduce([per_attack_correct[w] for w in same])
            found = float(np.mean(wb_robust & ~per_attack_correct[b]))
            details[b] = {"fraction_only_black_box_fools": found}
            worst = max(worst, found)
    else:
        w = white[0]
        meta = report["attacks"][w]
        if meta["norm"] not in ("linf", "l2") or "square" not in ATTACKS:
            return _check(None, None, None, "no black-box attack for this norm", "")
        sq = ATTACKS.get("square")(
            {
                "name": "square",
                "norm": meta["norm"],
                "eps": meta["eps"],
                "num_queries": cfg["sanity_square_queries"],
            }
        )
        fn = _make_attack_fn(sq, logits_fn, bounds, meta["norm"], meta["eps"])
        keys = _example_keys(key, _attack_id("sanity/square"), ns)
        sq_correct = small.run(fn, idx, keys)[0].astype(bool)
        wb_robust = np.logical_and.reduce(
            [
                per_attack_correct[v][:ns]
                for v in white
                if (report["attacks"][v]["norm"], report["attacks"][v]["eps"])
                == (meta["norm"], meta["eps"])
            ]
        )
        worst = float(np.mean(wb_robust & ~sq_correct))
        details["square(sanity)"] = {
            "fraction_only_black_box_fools": worst,
            "num_queries": cfg["sanity_square_queries"],
        }
    if not details:
        return _check(None, None, None, "no black-box attack at a white-box threat model", "")
    return _check(
        worst <= 0.0,
        details,
        0.0,
        "fraction of examples fooled by the black-box attack but robust to all white-box ones",
        "gradient masking: white-box gradients are uninformative (try BPDA/EOT, margin loss)",
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
