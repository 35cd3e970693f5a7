"""The launcher end to end: smoke runs, config errors, checkpoints (resume: test_resume.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from helpers import blob_images, tiny_config

from advjax import checkpoints, configlib, evaluation, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", ADVJAX_PROGRESS="0")


def launch(*args, timeout=600):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "main.py"), *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_mnist_pgd_smoke_writes_the_full_record(tmp_path):
    proc = launch("--config", "configs/mnist_pgd.py:smoke", "--workdir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {
        "config.json",
        "dataset_info.json",
        "metrics.jsonl",
        "report.json",
        "checkpoints",
    } <= set(os.listdir(tmp_path))
    report = json.load(open(tmp_path / "report.json"))
    assert 0.0 <= report["eval"]["robust_accuracy"] <= report["eval"]["clean_accuracy"] <= 1.0
    assert (
        report["train"]["finished"] and report["train"]["steps"] == report["train"]["total_steps"]
    )
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert records and all("step" in r for r in records)
    assert any("examples_per_sec" in r for r in records)
    # The run's figure: its curves and the accuracy left after each attack.
    assert report["figures"] == ["figures/run_summary.png"]
    with open(tmp_path / "figures" / "run_summary.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Running the same command again finds the finished run and does not retrain.
    again = launch("--config", "configs/mnist_pgd.py:smoke", "--workdir", str(tmp_path))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to train" in again.stdout + again.stderr
    assert [json.loads(line) for line in open(tmp_path / "metrics.jsonl")] == records


def test_validation_messages_name_key_value_and_allowed():
    c = configlib.load_config("configs/mnist_standard.py:smoke")
    c.train.val_attack = ml_collections.ConfigDict(
        dict(name="pgd", norm="l7", eps=0.1, num_steps=1)
    )
    with pytest.raises(configlib.ConfigError, match=r"train.val_attack.norm.*'l7'.*allowed"):
        configlib.validate(c)
    c = configlib.load_config("configs/mnist_standard.py:smoke")
    c.train.objective.name = "magic"
    with pytest.raises(
        configlib.ConfigError, match=r"train.objective.name.*magic.*allowed.*pgd_at"
    ):
        configlib.validate(c)
    c = configlib.load_config("configs/mnist_standard.py:smoke")
    c.train.optimizer.schedule = "exp"
    with pytest.raises(configlib.ConfigError, match="train.optimizer.schedule"):
        configlib.validate(c)
    c = configlib.load_config("configs/mnist_fast.py:smoke")
    c.eval.full_test_set_attacks = ("pgd40",)
    with pytest.raises(
        configlib.ConfigError, match=r"eval.full_test_set_attacks.*pgd40.*names of eval.attacks"
    ):
        configlib.validate(c)


def test_full_test_set_attacks_cover_every_example_and_agree_with_the_subset(tmp_path):
    # The subset's attacks on the first 64 of 128 test images, PGD also on all 128. PGD
    # without a random start on a deterministic model: each example's outcome depends on
    # that example alone, so the whole set's counts are the subset's plus those of the
    # other 64 evaluated apart.
    config = tiny_config(num_epochs=1.0)
    pgd = dict(name="pgd", eps=0.05, step_size=0.02, num_steps=5, random_start=False)
    config.eval.attacks = ml_collections.ConfigDict(dict(pgd=pgd))
    config.eval.full_test_set_attacks = ("pgd",)
    dataset = blob_images()
    workdir = str(tmp_path / "run")
    report = runs.train_and_evaluate(config, workdir, dataset=dataset)["eval"]
    full = report["full_test_set"]
    assert (report["num_examples"], full["num_examples"]) == (64, 128)
    assert list(full["attacks"]) == ["pgd"] and full["sanity_passed"] is None
    rest_config = ml_collections.ConfigDict(config.eval.to_dict())
    rest_config.num_examples = 0
    rest = evaluation.evaluate(
        rest_config,
        runs.load_trained(workdir).model,
        dataset.test_x[64:],
        dataset.test_y[64:],
        key=jax.random.key(0),
    )
    for k in ("clean_accuracy", "robust_accuracy"):
        assert 128 * full[k] == pytest.approx(64 * report[k] + 64 * rest[k])
    assert 0 < full["robust_accuracy"] < full["clean_accuracy"]
    # Nothing to add when the subset is the whole set.
    config.eval.num_examples = 0
    assert runs.full_test_set_config(config.eval, 128) is None


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    config = tiny_config(num_epochs=1.0)
    runs.train_and_evaluate(config, str(tmp_path / "run"), dataset=blob_images())
    model = runs.load_trained(str(tmp_path / "run"))
    ckpt = checkpoints.Checkpointer(str(tmp_path / "run" / "checkpoints"))
    step = ckpt.latest_step()
    ckpt.close()
    # Round trip: restoring gives back exactly what the run's last step holds.
    again = runs.load_trained(str(tmp_path / "run"))
    jax.tree.map(np.testing.assert_array_equal, model.variables, again.variables)
    # A run of a different model cannot restore it, with a message instead of a traceback.
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "run", other)
    cfg = json.load(open(other / "config.json"))
    cfg["model"]["hidden"] = [7]
    json.dump(cfg, open(other / "config.json", "w"))
    with pytest.raises(checkpoints.CheckpointError, match="does not match this config"):
        runs.load_trained(str(other))
    # Damaged checkpoints (all of them: a damaged latest one falls back, see
    # test_resume.py) are reported as damaged.
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "run", damaged)
    for root, _, files in os.walk(damaged / "checkpoints"):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "r+b") as fh:
                fh.truncate(max(os.path.getsize(path) // 3, 1))
    with pytest.raises(checkpoints.CheckpointError, match=f"every checkpoint .* damaged.*{step}"):
        runs.load_trained(str(damaged))


def test_a_different_config_never_touches_a_finished_run(tmp_path):
    config = tiny_config(num_epochs=1.0)
    runs.train_and_evaluate(config, str(tmp_path), dataset=blob_images())
    before = {
        f: os.path.getmtime(os.path.join(r, f))
        for r, _, fs in os.walk(tmp_path / "checkpoints")
        for f in fs
    }
    changed = tiny_config(num_epochs=1.0)
    changed.train.optimizer.learning_rate = 0.5
    with pytest.raises(configlib.ConfigError, match="train.optimizer.learning_rate"):
        runs.train_and_evaluate(changed, str(tmp_path), dataset=blob_images())
    after = {
        f: os.path.getmtime(os.path.join(r, f))
        for r, _, fs in os.walk(tmp_path / "checkpoints")
        for f in fs
    }
    assert before == after
