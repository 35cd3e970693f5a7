"""Progress bars that behave: on for a person at a terminal, off everywhere else.

Every bar in advjax comes from `progress_bar`, which is disabled when
``ADVJAX_PROGRESS=0``, when stderr is not a terminal (logs, CI, pipes), or when the
caller turns it off (``config.train.progress``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm

ENV = "ADVJAX_PROGRESS"


def progress_enabled(enabled: bool = True) -> bool:
    """Whether a bar may be drawn: ``enabled``, ``ADVJAX_PROGRESS`` not "0" and stderr
    a terminal."""
    if not enabled or os.environ.get(ENV, "1") == "0":
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``), disabled unless
    `progress_enabled`; ``kwargs`` go to tqdm (``desc``, ``total``, ``unit``, ...)."""
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not progress_enabled(enabled), **kwargs)
