"""The registry type: names in configs mapped to implementations, resolved lazily.

Entries are ``"module:attribute"`` strings resolved on first use, so selecting a model
or an analysis by name imports only what that choice needs, and an unknown name fails
with the list of allowed names before any compute. Each package owns its registry
(`advjax.models.MODELS`, `advjax.data.DATA_SOURCES`, `advjax.attacks.ATTACKS`,
`advjax.objectives.OBJECTIVES`, `advjax.experiments.ANALYSES`); this module, at the
bottom of the import graph, knows none of their entries.
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
