"""The attack library: white-box (FGSM, PGD, APGD), black-box (Square), the ensemble.

Every attack is a pure, jittable function ``attack(logits_fn, x, y, key, **hparams)
-> x_adv`` of a batch. Registry builders (``build_<name>(attack_config)``, listed in
`ATTACKS`) validate a config and close over its hyperparameters,
returning ``attack(logits_fn, x, y, key, *, bounds=(0, 1), eps=None)``; ``eps`` lets an
eps sweep ``vmap`` over the radius of an already-configured attack.

This module holds the shared pieces: per-example PRNG keys (so results do not depend
on how examples are batched) and config validation with messages naming the key.
Submodules are imported on use, not here.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from advjax.registry import Registry

__all__ = [
    "example_keys",
    "config_values",
    "check_number",
    "check_choice",
    "fold_in_each",
    "name_id",
    "resolve_unroll",
    "MEMORY_SAFE_CPU_FLAG",
]

# Auto-unrolling (see `resolve_unroll`): loops of at most this many steps, on batches of
# at least this many input elements (about 84 MNIST images), where run time dominates.
MAX_AUTO_UNROLL_STEPS = 128
MIN_AUTO_UNROLL_ELEMENTS = 2**16
MEMORY_SAFE_CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def example_keys(key: jax.Array, batch: int) -> jax.Array:
    """Per-example PRNG keys.

    Args:
      key: one key (split into ``batch`` keys) or an array of ``batch`` keys already
        assigned to examples (typed ``(batch,)`` or raw ``(batch, 2)``), e.g.
        ``fold_in(key, example_index)`` so that an example's randomness does not
        depend on which batch it is in.
      batch: batch size.

    Returns:
      Keys with a leading axis of size ``batch``.
    """
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    single = key.ndim == 0 if typed else key.ndim == 1
    if single:
        return jax.random.split(key, batch)
    if key.shape[0] != batch:
        raise ValueError(f"got {key.shape[0]} per-example keys for a batch of {batch}")
    return key


def resolve_unroll(unroll: bool | None, num_steps: int, x: jax.Array) -> bool:
    """Whether to unroll an attack's step loop.

    XLA:CPU runs convolutions inside a while loop about twice slower than the same
    program unrolled (jax-ml/jax#12868; bench/attacks.py). With XLA's default CPU
    scheduler, however, an unrolled loop keeps every step's temporaries alive (temp
    memory grows linearly with the steps: 16 GB for PGD-40 on 512 MNIST images), which
    ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`` avoids. So
    ``None`` unrolls only when that flag is set, for at most 128 steps on a batch of at
    least 2**16 input elements (run time dominates compile time); otherwise the loop
    stays rolled and memory stays bounded.
    """
    if unroll is not None:
        return bool(unroll)
    memory_safe = MEMORY_SAFE_CPU_FLAG in os.environ.get("XLA_FLAGS", "")
    return memory_safe and num_steps <= MAX_AUTO_UNROLL_STEPS and x.size >= MIN_AUTO_UNROLL_ELEMENTS


def name_id(name: str) -> int:
    """A stable non-negative int for ``name`` (crc32), to ``fold_in`` per-attack keys."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def fold_in_each(keys: jax.Array, data: int) -> jax.Array:
    """``fold_in(k, data)`` for every per-example key."""
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def config_values(
    cfg: Mapping[str, Any] | Any,
    *,
    attack: str,
    defaults: Mapping[str, Any],
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Reads an attack config into a dict, rejecting unknown and missing keys.

    Args:
      cfg: ``ml_collections.ConfigDict`` (or mapping) with 'name' and hyperparameters.
      attack: attack name for messages.
      defaults: allowed keys and their default values.
      required: keys without a default.

    Returns:
      The hyperparameters (without 'name') with defaults filled in.
    """
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    values.pop("name", None)
    allowed = sorted(set(defaults) | set(required))
    for k in values:
        if k not in allowed:
            raise ValueError(f"attack {attack!r}: unknown config key {k!r}; allowed: {allowed}")
    for k in required:
        if values.get(k) is None:
            raise ValueError(f"attack {attack!r}: config key {k!r} is required")
    out = dict(defaults)
    out.update({k: v for k, v in values.items() if v is not None or k not in defaults})
    return out


def check_number(
    value: Any,
    *,
    attack: str,
    key: str,
    minimum: float | None = None,
    strict: bool = False,
    integer: bool = False,
    maximum: float | None = None,
) -> None:
    """Raises ValueError naming ``key`` if ``value`` is not a number in range."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise ValueError(f"attack {attack!r}: config key {key!r} must be {kind}, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        rel = ">" if strict else ">="
        raise ValueError(
            f"attack {attack!r}: config key {key!r} must be {rel} {minimum}, got {value!r}"
        )
    if maximum is not None and value > maximum:
        raise ValueError(
            f"attack {attack!r}: config key {key!r} must be <= {maximum}, got {value!r}"
        )


def check_choice(value: Any, allowed: tuple[Any, ...], *, attack: str, key: str) -> None:
    """Raises ValueError naming ``key`` if ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(
            f"attack {attack!r}: config key {key!r} got {value!r}; allowed: {list(allowed)}"
        )


# Attacks: builder(attack_config) -> attack(logits_fn, x, y, key) -> x_adv.
ATTACKS = Registry(
    "attack",
    {
        "fgsm": "advjax.attacks.pgd:build_fgsm",
        "pgd": "advjax.attacks.pgd:build_pgd",
        "apgd_ce": "advjax.attacks.apgd:build_apgd_ce",
        "apgd_dlr": "advjax.attacks.apgd:build_apgd_dlr",
        "apgd_t": "advjax.attacks.apgd:build_apgd_t",
        "square": "advjax.attacks.square:build_square",
        "ensemble": "advjax.attacks.ensemble:build_ensemble",
    },
)
