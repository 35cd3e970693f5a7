"""A persistent cache of compiled XLA programs for the launcher's runs.

A resumed run, an ``--mode eval`` after training, a rerun of an analysis and every
process of a multi-process job compile the same programs as the run before them; with
the cache they load them from disk instead (JAX's persistent compilation cache, keyed by
the program, the backend and the compiler options, so a different model, jaxlib or flag
never reuses an entry). The launcher turns it on by default:

* folder: ``$ADVJAX_XLA_CACHE`` if set, else ``~/.cache/advjax/xla``;
* ``ADVJAX_XLA_CACHE=0`` turns it off;
* a cache folder the user already configured for JAX (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config``) is kept as it is.

Only programs that took at least `MIN_COMPILE_SECONDS` to compile are stored. A damaged
entry (a process killed while writing it) is reported by JAX as a warning and compiled
again. Entries are written by process 0 of a multi-process job.
"""

from __future__ import annotations

import os

import jax

ENV = "ADVJAX_XLA_CACHE"
MIN_COMPILE_SECONDS = 0.2


def default_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "advjax", "xla")


def enable(path: str | None = None) -> str | None:
    """Turns the persistent cache on; returns its folder, or None when it stays off.

    Args:
      path: the folder; default ``$ADVJAX_XLA_CACHE`` or `default_dir`.
    """
    env = os.environ.get(ENV, "")
    if env == "0" and path is None:
        return None
    configured = jax.config.jax_compilation_cache_dir
    if configured and path is None:
        return configured
    path = path or env or default_dir()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # read-only home, say: run without the cache
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    try:  # jax >= 0.4.24; older versions store every entry regardless of size
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except AttributeError:
        pass
    return path
