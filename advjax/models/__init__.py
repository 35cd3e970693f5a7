"""Flax models selected by ``config.model.name`` through `MODELS`.

Every module is called as ``module.apply(variables, x, train=...)`` on a batch of
inputs shaped like ``DatasetInfo.input_shape`` and returns logits [B, num_classes].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from advjax.registry import Registry


def model_kwargs(model_config) -> dict:
    """The module fields set by ``model_config`` (everything except ``name``)."""
    kwargs = dict(model_config)
    kwargs.pop("name", None)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def check_model_config(model_config) -> None:
    """Raises ValueError naming an unknown model or field before any compute."""
    cls = MODELS.get(model_config.name, key="model.name")
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes"}
    for key in model_kwargs(model_config):
        if key not in fields:
            raise ValueError(
                f"config key 'model.{key}': model {model_config.name!r} has no field {key!r}; "
                f"allowed: {sorted(fields)}"
            )


def build_model(model_config, info):
    """The flax module named by ``model_config.name`` for a dataset's ``info``."""
    check_model_config(model_config)
    cls = MODELS.get(model_config.name, key="model.name")
    return cls(num_classes=info.num_classes, **model_kwargs(model_config))


def init_variables(module, info, key: jax.Array) -> dict:
    """Initial variables (``params`` and, for BatchNorm models, ``batch_stats``)."""
    dummy = jnp.zeros((1, *info.input_shape), jnp.float32)
    return dict(
        jax.jit(lambda k: module.init({"params": k, "dropout": k}, dummy, train=False))(key)
    )


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
