"""Resume in every window: damaged checkpoints and SIGKILL at every phase of a run.

One test SIGKILLs the launcher from outside, wherever it is once its first checkpoint is
on disk. The fault-injection test uses the test-only hook ``ADVJAX_KILL_AT=<phase>[@<step>]``
(`advjax.checkpoints.kill_point`): the launcher SIGKILLs itself there, the same command
is run again and killed in the next phase, and so on through every phase; the run after
the last kill must end with the report, metrics and parameters of an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import blob_images, tiny_config

from advjax import checkpoints, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _damage(step_dir) -> None:
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(max(os.path.getsize(path) // 3, 1))


def _steps(workdir) -> list[int]:
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        return sorted(ckpt.all_steps())
    finally:
        ckpt.close()


def _assert_same_variables(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)


def test_damaged_latest_checkpoint_falls_back_and_is_kept(tmp_path, capsys):
    config = tiny_config(num_epochs=2.0)  # 16 steps, checkpoints at 8, 12, 16 (keep 3).
    ref_dir, dir_ = str(tmp_path / "ref"), tmp_path / "run"
    reference = runs.train_and_evaluate(config, ref_dir, dataset=blob_images())
    shutil.copytree(ref_dir, dir_)
    last = _steps(dir_)[-1]
    _damage(dir_ / "checkpoints" / str(last))
    capsys.readouterr()

    # --mode eval falls back (read-only) and says which step it evaluated.
    model = runs.load_trained(str(dir_))
    previous = _steps(dir_)[-2]
    assert model.step == previous
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advjax: warning: ") and str(last) in err[0]
    report = runs.evaluate_run(config, str(dir_), dataset=blob_images())
    assert report["eval"]["evaluated_step"] == previous
    assert f"checkpoint of step {previous}" in capsys.readouterr().out

    # --mode train resumes from the previous good checkpoint, keeps the damaged one aside
    # and ends where the uninterrupted run ended.
    resumed = runs.train_and_evaluate(config, str(dir_), dataset=blob_images())
    out = capsys.readouterr()
    assert f"Resuming {dir_} from step {previous}" in out.out
    assert "damaged" in out.err and "Traceback" not in out.err
    assert (dir_ / "checkpoints" / "damaged" / str(last)).is_dir()
    assert _steps(dir_)[-1] == last
    _assert_same_variables(runs.load_trained(ref_dir), runs.load_trained(str(dir_)))
    assert resumed["eval"]["clean_accuracy"] == reference["eval"]["clean_accuracy"]

    # With every checkpoint damaged, --mode eval is a one-line error.
    for step in _steps(dir_):
        _damage(dir_ / "checkpoints" / str(step))
    with pytest.raises(checkpoints.CheckpointError, match="every checkpoint .* is damaged"):
        runs.load_trained(str(dir_))


# A run of seconds through the launcher: 8 steps, checkpoints at 3, 6 and 8, validation
# only at the final step, so the last step commits both the best and the last checkpoint.
KILL_ARGS = [
    "--config",
    "configs/mnist_standard.py:smoke",
    "--config.model.name=mlp",
    "--config.data.num_train=256",
    "--config.data.num_test=40",
    "--config.train.num_steps=8",
    "--config.train.eval_every_steps=8",
    "--config.train.log_every_steps=1",
    "--config.train.val_examples=40",
    "--config.checkpoint.every_steps=3",
    "--config.eval.use_best=True",
    "--config.eval.num_examples=40",
    "--config.eval.sanity_checks=False",
    "--config.eval.attacks.pgd20.num_steps=2",
]
PHASES = [
    "before_save@3",
    "during_save@6",
    "after_save@6",
    "before_save@8",
    "between_best_and_last@8",
    "after_save@8",
    "during_eval",
]


def _command(workdir, kill_at=None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", ADVJAX_PROGRESS="0")
    env.pop(checkpoints.KILL_AT_ENV, None)
    if kill_at:
        env[checkpoints.KILL_AT_ENV] = kill_at
    args = [sys.executable, os.path.join(REPO, "launch", "main.py"), *KILL_ARGS]
    return dict(args=[*args, "--workdir", workdir], cwd=REPO, env=env)


def _launch(workdir, kill_at=None):
    return subprocess.run(**_command(workdir, kill_at), capture_output=True, text=True, timeout=600)


def _without_timings(obj):
    """``obj`` without wall-clock entries (they differ between any two runs)."""
    timing = ("time_s", "examples_per_sec", "wall_seconds_this_call", "eval_wall_seconds")
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in timing}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _comparable(workdir) -> tuple[dict, list[dict]]:
    return _without_timings(runs.read_report(workdir)), _without_timings(runs.read_metrics(workdir))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    proc = _launch(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_sigkill_at_every_phase_resumes_to_the_same_report(tmp_path, reference_run):
    # One workdir, killed once in every phase in turn: each run resumes from what the
    # previous kill left on disk (a fresh start, a half-written save, a save without its
    # best twin, a finished training without a report), and the run after the last kill
    # ends with the uninterrupted run's report, metrics and parameters. A resume that went
    # wrong in any window would write its checkpoint or record for every later run to
    # build on.
    workdir = str(tmp_path / "run")
    for phase in PHASES:
        killed = _launch(workdir, kill_at=phase)
        assert killed.returncode == -9, f"never reached {phase}: {killed.stderr[-2000:]}"
        assert runs.read_report(workdir) is None, phase
    resumed = _launch(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _comparable(workdir) == _comparable(reference_run)
    _assert_same_variables(runs.load_trained(reference_run), runs.load_trained(workdir))
    ref_best = runs.load_trained(reference_run, best=True)
    best = runs.load_trained(workdir, best=True)
    assert best.step == ref_best.step == 8
    _assert_same_variables(ref_best, best)


@pytest.mark.slow
def test_sigkill_from_outside_mid_training_resumes_to_the_same_report(tmp_path, reference_run):
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(
        **_command(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt_dir = os.path.join(workdir, "checkpoints")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -9, "the run ended before it could be killed"
    assert runs.read_report(workdir) is None
    resumed = _launch(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stdout
    assert _comparable(workdir) == _comparable(reference_run)
    _assert_same_variables(runs.load_trained(reference_run), runs.load_trained(workdir))
