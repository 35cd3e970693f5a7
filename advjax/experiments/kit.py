"""The experiment drivers' shared kit: report writing, config hashes, sub-configs by name.

Every driver writes its report with `write_report` (atomic, process 0 only in a
multi-process run), keys caches and run folders with `config_hash`, and loads the
configs of the models it trains with `load_sub_config` (a config file by name, relative
to the repository, with strict overrides), so no driver keeps its own copy.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_report(path: str, obj: Any) -> str:
    """Writes ``obj`` as JSON to ``path`` atomically (creating its folder); returns the path."""
    from advjax import runs

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    runs.write_json(path, obj)
    return path


def config_hash(obj: Any) -> str:
    """A 16-hex-digit hash of a JSON-able object (a config dict, settings)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check(cond: bool, key: str, value, allowed: str) -> None:
    """Raises ``ValueError("config key 'analysis.<key>': got <value>; <allowed>")``
    unless ``cond``: the analyses' settings checks, before any compute."""
    if not cond:
        raise ValueError(f"config key 'analysis.{key}': got {value!r}; {allowed}")


def check_config_file(spec: str, key: str) -> None:
    """`check` that the config file of ``spec`` ("configs/<file>.py[:arg]", relative to
    the working directory or the repository root) exists."""
    path = spec.partition(":")[0]
    check(
        os.path.exists(path) or os.path.exists(os.path.join(REPO, path)),
        key,
        spec,
        "no such config file",
    )


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict, *, prefix: str) -> None:
    """Sets existing keys only, so a misspelt override fails instead of adding a key."""
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(
                f"override '{key}' of {prefix}: no such key; has {list(config.keys())}"
            )
        if isinstance(value, dict) and isinstance(config[key], ml_collections.ConfigDict):
            apply_overrides(config[key], value, prefix=f"{prefix}.{key}")
        else:
            config[key] = value


def load_sub_config(spec: str, overrides: Any = None) -> ml_collections.ConfigDict:
    """The config ``"configs/<file>.py[:arg]"`` (relative paths from the repository root),
    with ``overrides`` (a mapping or ConfigDict of existing keys) applied."""
    from advjax.configlib import load_config

    path, sep, arg = spec.partition(":")
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(REPO, path)
    config = load_config(path + sep + arg)
    if overrides:
        values = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
        apply_overrides(config, values, prefix=spec)
    return config


def reuse_report(path: str, config: ml_collections.ConfigDict) -> dict | None:
    """The JSON report at ``path`` when it exists and its ``"config_hash"`` is that of
    ``config`` (a finished run of the same config, reused by reruns), else None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        report = json.load(f)
    return report if report.get("config_hash") == config_hash(config.to_dict()) else None
