"""Every user error: one line ``advjax: error: ...``, exit code 2, nothing written.

A table of malformed invocations of the launcher (run in-process through its ``main``,
a few through a subprocess), each checked for the exit code, a single stderr line that
names the key or file, no traceback, and an untouched workdir (file hashes).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from advjax import configlib
from tests.helpers import load_launch_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "configs/mnist_standard.py:smoke"
# A run of seconds: an MLP on 128 MNIST images, two steps, 20 test images.
TINY = [
    "--config.model.name=mlp",
    "--config.data.num_train=128",
    "--config.data.num_test=20",
    "--config.train.num_steps=2",
    "--config.train.val_examples=20",
    "--config.eval.num_examples=20",
    "--config.eval.sanity_checks=False",
    "--config.eval.attacks.pgd20.num_steps=1",
]


def _launcher():
    return load_launch_module("main")


LAUNCHER = _launcher()


def tree_hashes(path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``path`` ({} when absent)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny training run, copied by the rows that need an existing workdir."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    assert LAUNCHER.main(["--config", SMOKE, "--workdir", str(workdir), *TINY]) == 0
    assert (workdir / "report.json").exists()
    return workdir


@pytest.fixture(scope="module")
def bad_config_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    (folder / "syntax.py").write_text("def get_config(:\n    pass\n")
    (folder / "noget.py").write_text("X = 1\n")
    # Config files that build the default config and then break it: a value where an
    # attack section belongs, attack sections without their name, and a get_config that
    # raises (a string where a section was); and a config file with an error at import.
    head = "from configs import mnist_fast\n\n\ndef get_config():\n"
    head += "    c = mnist_fast.get_config('smoke')\n"
    for stem, body in {
        "attack_value": "    c.eval.attacks.foo = 3\n    return c\n",
        "noname_train": "    del c.train.objective.attack['name']\n    return c\n",
        "noname_eval": "    del c.eval.attacks.pgd20['name']\n    return c\n",
        "raises": "    c.train.val_attack = 'pgd'\n",
    }.items():
        (folder / f"{stem}.py").write_text(head + body)
    (folder / "name_error.py").write_text("X = undefined_name\n")
    return folder


def _empty_config_json(workdir):
    os.makedirs(workdir, exist_ok=True)
    open(os.path.join(workdir, "config.json"), "w").close()


# (id, config spec, extra args, mode, workdir kind, expected text in the message)
# workdir kinds: "fresh" (absent), "file" (a regular file), "empty_cfg" (a folder with an
# empty config.json), "finished" (a copy of a finished run), "finished_empty_cfg" (that
# copy with config.json emptied), "empty_dir" (an empty folder), "foreign" (a folder
# holding a file of someone else's).
ROWS = [
    ("misspelt key", SMOKE, ["--config.train.nmu_epochs=3"], "train", "fresh", "nmu_epochs"),
    ("misspelt key 2", SMOKE, ["--config.train.lerning_rate=0.1"], "train", "fresh", "lerning_"),
    ("misspelt section", SMOKE, ["--config.trian.batch_size=3"], "train", "fresh", "trian"),
    ("key under a value", SMOKE, ["--config.seed.x=1"], "train", "fresh", "'seed'"),
    ("section as value", SMOKE, ["--config.train=3"], "train", "fresh", "'train' is a section"),
    ("int type", SMOKE, ["--config.train.batch_size=abc"], "train", "fresh", "train.batch_size"),
    ("float to int", SMOKE, ["--config.train.batch_size=1.5"], "train", "fresh", "batch_size"),
    ("bool type", SMOKE, ["--config.eval.use_best=maybe"], "train", "fresh", "eval.use_best"),
    ("float type", SMOKE, ["--config.train.num_epochs=x"], "train", "fresh", "num_epochs"),
    ("list parse", SMOKE, ["--config.eval.eps_grid=(0.1,"], "train", "fresh", "eval.eps_grid"),
    (
        "names unquoted",
        "configs/mnist_fast.py:smoke",
        ["--config.eval.attacks.ensemble.attacks=(apgd_ce, square)"],
        "train",
        "fresh",
        "\"('apgd_ce', 'apgd_t', 'apgd_boundary', 'square')\" or '[]', names in quotes",
    ),
    (
        "negative eps",
        SMOKE,
        ["--config.eval.attacks.pgd20.eps=-0.1"],
        "train",
        "fresh",
        "eval.attacks.pgd20.eps",
    ),
    ("negative shared eps", SMOKE, ["--config.eps.linf=-1"], "train", "fresh", "eps.linf"),
    ("eps grid", SMOKE, ["--config.eval.eps_grid=(0.1, -0.2)"], "train", "fresh", "eval.eps_grid"),
    (
        "unknown norm",
        SMOKE,
        ["--config.eval.attacks.pgd20.norm=l3"],
        "train",
        "fresh",
        "eval.attacks.pgd20.norm",
    ),
    (
        "eval step size",
        SMOKE,
        ["--config.eval.attacks.pgd20.step_size=-0.1"],
        "train",
        "fresh",
        "eval.attacks.pgd20.step_size",
    ),
    (
        "eval loss",
        SMOKE,
        ["--config.eval.attacks.pgd20.loss=foo"],
        "train",
        "fresh",
        "eval.attacks.pgd20.loss",
    ),
    (
        "eval attack name",
        SMOKE,
        ["--config.eval.attacks.pgd20.name=nosuch"],
        "train",
        "fresh",
        "eval.attacks.pgd20.name",
    ),
    (
        "val attack steps",
        SMOKE,
        ["--config.train.val_attack.name=pgd", "--config.train.val_attack.num_steps=0"],
        "train",
        "fresh",
        "train.val_attack.num_steps",
    ),
    (
        "objective attack",
        "configs/mnist_fast.py:smoke",
        ["--config.train.objective.attack.loss=nope"],
        "train",
        "fresh",
        "train.objective.attack.loss",
    ),
    (
        "objective name",
        SMOKE,
        ["--config.train.objective.name=magic"],
        "train",
        "fresh",
        "train.objective.name",
    ),
    ("model", SMOKE, ["--config.model.name=resnet9000"], "train", "fresh", "model.name"),
    ("dataset", SMOKE, ["--config.data.name=imagenet"], "train", "fresh", "data.name"),
    (
        "optimizer",
        SMOKE,
        ["--config.train.optimizer.name=lion"],
        "train",
        "fresh",
        "train.optimizer.name",
    ),
    (
        "schedule",
        SMOKE,
        ["--config.train.optimizer.schedule=exp"],
        "train",
        "fresh",
        "train.optimizer.schedule",
    ),
    (
        "negative num_train",
        SMOKE,
        ["--config.data.num_train=-5"],
        "train",
        "fresh",
        "data.num_train",
    ),
    ("devices", SMOKE, ["--config.train.num_devices=4"], "train", "fresh", "train.num_devices"),
    ("ema", SMOKE, ["--config.train.ema_decay=1.5"], "train", "fresh", "train.ema_decay"),
    ("seed", SMOKE, ["--config.seed=-1"], "train", "fresh", "'seed'"),
    # Found when the data is read, before training: more held out than there is.
    ("validation split", SMOKE, ["--config.data.num_val=100000"], "train", "fresh", "num_val"),
    ("eval size", SMOKE, ["--config.eval.num_examples=100000"], "train", "fresh", "num_examples"),
    (
        "eval size, eval",
        SMOKE,
        [*TINY, "--config.eval.num_examples=21"],
        "eval",
        "finished",
        "21 is more",
    ),
    ("checkpoint keep", SMOKE, ["--config.checkpoint.keep=0"], "train", "fresh", "checkpoint.keep"),
    (
        "divergence factor",
        SMOKE,
        ["--config.train.divergence.loss_factor=0.5"],
        "train",
        "fresh",
        "train.divergence.loss_factor",
    ),
    (
        "absent data",
        SMOKE,
        ["--config.data.name=idx:/nonexistent/folder"],
        "train",
        "fresh",
        "/nonexistent/folder",
    ),
    ("no config file", "configs/nosuch.py", [], "train", "fresh", "configs/nosuch.py"),
    ("config folder", "configs", [], "train", "fresh", "'configs'"),
    ("syntax error", "{bad}/syntax.py", [], "train", "fresh", "syntax.py"),
    ("no get_config", "{bad}/noget.py", [], "train", "fresh", "get_config"),
    ("attack without name", "{bad}/noname_train.py", [], "train", "fresh", "objective.attack.name"),
    ("eval attack without name", "{bad}/noname_eval.py", [], "train", "fresh", "pgd20.name"),
    ("attack as value", "{bad}/attack_value.py", [], "train", "fresh", "eval.attacks.foo"),
    ("get_config raises", "{bad}/raises.py", [], "train", "fresh", "raises.py' at line 6"),
    ("name error", "{bad}/name_error.py", [], "train", "fresh", "name_error.py' at line 1"),
    ("config argument", "configs/interactions.py:nosuch", [], "analyze", "fresh", "nosuch"),
    ("config argument 2", "configs/mnist_fast.py:smok", [], "train", "fresh", "smok"),
    ("workdir is a file", SMOKE, [], "train", "file", "is a file"),
    ("workdir of other files", SMOKE, [], "train", "foreign", "no advjax run"),
    ("empty config.json", SMOKE, [], "train", "empty_cfg", "config.json"),
    ("empty config.json, finished", SMOKE, TINY, "train", "finished_empty_cfg", "config.json"),
    ("empty config.json, eval", SMOKE, TINY, "eval", "finished_empty_cfg", "config.json"),
    (
        "different config",
        SMOKE,
        [*TINY, "--config.train.optimizer.learning_rate=0.5"],
        "train",
        "finished",
        "train.optimizer.learning_rate",
    ),
    ("eval without a run", SMOKE, [], "eval", "empty_dir", "no trained run"),
    ("eval, absent workdir", SMOKE, [], "eval", "fresh", "no trained run"),
    (
        "mi_bound",
        "configs/information.py:smoke",
        ["--config.analysis.mi_bound=foo"],
        "analyze",
        "fresh",
        "analysis.mi_bound",
    ),
    (
        "num_examples",
        "configs/information.py:smoke",
        ["--config.analysis.num_examples=0"],
        "analyze",
        "fresh",
        "analysis.num_examples",
    ),
    (
        "list value",
        "configs/interactions.py:smoke",
        ["--config.analysis.ratios=(0.5, 2.0)"],
        "analyze",
        "fresh",
        "analysis.ratios",
    ),
    (
        "analysis name",
        SMOKE,
        ["--config.analysis.name=nosuch"],
        "analyze",
        "fresh",
        "analysis.name",
    ),
    ("analysis empty", SMOKE, [], "analyze", "fresh", "analysis.name"),
    (
        "sub-config",
        "configs/interpretability.py:smoke",
        ["--config.analysis.models.jacobian.weight=-1"],
        "analyze",
        "fresh",
        "jacobian",
    ),
    ("mode", SMOKE, ["--mode=nosuch"], None, "fresh", "--mode"),
    ("unknown flag", SMOKE, ["--wokdir=/tmp/x"], "train", "fresh", "--wokdir"),
]


def _prepare(row, tmp_path, finished_run, bad_config_files):
    _, spec, extra, mode, kind, _ = row
    workdir = tmp_path / "w"
    if kind == "file":
        workdir.write_text("not a folder")
    elif kind == "empty_cfg":
        _empty_config_json(workdir)
    elif kind == "empty_dir":
        workdir.mkdir()
    elif kind == "foreign":
        workdir.mkdir()
        (workdir / "notes.txt").write_text("not an advjax run")
    elif kind.startswith("finished"):
        shutil.copytree(finished_run, workdir)
        if kind == "finished_empty_cfg":
            _empty_config_json(workdir)
    argv = ["--config", spec.format(bad=bad_config_files), "--workdir", str(workdir), *extra]
    if mode is not None:
        argv += ["--mode", mode]
    return workdir, argv


def _snapshot(workdir):
    if workdir.is_file():
        return ("file", workdir.read_text())
    return ("tree", workdir.exists(), tree_hashes(workdir))


def _check_one_line(rc, stderr, expected):
    assert rc == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("advjax: error: "), stderr
    assert "Traceback" not in stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_malformed_invocation_is_one_line_before_anything_is_written(
    row, tmp_path, finished_run, bad_config_files, capsys
):
    workdir, argv = _prepare(row, tmp_path, finished_run, bad_config_files)
    before = _snapshot(workdir)
    capsys.readouterr()
    try:
        rc = LAUNCHER.main(argv)
    except SystemExit as exit_:  # pragma: no cover - main returns its code
        rc = exit_.code
    err = capsys.readouterr().err
    _check_one_line(rc, err, row[-1])
    assert _snapshot(workdir) == before


def test_table_covers_enough_invocations():
    assert len(ROWS) >= 30


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,expected",
    [
        (["--config", "configs/mnist_fast.py:smoke", "--config.train.nmu_epochs=3"], "nmu_epochs"),
        (["--config", "configs/nosuch.py"], "configs/nosuch.py"),
    ],
)
def test_the_command_line_itself_prints_one_line(tmp_path, args, expected):
    """The installed entry point (not just `main`): exit code 2 and no traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "launch", "main.py"),
            *args,
            "--workdir",
            str(tmp_path / "w"),
        ],
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu", ADVJAX_PROGRESS="0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    _check_one_line(proc.returncode, proc.stderr, expected)
    assert not (tmp_path / "w").exists()


def test_list_valued_keys_can_be_overridden():
    c = configlib.load_config("configs/interactions.py:smoke")
    configlib.override(c, "analysis.ratios", "(0.1, 0.5, 0.9)")
    assert tuple(c.analysis.ratios) == (0.1, 0.5, 0.9)
    configlib.override(c, "analysis.ratios", "[0.2]")
    assert list(c.analysis.ratios) == [0.2]
    configlib.validate(c)


def test_one_eps_per_threat_model_feeds_training_validation_and_evaluation():

    spec = importlib.util.spec_from_file_location("mnist_fast_cfg", "configs/mnist_fast.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factor = module.TRAIN_EPS_FACTOR  # the default trains at a fixed multiple of eps
    c = configlib.load_config("configs/mnist_fast.py")
    linked = lambda: (  # noqa: E731
        c.train.objective.attack.eps / factor,
        c.train.val_attack.eps,
        *(c.eval.attacks[name].eps for name in c.eval.attacks.keys()),
    )
    assert max(abs(e - c.eps.linf) for e in linked()) < 1e-12
    configlib.override(c, "eps.linf", "0.2")
    assert max(abs(e - 0.2) for e in linked()) < 1e-12
    # Overriding one attack's eps changes that attack alone.
    configlib.override(c, "eval.attacks.pgd20.eps", "0.1")
    assert c.eval.attacks.pgd20.eps == 0.1
    assert c.eps.linf == c.train.val_attack.eps == 0.2
    assert abs(c.train.objective.attack.eps - 0.2 * factor) < 1e-12
