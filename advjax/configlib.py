"""Configs as data: loading, command-line overrides, one validation, workdir ownership.

Every user error ends here as a `ConfigError` whose one-line message names the key (or
file), the bad value and what is allowed, raised before anything is written or
computed:

* `load_config` loads ``path/to/config.py[:arg]``, checking the file, its ``ARGS``
  (the arguments it accepts) and its ``get_config``.
* `override` applies ``--config.a.b=value``: the key must exist, the value is parsed
  to the key's type (lists and tuples as Python literals). Keys of the ``eps`` section
  are shared (an ml-collections ``FieldReference``), so ``--config.eps.linf=0.2``
  changes every attack that reads it; overriding one attack's ``eps`` changes that
  attack alone.
* `validate` checks the whole config once: names, numbers, norms, every attack of
  training, validation and evaluation and every objective (built through their own
  registry builders, not run), the device count, and the analysis settings through the
  ``validate(config)`` of the module that registers the analysis.
* `check_workdir` and `claim_workdir` make sure a workdir is a folder holding either
  nothing or a run of this config, so a finished run is never overwritten by another.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import traceback
from typing import Any

import ml_collections

from advjax import registry
from advjax.geometry import NORMS


class ConfigError(ValueError):
    """A config, an override or a workdir advjax cannot use; the message names the fix."""


# Keys that may change between the start of a run and its resumption. ``eps`` is the
# source of the attacks' eps values, which are compared where they are used.
RESUMABLE_KEYS = (
    "eps",
    "eval",
    "analysis",
    "train.progress",
    "train.log_every_steps",
    "train.divergence",
    "train.tensorboard",
    "checkpoint.keep",
    "model.torch_checkpoint",
)
# Sections whose keys are shared by reference (`override` sets them in place).
SHARED_SECTIONS = ("eps",)


def one_line(message: str) -> str:
    """``message`` with all whitespace runs (newlines included) collapsed to one space."""
    return " ".join(str(message).split())


def _line_in(err: Exception, path: str) -> str:
    """ " at line N", the last line of ``path`` in ``err``'s traceback ("" if none)."""
    target = os.path.abspath(path)
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == target]
    return f" at line {lines[-1]}" if lines else ""


def _user_error(err: Exception, prefix: str = "") -> ConfigError:
    return ConfigError(one_line(f"{prefix}{err}"))


# ----------------------------------------------------------------------------- loading


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``"path/to/config.py[:arg]"`` by calling its ``get_config(arg)``.

    A config module may list the arguments it accepts in ``ARGS``; ``arg`` is a
    comma-separated list of them.

    Raises:
      ConfigError: no such file, a file that cannot be imported (syntax error), no
        ``get_config``, an argument outside ``ARGS``, or a ``get_config`` that refuses
        its argument.
    """
    path, _, arg = spec.partition(":")
    if not path:
        raise ConfigError("--config is empty; give a config file, e.g. configs/mnist_fast.py")
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise ConfigError(f"config file {path!r} {what}; the configs are in configs/*.py")
    # Configs import their shared defaults as `configs.base`: put the repo root on the path.
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.insert(0, root)
    module_spec = importlib.util.spec_from_file_location(
        f"advjax_config_{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]}", path
    )
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ConfigError(
            f"config file {path!r} has a syntax error at line {err.lineno}: {err.msg}"
        ) from None
    except ImportError as err:
        raise ConfigError(f"config file {path!r} cannot be imported: {one_line(err)}") from None
    except Exception as err:
        raise ConfigError(
            f"config file {path!r}{_line_in(err, path)}: {type(err).__name__}: {one_line(err)}"
        ) from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path!r} defines no get_config(arg) function")
    allowed = getattr(module, "ARGS", None)
    if arg and allowed is not None:
        unknown = [a for a in arg.split(",") if a not in allowed]
        if unknown:
            raise ConfigError(
                f"config argument {unknown[0]!r} of {path!r} is unknown; "
                f"allowed: {', '.join(allowed) or 'none'} (comma-separated)"
            )
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except ValueError as err:
        raise _user_error(err, f"config {spec!r}: ") from None
    except Exception as err:  # A bug in the config file itself: say where.
        raise ConfigError(
            f"config file {path!r}{_line_in(err, path)}: get_config raised "
            f"{type(err).__name__}: {one_line(err)}"
        ) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path!r}: get_config must return a ConfigDict")
    model = config.get("model")
    if isinstance(model, ml_collections.ConfigDict) and "torch_checkpoint" not in model:
        # Every config takes --config.model.torch_checkpoint, also one that replaces
        # the base config's model section.
        with model.unlocked():
            model.torch_checkpoint = ""
    return config


# ---------------------------------------------------------------------------- overrides

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_value(raw: str, current: Any, key: str) -> Any:
    """``raw`` (a command-line string) as a value of ``current``'s type."""

    def bad(what: str) -> ConfigError:
        return ConfigError(f"config key '{key}': got {raw!r}; {what}")

    if isinstance(current, bool):
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise bad("expected a bool (True or False)")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise bad("expected an integer") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise bad("expected a number") from None
    if isinstance(current, str):
        return raw
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(raw) if raw.strip() else ()
        except (ValueError, SyntaxError):
            example = repr(tuple(current)) if current else "(0.1, 0.2)"
            quoted = ", names in quotes" if any(isinstance(v, str) for v in current) else ""
            raise bad(f"expected a Python list such as {example!r} or '[]'{quoted}") from None
        if not isinstance(value, (tuple, list)):
            value = (value,)
        return type(current)(value)
    if current is None:
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    raise bad(f"keys of type {type(current).__name__} cannot be set from the command line")


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def override(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
    """Sets ``config.<key>`` from the command-line string ``raw``.

    Raises:
      ConfigError: the key does not exist (with the closest existing key), names a
        section rather than a value, or ``raw`` does not parse to the key's type.
    """
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"config key '{'.'.join(parts[:i])}' is a value, not a section")
        if part not in node:
            raise ConfigError(
                f"config key '{key}' does not exist; {_suggest(part, node.keys())}"
                f"keys of {where}: {', '.join(sorted(node.keys()))}"
            )
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        keys = sorted(current.keys())
        raise ConfigError(
            f"config key '{key}' is a section; override its keys ({', '.join(keys)}), "
            f"e.g. --config.{key}.{keys[0] if keys else 'x'}=..."
        )
    value = _parse_value(raw, current, key)
    if parts[0] in SHARED_SECTIONS:
        node[leaf] = value  # Sets the shared reference: every key linked to it follows.
        return
    # Replace (not set) the field, so a key linked to a shared value changes alone.
    with node.unlocked():
        del node[leaf]
        node[leaf] = value


# ---------------------------------------------------------------------------- validation


def _walk(cfg: Any, prefix: str = ""):
    if isinstance(cfg, (ml_collections.ConfigDict, dict)):
        for k in cfg.keys():
            yield from _walk(cfg[k], f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, cfg


def _require(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': got {value!r}; {allowed}")


def _keyed(err: Exception, prefix: str) -> ConfigError:
    """A builder's ``"config key 'x'"`` message, with ``x`` given its full path."""
    message = one_line(err)

    def full(match: re.Match) -> str:
        key = match.group(1)
        return f"config key '{key if '.' in key else prefix + '.' + key}'"

    if re.search(r"config key '[^']*'", message):
        return ConfigError(re.sub(r"config key '([^']*)'", full, message))
    return ConfigError(f"config key '{prefix}': {message}")


def check_attack_config(attack, *, key: str) -> None:
    """Builds (does not run) the attack of ``attack`` through its registry builder.

    Raises:
      ConfigError: an unknown attack name or a field its builder rejects, with the key.
    """
    from advjax.attacks import ATTACKS

    if not hasattr(attack, "keys"):
        raise ConfigError(f"config key '{key}': got {attack!r}; must be an attack config section")
    if "name" not in attack:
        raise ConfigError(
            f"config key '{key}.name': missing; name the attack ({', '.join(ATTACKS.names())})"
        )
    try:
        builder = ATTACKS.get(attack.name, key=f"{key}.name")
    except registry.UnknownNameError as err:
        raise _user_error(err) from None
    if "norm" in attack:
        _require(attack.norm in NORMS, f"{key}.norm", attack.norm, f"allowed: {list(NORMS)}")
    try:
        builder(attack)
    except ValueError as err:
        raise _keyed(err, key) from None


def _analysis_validator(name: str):
    """The ``validate(config)`` of the module that registers analysis ``name``."""
    from advjax.experiments import ANALYSES

    try:
        run = ANALYSES.get(name, key="analysis.name")
    except registry.UnknownNameError as err:
        raise _user_error(err) from None
    return getattr(inspect.getmodule(run), "validate", None)


_VALIDATED: set[str] = set()


def validate(config) -> None:
    """Checks every value that can be checked without data or compute, once per config.

    Raises:
      ConfigError: naming the key, the bad value and what is allowed.
    """
    fingerprint = to_json(config) if isinstance(config, ml_collections.ConfigDict) else None
    if fingerprint is not None and fingerprint in _VALIDATED:
        return
    _validate(config)
    if fingerprint is not None:
        _VALIDATED.add(fingerprint)


def _validate(config) -> None:
    for section in ("data", "model", "train", "eval", "checkpoint"):
        if section not in config:
            raise ConfigError(f"config has no section '{section}'; start from configs/base.py")
    from advjax import models, optim
    from advjax.data import DATA_SOURCES, source_name
    from advjax.objectives import build_objective

    try:
        DATA_SOURCES.check(source_name(config.data.name), key="data.name")
    except registry.UnknownNameError as err:
        raise ConfigError(f"{err}; prefixed forms: tfds:<name>, idx:<folder>") from None
    for key in ("num_train", "num_test", "num_val"):
        if key in config.data:
            value = config.data[key]
            _require(value >= 0, f"data.{key}", value, "must be >= 0 (0 = all / none)")
    # Seeds key numpy and JAX generators, which take non-negative integers only.
    for key, section in (("seed", config), ("data.seed", config.data)):
        value = section.get("seed")
        if value is not None:
            _require(isinstance(value, int) and value >= 0, key, value, "must be an integer >= 0")
    try:
        models.check_model_config(config.model)
    except ValueError as err:
        raise _user_error(err) from None
    if "eps" in config:
        for norm, eps in config.eps.items():
            _require(norm in NORMS, f"eps.{norm}", norm, f"eps keys are norms: {list(NORMS)}")
            _require(eps >= 0, f"eps.{norm}", eps, "eps must be >= 0")
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
    _require(t.val_examples >= 0, "train.val_examples", t.val_examples, "must be >= 0")
    if "divergence" in t:
        for key in ("loss_factor", "param_norm_factor"):
            value = t.divergence[key]
            _require(value == 0 or value > 1, f"train.divergence.{key}", value, "0 (off) or > 1")
        _require(
            t.divergence.window >= 1, "train.divergence.window", t.divergence.window, "must be >= 1"
        )
    _check_devices(t)
    if t.get("tensorboard", False) and importlib.util.find_spec("tensorboardX") is None:
        raise ConfigError(
            "config key 'train.tensorboard': True needs the tensorboardX package "
            "(pip install tensorboardX); or set it to False"
        )
    if not (hasattr(t.val_attack, "keys") and t.val_attack.get("name") == "none"):
        check_attack_config(t.val_attack, key="train.val_attack")
    if "attack" in t.objective:
        check_attack_config(t.objective.attack, key="train.objective.attack")
    try:
        build_objective(t.objective)
    except ValueError as err:
        raise _keyed(err, "train.objective") from None
    try:
        optim.check_optimizer_config(t.optimizer, total_steps=1)
    except ValueError as err:
        raise _user_error(err) from None
    _require(config.eval.batch_size >= 1, "eval.batch_size", config.eval.batch_size, "must be >= 1")
    _require(
        config.eval.num_examples >= 0,
        "eval.num_examples",
        config.eval.num_examples,
        "must be >= 0 (0 = whole test set)",
    )
    for name in config.eval.attacks.keys():
        check_attack_config(config.eval.attacks[name], key=f"eval.attacks.{name}")
    full = config.eval.get("full_test_set_attacks", ())
    _require(
        isinstance(full, list | tuple) and all(n in config.eval.attacks for n in full),
        "eval.full_test_set_attacks",
        full,
        f"must be a tuple of names of eval.attacks ({', '.join(config.eval.attacks.keys())})",
    )
    _require(
        config.checkpoint.every_steps >= 1,
        "checkpoint.every_steps",
        config.checkpoint.every_steps,
        "must be >= 1",
    )
    _require(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, "must be >= 1")
    if config.get("analysis") and config.analysis.get("name"):
        check = _analysis_validator(config.analysis.name)
        if check is not None:
            try:
                check(config)
            except ValueError as err:
                raise _user_error(err) from None


def _check_devices(t) -> None:
    import jax

    available = len(jax.local_devices())
    _require(
        0 <= t.num_devices <= available,
        "train.num_devices",
        t.num_devices,
        f"this machine has {available} device(s) (0 = all)",
    )
    used = t.num_devices or available
    _require(
        t.batch_size % used == 0,
        "train.batch_size",
        t.batch_size,
        f"must be divisible by the {used} devices of the data-parallel mesh",
    )


# ------------------------------------------------------------------------------ workdir


def to_json(config) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def read_run_config(workdir: str) -> dict | None:
    """The run's ``workdir/config.json`` as a dict, None when absent.

    Raises:
      ConfigError: the file is empty or not JSON (it was damaged outside advjax).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            stored = json.load(f)
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
    except (ValueError, OSError) as err:
        raise ConfigError(
            f"{path} is empty or damaged ({one_line(err)[:80]}); it records which config "
            f"made the run: restore it, or use a fresh --workdir"
        ) from None
    return stored


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


def check_workdir(config, workdir: str, mode: str = "train") -> None:
    """Checks ``workdir`` for ``mode`` without writing anything.

    Raises:
      ConfigError: the workdir is a file, its config.json is damaged or belongs to a
        different config (train), or it holds no run to evaluate (eval).
    """
    if not workdir:
        raise ConfigError("--workdir is empty; give the run folder, e.g. runs/mnist_fast")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir!r} is a file, not a folder; choose another path")
    parent = os.path.dirname(os.path.abspath(workdir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--workdir {workdir!r}: {parent!r} is a file, not a folder")
    torch_checkpoint = config.get("model", {}).get("torch_checkpoint", "")
    if torch_checkpoint and not os.path.isfile(torch_checkpoint):
        raise ConfigError(f"config key 'model.torch_checkpoint': no such file {torch_checkpoint!r}")
    if mode == "eval" and torch_checkpoint:
        pass  # Evaluates the imported PyTorch model: the workdir only receives the report.
    elif mode == "eval":
        stored = read_run_config(workdir) if os.path.isdir(workdir) else None
        if stored is None or not os.path.exists(os.path.join(workdir, "dataset_info.json")):
            raise ConfigError(
                f"--workdir {workdir!r} holds no trained run (no config.json / "
                f"dataset_info.json): train it first with --mode train"
            )
    elif mode == "train":
        _check_same_run(config, workdir)


def _check_same_run(config, workdir: str) -> None:
    """Raises `ConfigError` when ``workdir`` holds a run of another config, or files
    and no run at all; an absent or empty folder, or this config's run, passes."""
    old = read_run_config(workdir)
    if old is None:
        if os.path.isdir(workdir) and os.listdir(workdir):
            # Training writes config.json first thing: a non-empty folder without one
            # is someone else's (a home folder, /tmp, another tool's output).
            raise ConfigError(
                f"{workdir} is a folder with other files in it and no advjax run "
                "(no config.json): a run writes checkpoints, metrics and figures there, so "
                "give a new or empty folder as the workdir"
            )
        return
    diff = _differences(old, json.loads(to_json(config)))
    if diff:
        raise ConfigError(
            f"{workdir} holds a run with a different config ({'; '.join(diff[:5])}). "
            f"Its checkpoints are kept untouched: use a fresh --workdir for this config, "
            f"or the original config to resume it."
        )


def claim_workdir(config, workdir: str) -> None:
    """Writes ``workdir/config.json``, or checks that the workdir's run is this config.

    Raises:
      ConfigError: the workdir holds a run of a different config (keys listed), so
        continuing would mix two runs' checkpoints.
    """
    _check_same_run(config, workdir)
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(to_json(config))
    os.replace(tmp, path)
