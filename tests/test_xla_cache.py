"""The launcher's persistent cache of compiled programs (advjax.xla_cache)."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every program is stored (threshold 0: a small program compiles faster than the default
# threshold on a fast machine).
SCRIPT = """
import sys
import jax, jax.numpy as jnp
from advjax import xla_cache
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None
)
xla_cache.MIN_COMPILE_SECONDS = 0.0
folder = xla_cache.enable(None if sys.argv[1] == "-" else sys.argv[1])
print("FOLDER", folder)
def f(x):
    for i in range(20):
        x = jnp.sin(x * (1.0 + i * 1e-3)) + jnp.roll(x, i % 7)
    return x.sum()
print("VALUE", float(jax.jit(f)(jnp.ones((64,)))))
print("HITS", len(hits))
"""


def _run(arg: str, env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADVJAX_XLA", "JAX_COMP"))}
    env.update(env_extra, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, arg], env=env, capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _entries(folder) -> set:
    return (
        {p for p in os.listdir(folder) if p.endswith("-cache")} if os.path.isdir(folder) else set()
    )


def test_second_process_reads_what_the_first_wrote(tmp_path):
    folder = str(tmp_path / "xla")
    first = _run("-", {"ADVJAX_XLA_CACHE": folder})
    assert first["FOLDER"] == folder
    written = _entries(folder)
    assert written, "the first process stored no program"
    assert first["HITS"] == "0"
    second = _run("-", {"ADVJAX_XLA_CACHE": folder})
    assert second["VALUE"] == first["VALUE"]
    assert int(second["HITS"]) >= 1
    assert _entries(folder) == written  # everything it needed was already there


def test_off_switch_and_user_folder_are_respected(tmp_path):
    off = _run("-", {"ADVJAX_XLA_CACHE": "0", "HOME": str(tmp_path)})
    assert off["FOLDER"] == "None"
    assert not (tmp_path / ".cache").exists()
    mine = str(tmp_path / "mine")
    kept = _run("-", {"JAX_COMPILATION_CACHE_DIR": mine, "ADVJAX_XLA_CACHE": str(tmp_path / "x")})
    # The user's folder is kept with the user's own settings (JAX's thresholds), and
    # advjax's folder is not used.
    assert kept["FOLDER"] == mine and not _entries(str(tmp_path / "x"))
    default = _run("-", {"HOME": str(tmp_path)})
    assert default["FOLDER"] == str(tmp_path / ".cache" / "advjax" / "xla")


def test_corrupt_entry_is_compiled_again(tmp_path):
    folder = str(tmp_path / "xla")
    first = _run("-", {"ADVJAX_XLA_CACHE": folder})
    for name in _entries(folder):  # a process killed while writing: truncated entries
        path = os.path.join(folder, name)
        with open(path, "r+b") as f:
            f.truncate(max(1, os.path.getsize(path) // 3))
    again = _run("-", {"ADVJAX_XLA_CACHE": folder})
    assert again["VALUE"] == first["VALUE"]
