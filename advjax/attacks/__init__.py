"""The attack library: white-box (FGSM, PGD, APGD), black-box (Square), the ensemble.

An attack is an `Attack`: a frozen, hashable value holding a pure run function, its
hyperparameters, threat model (norm, eps), budget and kind (white-box, black-box, or an
ensemble of ordered components). Registry builders (``ATTACKS``) validate a config and
return one; nothing is stored on functions. Calling it,
``attack(model, x, y, key, *, bounds, eps=None, eps_scale=None) -> x_adv``, takes the
model as data: an `advjax.models.Model` (apply function + variables), so ``jax.jit``
caches by architecture and attack config, not by model instance (a plain
``logits_fn`` callable also works inside a trace). ``eps`` overrides the radius (eps
sweeps vmap over it) and ``eps_scale`` multiplies it (the training ramp); either way the
step length keeps its configured ratio to eps.

Every inner maximisation is one core, `advjax.attacks.ascent`. This module holds the
shared pieces: the `Attack` type, per-example PRNG keys (so results do not depend on
how examples are batched) and config validation with messages naming the key.
Submodules are imported on use, not here.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from advjax.registry import Registry

__all__ = [
    "ATTACKS",
    "Attack",
    "WHITE_BOX",
    "BLACK_BOX",
    "ENSEMBLE",
    "build_attack",
    "freeze",
    "logits_fn_of",
    "example_keys",
    "config_values",
    "check_number",
    "check_choice",
    "fold_in_each",
    "name_id",
    "resolve_unroll",
    "MEMORY_SAFE_CPU_FLAG",
]

# The XLA option that once made unrolled attack loops memory-safe on CPU; advjax no longer
# unrolls by itself (see `resolve_unroll`) and sets or reads no XLA option.
MEMORY_SAFE_CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


WHITE_BOX = "white_box"
BLACK_BOX = "black_box"
ENSEMBLE = "ensemble"
KINDS = (WHITE_BOX, BLACK_BOX, ENSEMBLE)


def freeze(value: Any) -> Any:
    """A hashable copy of a config value: mappings to sorted item tuples, lists to tuples."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def _thaw(items: tuple) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in items}


def _first_key(key: jax.Array) -> jax.Array:
    """One key from a single key or from per-example keys."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if (key.ndim == 0) if typed else (key.ndim == 1):
        return key
    return key[0]


def logits_fn_of(model: Any, key: jax.Array | None = None) -> Callable[[jax.Array], jax.Array]:
    """``x -> logits`` of an `advjax.models.Model` or a plain callable.

    A randomised model is bound to one draw derived from ``key`` (common random numbers:
    every step of the attack sees the same model; average over draws with EOT).
    """
    if hasattr(model, "bind") and hasattr(model, "variables"):
        if getattr(model, "takes_key", False):
            if key is None:
                raise ValueError("a randomised model needs a PRNG key")
            return model.bind(jax.random.fold_in(_first_key(key), 0x5EED))
        return model.bind(None)
    if callable(model):
        return model
    raise TypeError(f"expected an advjax.models.Model or a logits function, got {type(model)}")


@dataclasses.dataclass(frozen=True)
class Attack:
    """A configured attack (frozen and hashable: a static argument of ``jax.jit``).

    Attributes:
      name: the registry name ('pgd', 'apgd_t', 'square', 'ensemble', ...).
      run: a module-level function ``run(hparams: dict, logits_fn, x, y, key, *,
        bounds, eps) -> x_adv``; ``eps`` is None for the configured radius.
      hparams: the full, validated config (without 'name'), frozen with `freeze`.
      kind: `WHITE_BOX`, `BLACK_BOX` or `ENSEMBLE`.
      budget: frozen ``{"num_steps": ..., "num_restarts": ...}`` or ``{"num_queries"}``.
      components: an ensemble's ordered component attacks.
    """

    name: str
    run: Callable[..., jax.Array]
    hparams: tuple
    kind: str = WHITE_BOX
    budget: tuple = ()
    components: tuple[Attack, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Attack.kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def config(self) -> dict[str, Any]:
        """The hyperparameters as a dict (with 'name'), for reports."""
        return dict(_thaw(self.hparams), name=self.name)

    @property
    def norm(self) -> str:
        return dict(self.hparams).get("norm", "linf")

    @property
    def eps(self) -> float:
        return float(dict(self.hparams)["eps"])

    @property
    def white_box(self) -> bool:
        return self.kind == WHITE_BOX

    @property
    def randomised(self) -> bool:
        """Whether the attack draws random numbers (its result depends on the key)."""
        hp = dict(self.hparams)
        if self.kind == ENSEMBLE:
            return any(c.randomised for c in self.components)
        # Attacks without a start option (APGD, FAB) start at random points.
        return self.kind == BLACK_BOX or hp.get("start", "uniform") != "none"

    def budget_dict(self) -> dict[str, Any]:
        """The budget as a dict (an ensemble's: per component)."""
        if self.kind == ENSEMBLE:
            return {c.name: c.budget_dict() for c in self.components}
        return _thaw(self.budget)

    def __call__(
        self,
        model: Any,
        x: jax.Array,
        y: jax.Array,
        key: jax.Array,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        eps: jax.Array | float | None = None,
        eps_scale: jax.Array | float | None = None,
    ) -> jax.Array:
        """Adversarial inputs for ``model`` (see the module docstring)."""
        if eps_scale is not None:
            eps = (self.eps if eps is None else eps) * eps_scale
        return self.run(
            dict(self.hparams), logits_fn_of(model, key), x, y, key, bounds=tuple(bounds), eps=eps
        )


def build_attack(attack_config: Any, *, key: str = "name") -> Attack:
    """The `Attack` that ``attack_config`` (with a registry 'name') configures."""
    name = attack_config["name"] if isinstance(attack_config, Mapping) else attack_config.name
    return ATTACKS.get(name, key=key)(attack_config)


def eps_scaled(step: float, eps_cfg: float, eps: jax.Array | float | None):
    """Step length for an eps override: keeps ``step / eps`` as configured."""
    if eps is None:
        return step
    if eps_cfg <= 0:
        return jnp.asarray(eps) * 0.0 + step
    return jnp.asarray(eps) * (step / eps_cfg)


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
    """Whether to unroll an attack's step loop: only when asked (``None`` keeps it rolled).

    Rolled loops used to run 2-3.5x slower on XLA:CPU because the convolution input
    gradients and max-pool gradients inside a while loop fell off XLA's fast kernels
    (jax-ml/jax#12868). The models' layers (`advjax.models.layers`) now write those
    gradients in a form XLA keeps on the fast path, and unrolling no longer pays:
    measured on a 2-core CPU, PGD-40 takes the same time rolled or unrolled for
    ``small_cnn`` and ``madry_cnn``, with or without XLA options, while unrolling
    compiles about 3x longer and needs more memory. ``num_steps`` and ``x`` are kept for
    callers.
    """
    del num_steps, x
    return bool(unroll)


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
        "apgd_boundary": "advjax.attacks.boundary:build_apgd_boundary",
        "fab_t": "advjax.attacks.fab:build_fab_t",
        "fab": "advjax.attacks.fab:build_fab",
        "square": "advjax.attacks.square:build_square",
        "ensemble": "advjax.attacks.ensemble:build_ensemble",
    },
)
