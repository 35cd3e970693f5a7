"""Name-to-implementation registries shared by configs and the launcher.

Entries are ``"module:attribute"`` strings resolved on first use, so selecting a model
or an analysis by name imports only what that choice needs, and an unknown name fails
with the list of allowed names before any compute.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any


class UnknownNameError(ValueError):
    """Raised when a config names an entry that a registry does not hold."""


class Registry:
    """A lazily importing map from names to callables.

    Args:
      kind: what the registry holds, used in error messages ("model", "attack").
      entries: name -> "package.module:attribute".
    """

    def __init__(self, kind: str, entries: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, str] = dict(entries or {})
        self._cache: dict[str, Any] = {}

    def register(self, name: str, target: str | Any) -> None:
        """Adds ``name``; ``target`` is a "module:attr" string or the object itself."""
        if isinstance(target, str):
            self._entries[name] = target
            self._cache.pop(name, None)
        else:
            self._entries[name] = f"{target.__module__}:{target.__qualname__}"
            self._cache[name] = target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str, *, key: str) -> None:
        """Raises `UnknownNameError` naming the config ``key`` if ``name`` is unknown."""
        if name not in self._entries:
            raise UnknownNameError(
                f"config key '{key}': unknown {self.kind} {name!r}; "
                f"allowed: {', '.join(self.names())}"
            )

    def get(self, name: str, *, key: str = "name") -> Any:
        self.check(name, key=key)
        if name not in self._cache:
            module_name, attr = self._entries[name].split(":")
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._cache[name] = obj
        return self._cache[name]


def one_of(value: Any, allowed: Iterable[Any], *, key: str) -> None:
    """Raises ValueError naming ``key`` when ``value`` is not in ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"config key '{key}': got {value!r}; allowed: {allowed}")


MODELS = Registry(
    "model",
    {
        "linear": "advjax.models.simple:Linear",
        "mlp": "advjax.models.simple:MLP",
        "madry_cnn": "advjax.models.cnn:MadryCNN",
        "small_cnn": "advjax.models.cnn:SmallCNN",
        "preact_resnet18": "advjax.models.resnet:PreActResNet18",
        "wide_resnet": "advjax.models.resnet:WideResNet",
    },
)

# Data sources: a builder(config.data) -> advjax.data.Dataset. Prefixed names
# ("tfds:cifar10", "idx:/path") are routed by the prefix before the colon.
DATA_SOURCES = Registry(
    "dataset",
    {
        "mnist": "advjax.data.mnist:load_mnist",
        "tfds": "advjax.data.tfds_source:load_tfds",
        "idx": "advjax.data.idx:load_idx",
        "synthetic": "advjax.data.synthetic:load_synthetic",
        "tsipras_toy": "advjax.data.synthetic:load_tsipras_toy",
        "spurious": "advjax.data.spurious:load_spurious",
        "moayeri_regression": "advjax.data.synthetic:load_moayeri_regression",
    },
)

# Training objectives: builder(objective_config) -> advjax.objectives.Objective.
OBJECTIVES = Registry(
    "objective",
    {
        "standard": "advjax.objectives.base:build_standard",
        "pgd_at": "advjax.objectives.base:build_pgd_at",
        "trades": "advjax.objectives.trades:build_trades",
        "mart": "advjax.objectives.mart:build_mart",
        "fgsm_rs": "advjax.objectives.fast:build_fgsm_rs",
        "free_at": "advjax.objectives.fast:build_free_at",
        "input_gradient": "advjax.objectives.regularizers:build_input_gradient",
        "jacobian": "advjax.objectives.regularizers:build_jacobian",
        "fisher_kl": "advjax.objectives.fisher:build_fisher_kl",
        "interpretation": "advjax.objectives.interpretation:build_interpretation",
        "squared_at": "advjax.objectives.regression:build_squared_at",
    },
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

# Analyses for `--mode analyze`: run(config, workdir) -> report dict.
ANALYSES = Registry(
    "analysis",
    {
        "tradeoff_toy": "advjax.experiments.tradeoff_toy:run",
        "tradeoff_visuals": "advjax.experiments.tradeoff_visuals:run",
        "small_data": "advjax.experiments.small_data:run",
        "interactions": "advjax.experiments.interactions:run",
        "information": "advjax.experiments.information:run",
        "interpretability": "advjax.experiments.interpretability:run",
        "spurious": "advjax.experiments.spurious:run",
    },
)
