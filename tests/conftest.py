"""Shared pytest setup: CPU backend, float32, headless matplotlib, notebook runner."""

from __future__ import annotations

import os
import pathlib
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ADVJAX_PROGRESS", "0")  # No progress bars in test logs.
# The launcher's compiled-program cache (advjax.xla_cache) in a folder of the tests' own,
# shared by the workers and the subprocess runs of a session, never the user's ~/.cache.
os.environ.setdefault(
    "ADVJAX_XLA_CACHE",
    os.path.join(tempfile.gettempdir(), f"advjax-tests-xla-{os.getuid()}"),
)
# The same cache for every JAX process of the session: the test workers themselves and
# the notebook kernels too (JAX reads these variables at import). Tests build the same
# programs many times over (every seed of a findings smoke run recompiles its training
# step; the same attacks run on models of the same shape in many files; each of some
# forty launcher processes compiles the same few dozen small programs); a program
# compiled once, however small, is then read from disk. Keyed by program, backend and
# options, so a cached program is the one XLA would compile.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["ADVJAX_XLA_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite compiles hundreds of programs that each run for milliseconds on tiny inputs,
# so it compiles them the cheap way (values are checked by the same known answers; a
# setting the user made is kept):
# * LLVM at -O1 instead of -O2: about a third less compile time (the noack findings smoke
#   run: 93 s of compilation against 62 s).
# * XLA:CPU's older elemental emitter for fusions instead of its fusion emitters: about
#   half the compile time again on attacks and training steps, bit-identical results, run
#   time within +-10% either way. XLA aborts on a flag it does not know, so a jaxlib
#   without this one is asked first, in a subprocess, once per session.
_PROBED = "ADVJAX_TESTS_XLA_FLAGS_PROBED"


def _add_xla_flag(name: str, value: str, *, probe: bool = False) -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if name in flags:
        return
    flag = f"--{name}={value}"
    if probe:
        import subprocess
        import sys

        env = dict(os.environ, XLA_FLAGS=f"{flags} {flag}".strip())
        code = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
        if subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode:
            return
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


if not os.environ.get(_PROBED):  # Workers and subprocesses inherit the flags.
    _add_xla_flag("xla_backend_optimization_level", "1")
    _add_xla_flag("xla_cpu_use_fusion_emitters", "false", probe=True)
    os.environ[_PROBED] = "1"

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture
def run_notebook(tmp_path):
    """Executes a notebook headless in ``tmp_path`` with ``ADVJAX_NOTEBOOK_SMOKE=1``.

    Notebooks read that variable and shrink every size to a run of seconds. The kernel's
    temporary folders (``tempfile.mkdtemp`` in a notebook) go under ``tmp_path`` too, so
    pytest removes them with its own. Returns the executed notebook (nbformat node) so a
    test can assert on cell outputs.
    """
    import nbformat
    from nbclient import NotebookClient

    def _run(name: str, timeout: int = 600):
        path = REPO / "notebooks" / name
        nb = nbformat.read(path, as_version=4)
        os.environ["ADVJAX_NOTEBOOK_SMOKE"] = "1"
        os.environ["ADVJAX_REPO"] = str(REPO)
        kernel_tmp = tmp_path / "kernel_tmp"
        kernel_tmp.mkdir(exist_ok=True)
        tmpdir = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = str(kernel_tmp)
        try:
            NotebookClient(
                nb,
                timeout=timeout,
                kernel_name="python3",
                resources={"metadata": {"path": str(tmp_path)}},
            ).execute()
        finally:
            os.environ.pop("ADVJAX_NOTEBOOK_SMOKE", None)
            if tmpdir is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = tmpdir
        return nb

    return _run
