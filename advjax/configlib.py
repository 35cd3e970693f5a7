"""Config loading, validation before any compute, and workdir ownership.

`validate` walks a full config and raises `ConfigError` naming the key, the bad value
and what is allowed. `claim_workdir` writes ``config.json`` on a run's first start and
refuses to continue a workdir that was written by a different config, so a finished
run is never overwritten by another one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any

import ml_collections

from advjax import registry
from advjax.attacks import ATTACKS
from advjax.data import DATA_SOURCES
from advjax.experiments import ANALYSES
from advjax.objectives import OBJECTIVES


class ConfigError(ValueError):
    """A config key holds a value advjax cannot use; the message names key and fix."""


NORMS = ("linf", "l2", "l1")
# Keys that may change between the start of a run and its resumption.
RESUMABLE_KEYS = ("eval", "analysis", "train.progress", "train.log_every_steps", "checkpoint.keep")


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``"path/to/config.py[:arg]"`` by calling its ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    # Configs import their shared defaults as `configs.base`: put the repo root on the path.
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.insert(0, root)
    module_spec = importlib.util.spec_from_file_location(
        f"advjax_config_{abs(hash(os.path.abspath(path)))}", path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None) if arg else module.get_config()


def _walk(cfg: Any, prefix: str = ""):
    if isinstance(cfg, (ml_collections.ConfigDict, dict)):
        for k in cfg.keys():
            yield from _walk(cfg[k], f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, cfg


def _require(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': got {value!r}; {allowed}")


def check_attack_config(attack, *, key: str) -> None:
    """Validates the fields every attack shares; attack builders check the rest."""
    ATTACKS.check(attack.name, key=f"{key}.name")
    if "norm" in attack:
        _require(attack.norm in NORMS, f"{key}.norm", attack.norm, f"allowed: {list(NORMS)}")
    for field in ("num_steps", "num_restarts"):
        if field in attack:
            _require(int(attack[field]) >= 1, f"{key}.{field}", attack[field], "must be >= 1")


def validate(config) -> None:
    """Checks every value that can be checked without data or compute.

    Raises:
      ConfigError: naming the key, the bad value and what is allowed.
    """
    for section in ("data", "model", "train", "eval", "checkpoint"):
        if section not in config:
            raise ConfigError(f"config has no section '{section}'; start from configs/base.py")
    from advjax.data import source_name

    try:
        DATA_SOURCES.check(source_name(config.data.name), key="data.name")
    except registry.UnknownNameError as err:
        raise ConfigError(f"{err}; prefixed forms: tfds:<name>, idx:<folder>") from None
    from advjax import models

    try:
        models.check_model_config(config.model)
        OBJECTIVES.check(config.train.objective.name, key="train.objective.name")
    except (registry.UnknownNameError, ValueError) as err:
        raise ConfigError(str(err)) from None
    for key, value in _walk(config):
        leaf = key.rsplit(".", 1)[-1]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if leaf.startswith("eps") and numeric:
            _require(value >= 0, key, value, "eps must be >= 0")
        if leaf == "eps_grid":
            _require(all(e >= 0 for e in value), key, list(value), "every eps must be >= 0")
        if leaf == "norm":
            _require(value in NORMS, key, value, f"allowed: {list(NORMS)}")
    t = config.train
    _require(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _require(
        t.num_epochs > 0 or t.num_steps > 0,
        "train.num_epochs",
        t.num_epochs,
        "must be > 0 (or set train.num_steps)",
    )
    _require(t.num_steps >= 0, "train.num_steps", t.num_steps, "must be >= 0")
    _require(0 <= t.ema_decay < 1, "train.ema_decay", t.ema_decay, "must be in [0, 1)")
    _require(
        0 <= t.eps_ramp_fraction <= 1,
        "train.eps_ramp_fraction",
        t.eps_ramp_fraction,
        "must be in [0, 1]",
    )
    _require(t.log_every_steps >= 1, "train.log_every_steps", t.log_every_steps, "must be >= 1")
    _require(t.eval_every_steps >= 0, "train.eval_every_steps", t.eval_every_steps, "must be >= 0")
    _require(t.early_stop_drop >= 0, "train.early_stop_drop", t.early_stop_drop, "must be >= 0")
    if t.val_attack.name != "none":
        check_attack_config(t.val_attack, key="train.val_attack")
    if "attack" in t.objective:
        check_attack_config(t.objective.attack, key="train.objective.attack")
    from advjax import optim

    try:
        optim.check_optimizer_config(t.optimizer, total_steps=1)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _require(config.eval.batch_size >= 1, "eval.batch_size", config.eval.batch_size, "must be >= 1")
    _require(
        config.eval.num_examples >= 0,
        "eval.num_examples",
        config.eval.num_examples,
        "must be >= 0 (0 = whole test set)",
    )
    for name in config.eval.attacks.keys():
        check_attack_config(config.eval.attacks[name], key=f"eval.attacks.{name}")
    _require(
        config.checkpoint.every_steps >= 1,
        "checkpoint.every_steps",
        config.checkpoint.every_steps,
        "must be >= 1",
    )
    _require(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, "must be >= 1")
    if config.get("analysis") and config.analysis.get("name"):
        try:
            ANALYSES.check(config.analysis.name, key="analysis.name")
        except registry.UnknownNameError as err:
            raise ConfigError(str(err)) from None


def to_json(config) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = set(old) | set(new)
    out = []
    for k in sorted(keys):
        path = f"{prefix}.{k}" if prefix else k
        if any(path == r or path.startswith(r + ".") for r in RESUMABLE_KEYS):
            continue
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, path))
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def claim_workdir(config, workdir: str) -> None:
    """Writes ``workdir/config.json``, or checks that the workdir's run is this config.

    Raises:
      ConfigError: the workdir holds a run of a different config (keys listed), so
        continuing would mix two runs' checkpoints.
    """
    path = os.path.join(workdir, "config.json")
    new = json.loads(to_json(config))
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = _differences(old, new)
        if diff:
            raise ConfigError(
                f"{workdir} holds a run with a different config ({'; '.join(diff[:5])}). "
                f"Its checkpoints are kept untouched: use a fresh --workdir for this config, "
                f"or the original config to resume it."
            )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(to_json(config))
    os.replace(tmp, path)
