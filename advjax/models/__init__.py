"""Flax models selected by ``config.model.name`` through `MODELS`, and models as data.

Every module is called as ``module.apply(variables, x, train=...)`` on a batch of
inputs shaped like ``DatasetInfo.input_shape`` and returns logits [B, num_classes].

Attacks, evaluation, objectives and analyses receive a model as a `Model`: a static,
hashable eval-mode apply function plus a variables pytree. ``jax.jit`` then caches by
architecture (two models of one architecture share every compiled attack), and a stack
of models (variables with a leading model axis) can be vmapped.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from advjax.compile import jit
from advjax.registry import Registry


@dataclasses.dataclass(frozen=True)
class EvalApply:
    """``(variables, x) -> logits`` of a flax module in evaluation mode.

    Hashable and equal for equal modules (flax modules compare by their fields), so it
    can be the static part of a `Model`: BatchNorm statistics are read, never updated.
    """

    module: Any

    def __call__(self, variables: Any, x: jax.Array) -> jax.Array:
        return self.module.apply(variables, x, train=False)


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionApply:
    """``(variables, x) -> fn(x)``: a plain logits function as a `Model`'s apply.

    Hashes and compares by the function's identity (bound methods of unhashable objects
    included), so jit caches per function object.
    """

    fn: Callable[[jax.Array], jax.Array]

    def _identity(self) -> tuple[int, ...]:
        # Bound methods are new objects at every attribute access: compare their parts.
        if hasattr(self.fn, "__self__") and hasattr(self.fn, "__func__"):
            return (id(self.fn.__self__), id(self.fn.__func__))
        return (id(self.fn),)

    def __hash__(self) -> int:
        return hash(self._identity())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FunctionApply) and other._identity() == self._identity()

    def __call__(self, variables: Any, x: jax.Array, *key: jax.Array) -> jax.Array:
        del variables
        return self.fn(x, *key)


@flax.struct.dataclass
class Model:
    """A model as data: a static apply function and a variables pytree.

    ``apply`` must be hashable and compare equal across models of one architecture
    (`EvalApply`, a module-level function); ``variables`` are the leaves that jit traces.
    A randomised model (``takes_key``) is called as ``apply(variables, x, key)``; every
    evaluation call then draws a fresh key and reports the model as randomised.
    """

    apply: Callable[..., jax.Array] = flax.struct.field(pytree_node=False)
    variables: Any = None
    takes_key: bool = flax.struct.field(pytree_node=False, default=False)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        if self.takes_key:
            if key is None:
                raise ValueError("this model is randomised: call it with a PRNG key")
            return self.apply(self.variables, x, key)
        return self.apply(self.variables, x)

    def bind(self, key: jax.Array | None) -> Callable[[jax.Array], jax.Array]:
        """``x -> logits``; a randomised model uses the draw of ``key`` at every call.

        The result is a `BoundModel`, so an attack that averages over other draws (EOT,
        AutoAttack's ``rand`` version) can reach the randomised model behind it.
        """
        return BoundModel(self, key if self.takes_key else None)


@dataclasses.dataclass(frozen=True, eq=False)
class BoundModel:
    """``x -> logits`` of a `Model` at one draw ``key`` (None for a deterministic model)."""

    model: Model
    key: jax.Array | None = None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.model.takes_key:
            return self.model.apply(self.model.variables, x, self.key)
        return self.model.apply(self.model.variables, x)


def as_model(model: Any, *, takes_key: bool = False) -> Model:
    """A `Model` from a `Model` or a plain ``x -> logits`` (``(x, key)`` if takes_key)."""
    if isinstance(model, Model):
        return model
    if callable(model):
        return Model(FunctionApply(model), (), takes_key)
    raise TypeError(f"expected an advjax.models.Model or a logits function, got {type(model)}")


def eval_model(module: Any, variables: Any) -> Model:
    """The eval-mode `Model` of a flax ``module`` with ``variables``."""
    return Model(EvalApply(module), variables)


def stack_models(models: list[Model]) -> Model:
    """One `Model` whose variables carry a leading model axis (same architecture)."""
    if not models:
        raise ValueError("stack_models: no models")
    applies = {m.apply for m in models}
    if len(applies) != 1:
        raise ValueError("stack_models: the models do not share one architecture (apply)")
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[m.variables for m in models])
    return Model(models[0].apply, stacked, models[0].takes_key)


def unstack(model: Model, index: int) -> Model:
    """Model ``index`` of a stack made by `stack_models`."""
    return Model(model.apply, jax.tree.map(lambda v: v[index], model.variables), model.takes_key)


def model_kwargs(model_config) -> dict:
    """The module fields set by ``model_config`` (everything except ``name``)."""
    kwargs = dict(model_config)
    kwargs.pop("name", None)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


# Config keys of the model section that are not module fields: ``torch_checkpoint``
# names a PyTorch file to import (`advjax.models.torch_import.from_model_config`).
NON_MODULE_KEYS = ("torch_checkpoint",)


def _module_fields(model_config) -> dict:
    kwargs = model_kwargs(model_config)
    return {k: v for k, v in kwargs.items() if k not in NON_MODULE_KEYS}


def check_model_config(model_config) -> None:
    """Raises ValueError naming an unknown model or field before any compute.

    ``torch_checkpoint`` is not a module field and is not checked here.
    """
    cls = MODELS.get(model_config.name, key="model.name")
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes"}
    for key in _module_fields(model_config):
        if key not in fields:
            raise ValueError(
                f"config key 'model.{key}': model {model_config.name!r} has no field {key!r}; "
                f"allowed: {sorted(fields)}"
            )


def build_model(model_config, info):
    """The flax module named by ``model_config.name`` for a dataset's ``info``."""
    check_model_config(model_config)
    cls = MODELS.get(model_config.name, key="model.name")
    return cls(num_classes=info.num_classes, **_module_fields(model_config))


def init_variables(module, info, key: jax.Array) -> dict:
    """Initial variables (``params`` and, for BatchNorm models, ``batch_stats``)."""
    return dict(_init(module, tuple(info.input_shape), key))


@functools.partial(jit, static_argnums=(0, 1))
def _init(module, input_shape: tuple, key: jax.Array):
    """Compiled once per architecture and input shape (flax modules hash by their fields)."""
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    return module.init({"params": key, "dropout": key}, dummy, train=False)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


MODELS = Registry(
    "model",
    {
        "linear": "advjax.models.simple:Linear",
        "mlp": "advjax.models.simple:MLP",
        "madry_cnn": "advjax.models.cnn:MadryCNN",
        "small_cnn": "advjax.models.cnn:SmallCNN",
        "preact_resnet18": "advjax.models.resnet:PreActResNet18",
        "wide_resnet": "advjax.models.resnet:WideResNet",
        "dm_wide_resnet": "advjax.models.robustbench:DMWideResNet",
        "rb_preact_resnet": "advjax.models.robustbench:PreActResNet",
        "resnet50": "advjax.models.resnet50:ResNet50",
    },
)
