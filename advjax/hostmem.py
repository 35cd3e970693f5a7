"""Host memory: glibc's allocator keeps the memory XLA:CPU frees for its next call.

XLA:CPU allocates each program's temporary buffers with ``malloc`` on every call and
frees them at its end. With glibc's default settings a block of 32 MiB or more is
mapped for the call and unmapped at its end, and free memory at the top of a heap goes
back to the operating system, so the next call faults every page in again: on a 2-core
machine the Madry CNN's training step (batch 128, 46.5 MiB of temporary buffers) took
about 12,000 page faults, some 15 ms of an 85-95 ms step. advjax therefore sets three of
glibc's ``mallopt`` parameters, once per process, the first time it compiles a program
for the CPU backend (`advjax.compile`); ``ADVJAX_MALLOC=0`` leaves the allocator alone:

* ``M_MMAP_MAX`` 0: every block comes from the heaps, where a freed block is reused by
  the next call instead of being unmapped;
* ``M_TRIM_THRESHOLD`` 1 GiB: free memory at the top of a heap goes back to the system
  only beyond 1 GiB;
* ``M_TOP_PAD`` 64 MiB: a heap grows by 64 MiB more than asked and keeps 64 MiB free
  when it shrinks (without it the heaps of XLA's worker threads still gave back, and
  faulted in again, a few thousand pages per step).

With them the Madry CNN's step took 0.89-0.94x a plain PyTorch loop's time in four
runs, against 1.03-1.12x without (`bench/train_step.py`). The default run is neither
faster nor slower with them: `bench/malloc_ab.py` runs its training and evaluation in
fresh processes, alternating with and without the settings (0.99x the time). What the
process has freed stays mapped for reuse, so its resident size stays near the largest
it has reached (the Madry CNN step: about 40 MB more peak memory). A C library other
than glibc (musl, macOS, Windows) is left alone. The settings are process-wide: every
library in the process allocates this way from then on (`status` says what was set), so
``bench/train_step.py`` times its plain PyTorch loop in a process of its own.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Any

ENV = "ADVJAX_MALLOC"

# glibc's malloc.h parameter numbers and the values advjax sets.
SETTINGS: dict[str, tuple[int, int]] = {
    "M_MMAP_MAX": (-4, 0),
    "M_TRIM_THRESHOLD": (-1, 1 << 30),
    "M_TOP_PAD": (-2, 64 << 20),
}

_lock = threading.Lock()
_status: dict[str, Any] = {}


def _glibc():
    """The process's glibc through ctypes, or None on another C library."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version  # glibc only (musl has no such symbol).
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return libc


def tune() -> dict[str, Any]:
    """Sets `SETTINGS` with ``mallopt`` once per process unless ``ADVJAX_MALLOC=0``;
    returns `status`."""
    with _lock:
        if _status:
            return dict(_status)
        if os.environ.get(ENV, "").strip().lower() in ("0", "false", "off", "no"):
            _status.update(applied={}, reason=f"{ENV}=0: allocator left alone")
            return dict(_status)
        libc = _glibc()
        if libc is None:
            _status.update(applied={}, reason="not glibc: allocator left alone")
            return dict(_status)
        applied = {
            name: value for name, (param, value) in SETTINGS.items() if libc.mallopt(param, value)
        }
        refused = sorted(set(SETTINGS) - set(applied))
        version = libc.gnu_get_libc_version().decode()
        reason = f"glibc {version}" + (f"; refused: {', '.join(refused)}" if refused else "")
        _status.update(applied=applied, reason=reason)
        return dict(_status)


def status() -> dict[str, Any]:
    """What `tune` did: ``applied`` (name -> value) and ``reason``; {} before it ran."""
    with _lock:
        return dict(_status)
