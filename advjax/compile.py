"""How advjax compiles: ``jax.jit`` plus the XLA options advjax sets on its own programs.

On the CPU backend every program advjax compiles sets the XLA option
``xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT``: XLA:CPU then runs matrix
products through the YNNPACK library and lowers convolutions another way than its
default. Measured on a 2-core AVX-512 machine (batch 128): the Madry CNN's 5x5
convolution with 32 input channels takes 14 ms instead of 26 ms, its input and kernel
gradients 15-16 ms instead of 26-28 ms; PGD-40 on the Madry CNN runs in 0.67x
torchattacks' time instead of 1.2x (``bench/attacks.py``).

The option is set per program (``jax.jit(..., compiler_options=...)``), never through
``XLA_FLAGS``: an XLA flag the installed jaxlib does not know aborts the process, while an
unknown compile option raises an error that advjax catches. So the options are version
gated by asking the installed jaxlib: the first advjax program compiled on the CPU backend
first compiles a small product and a convolution with them; if jaxlib rejects the options
(an older or newer jaxlib without the option) or they change the result, advjax compiles
without them from then on (`options_status` says which, and why). Other backends get no
options. ``ADVJAX_XLA_OPTIONS=0`` turns them off. On the CPU backend the same first
program also sets glibc's allocator to keep the memory XLA:CPU frees for its next call
(`advjax.hostmem`; ``ADVJAX_MALLOC=0`` turns that off).

`jit` is a drop-in for ``jax.jit`` (decorator or call, ``static_argnames`` and every other
keyword). It resolves the options on the first call, not at import, so importing advjax
never starts a JAX backend (``jax.distributed.initialize`` and device-count flags must
come first). Code that wraps advjax's functions in its own ``jax.jit`` keeps the rest of
advjax's speed (`advjax.models.layers`) but not these options: compile with this `jit`.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax import hostmem

ENV = "ADVJAX_XLA_OPTIONS"

CPU_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
}

_lock = threading.Lock()
_status: dict[str, Any] = {}


def _probe(options: dict[str, str]) -> str | None:
    """None when the installed jaxlib compiles with ``options`` and gets the plain
    program's answers on a product and a convolution; otherwise the reason."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(16, 24)), jnp.float32)
    # Large enough that XLA hands the convolution to the library (smaller ones stay
    # on XLA's own kernels).
    x = jnp.asarray(rng.normal(size=(8, 14, 14, 32)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(5, 5, 32, 64)), jnp.float32)

    def f(a, x, k):
        conv = jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return a @ a.T, conv

    try:
        got = jax.jit(f, compiler_options=options)(a, x, k)
    except Exception as err:  # jaxlib rejects an unknown option or value.
        return f"{type(err).__name__}: {str(err).splitlines()[0]}"
    want = jax.jit(f)(a, x, k)
    for g, w in zip(got, want, strict=True):
        scale = max(float(jnp.abs(w).max()), 1.0)
        if not float(jnp.abs(g - w).max()) <= 1e-5 * scale:
            return "results differ from the program compiled without the options"
    return None


def compiler_options() -> dict[str, str]:
    """The compile options advjax's programs get on the current default backend
    (resolved once per process, see the module docstring)."""
    with _lock:
        if "options" not in _status:
            _status.update(_resolve())
        return dict(_status["options"])


def _resolve() -> dict[str, Any]:
    backend = jax.default_backend()
    if backend == "cpu":
        hostmem.tune()  # XLA:CPU's buffers come from malloc (`advjax.hostmem`).
    if os.environ.get(ENV, "").strip().lower() in ("0", "false", "off", "no"):
        return dict(options={}, backend=backend, reason=f"{ENV}=0")
    if backend != "cpu":
        return dict(options={}, backend=backend, reason="no options for this backend")
    reason = _probe(CPU_OPTIONS)
    if reason is not None:
        return dict(
            options={}, backend=backend, reason=f"jaxlib {jax.__version__} refused: {reason}"
        )
    return dict(options=dict(CPU_OPTIONS), backend=backend, reason="supported")


def options_status() -> dict[str, Any]:
    """What `compiler_options` decided: ``options``, ``backend`` and ``reason``; and
    ``malloc``, what `advjax.hostmem.tune` set (on the CPU backend)."""
    compiler_options()
    return dict(_status, malloc=hostmem.status())


def reset() -> None:
    """Forget the resolved options (tests; a changed ``ADVJAX_XLA_OPTIONS``)."""
    with _lock:
        _status.clear()


def _at_top_level(args, kwargs) -> bool:
    """Whether a call runs eagerly (not traced into another program): JAX accepts
    compile options only on a program compiled at the top level."""
    try:
        from jax._src import core

        return core.trace_state_clean()
    except (ImportError, AttributeError):  # another JAX: look at the arguments.
        leaves = jax.tree.leaves((args, kwargs))
        return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


class _Jitted:
    """``jax.jit(fun, compiler_options=compiler_options(), **kwargs)``, built on first use.

    Called inside another traced program (a caller's ``jax.jit``, ``lax.map``, ``vmap``)
    it is a plain ``jax.jit`` inlined there: the outer program's options apply.
    """

    def __init__(self, fun: Callable, kwargs: dict[str, Any]):
        self._fun, self._kwargs = fun, kwargs
        self._jitted = self._nested = None
        functools.update_wrapper(self, fun)

    def _get(self):
        if self._jitted is None:
            options = compiler_options()
            self._jitted = jax.jit(self._fun, compiler_options=options or None, **self._kwargs)
        return self._jitted

    def _get_nested(self):
        if self._nested is None:
            self._nested = jax.jit(self._fun, **self._kwargs)
        return self._nested

    def __call__(self, *args, **kwargs):
        if _at_top_level(args, kwargs):
            return self._get()(*args, **kwargs)
        return self._get_nested()(*args, **kwargs)

    def __getattr__(self, name: str):
        # lower, trace, eval_shape, clear_cache, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._get(), name)


def jit(fun: Callable | None = None, **kwargs):
    """``jax.jit`` with advjax's compile options (decorator or call, same keywords)."""
    if "compiler_options" in kwargs:
        raise TypeError("advjax.compile.jit sets compiler_options itself")
    if fun is None:
        return functools.partial(jit, **kwargs)
    return _Jitted(fun, kwargs)
