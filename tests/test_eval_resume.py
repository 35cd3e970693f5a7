"""A long evaluation killed midway resumes from its finished batches to the same report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
from helpers import blob_images, tiny_config

from advjax import evaluation, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")

ENSEMBLE = {
    "name": "ensemble",
    "eps": 0.15,
    "attacks": ["apgd_ce", "square"],
    "num_steps": 5,
    "num_queries": 30,
}


def _eval_config(config):
    config = ml_collections.ConfigDict(config.to_dict())
    config.eval.attacks = ml_collections.ConfigDict({"ens": ENSEMBLE})
    config.eval.batch_size = 16
    config.eval.num_examples = 96
    config.eval.sanity_checks = False
    return config


def _strip_times(section: dict) -> dict:
    out = json.loads(json.dumps(section))
    for meta in out["attacks"].values():
        meta.pop("time_s", None)
    return out


def test_eval_store_returns_stored_batches_and_recomputes_damaged_ones(tmp_path):
    store = evaluation.EvalStore(str(tmp_path), "abc")
    name = store.batch_name("attack/pgd/pgd", np.arange(4))
    assert store.load(name) is None
    store.save(name, [np.array([True, False]), np.array([0.1, 0.2])])
    got = store.load(name)
    np.testing.assert_array_equal(got[0], [True, False])
    np.testing.assert_allclose(got[1], [0.1, 0.2])
    assert store.batch_name("attack/pgd/pgd", np.arange(1, 5)) != name
    with open(os.path.join(store.directory, name + ".npz"), "wb") as f:
        f.write(b"cut off")
    assert store.load(name) is None


def test_evaluation_resumed_from_stored_batches_equals_an_uninterrupted_one(tmp_path):
    f_w = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    ds = blob_images(n_test=80)
    x, y = ds.test_x, ds.test_y

    def logits_fn(v):
        return v.reshape(v.shape[0], -1) @ f_w

    cfg = ml_collections.ConfigDict(
        {"batch_size": 16, "attacks": {"ens": ENSEMBLE}, "sanity_checks": False,
         "progress": False}
    )  # fmt: skip
    key = jax.random.key(4)
    plain = evaluation.evaluate(cfg, logits_fn, x, y, key=key)
    state = str(tmp_path / "state")
    first = evaluation.evaluate(cfg, logits_fn, x, y, key=key, state_dir=state)
    stored = sum(len(files) for _, _, files in os.walk(state))
    assert stored > 0
    again = evaluation.evaluate(cfg, logits_fn, x, y, key=key, state_dir=state)
    assert _strip_times(plain) == _strip_times(first) == _strip_times(again)
    # Nothing new was written: every batch came from the store.
    assert sum(len(files) for _, _, files in os.walk(state)) == stored


SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import ml_collections
    from helpers import blob_images
    from advjax import runs
    config = ml_collections.ConfigDict(json.loads(open({config!r}).read()))
    runs.evaluate_run(config, {workdir!r}, dataset=blob_images())
    """
)


@pytest.mark.slow
def test_mode_eval_killed_mid_ensemble_resumes_to_the_same_report(tmp_path):
    config = tiny_config(num_epochs=1.0)
    workdir = str(tmp_path / "run")
    runs.train_and_evaluate(config, workdir, dataset=blob_images())
    config = _eval_config(config)
    reference = str(tmp_path / "reference")
    shutil.copytree(workdir, reference)
    runs.evaluate_run(config, reference, dataset=blob_images())
    expected = _strip_times(runs.read_report(reference)["eval"])

    config_path = str(tmp_path / "config.json")
    with open(config_path, "w") as f:
        json.dump(config.to_dict(), f)
    script = SCRIPT.format(tests=TESTS, config=config_path, workdir=workdir)
    env = dict(os.environ, ADVJAX_PROGRESS="0", JAX_PLATFORMS="cpu")
    # 96 examples in batches of 16: 6 clean batches, then the ensemble's components.
    killed = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(env, ADVJAX_KILL_AT="eval_batch@8"),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = os.path.join(workdir, runs.EVAL_STATE)
    assert sum(len(files) for _, _, files in os.walk(state)) == 8
    resumed = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _strip_times(runs.read_report(workdir)["eval"]) == expected
    assert not os.path.exists(state)  # removed once the report is written
