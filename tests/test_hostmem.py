"""advjax.hostmem: the first CPU program advjax compiles sets glibc's allocator so that
large blocks come from the heaps (reused from call to call) instead of being mapped and
unmapped; with ``ADVJAX_MALLOC=0`` it is left alone. Each case runs in a
fresh process: the settings are process-wide and made once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from advjax import hostmem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh process: one advjax program on the CPU, then a 48 MiB block, larger than
# glibc's largest mmap threshold (32 MiB on 64-bit), so that with glibc's defaults it is
# always mapped on its own. mallinfo2's hblkhd counts the bytes in such mapped blocks.
PROBE = textwrap.dedent(
    """
    import ctypes, json
    import numpy as np
    import jax.numpy as jnp
    from advjax import compile, hostmem

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    compile.jit(lambda a: a * 2.0)(jnp.ones(3)).block_until_ready()
    mapped = None
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.restype = Info
        before = libc.mallinfo2().hblkhd
        block = np.ones(12 << 20, np.float32)
        mapped = libc.mallinfo2().hblkhd - before
        del block
    print(json.dumps({"status": hostmem.status(),
                      "options_status": compile.options_status()["malloc"],
                      "mapped_bytes": mapped, "block_bytes": 48 << 20}))
    """
)


def _probe(**env) -> dict:
    environ = dict(os.environ, JAX_PLATFORMS="cpu")
    environ.pop(hostmem.ENV, None)
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=environ, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_first_cpu_program_keeps_large_blocks_in_the_heaps_unless_told_not_to():
    tuned = _probe()  # Nothing set: the default.
    untouched = _probe(**{hostmem.ENV: "0"})
    left_alone = {"applied": {}, "reason": f"{hostmem.ENV}=0: allocator left alone"}
    assert untouched["status"] == left_alone
    assert tuned["options_status"] == tuned["status"]
    if hostmem._glibc() is None:  # Another C library: left alone.
        assert tuned["status"] == {"applied": {}, "reason": "not glibc: allocator left alone"}
        return
    assert tuned["status"]["applied"] == {name: v for name, (_, v) in hostmem.SETTINGS.items()}
    assert tuned["status"]["reason"].startswith("glibc ")
    if tuned["mapped_bytes"] is not None:
        # glibc's defaults map the block on its own; with M_MMAP_MAX = 0 it comes from a
        # heap and nothing is mapped apart.
        assert untouched["mapped_bytes"] >= untouched["block_bytes"]
        assert tuned["mapped_bytes"] == 0
