"""Multi-process runs: cluster detection, per-process batches, and whole runs as several
local processes (gloo collectives on CPU) against one process with the same devices."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import xla_flags_with_devices

from advjax import data, distributed

REPO = pathlib.Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SMOKE = ["--config", "configs/mnist_fast.py:smoke"]


# ----------------------------------------------------------------------------- detection


def test_no_flags_no_cluster_is_one_process():
    assert distributed.detect(environ={}) is None
    assert distributed.detect(num_processes="1", environ={}) is None
    assert distributed.detect(environ={"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert distributed.detect(environ={"TPU_WORKER_HOSTNAMES": "localhost"}) is None


def test_flags_give_the_cluster():
    spec = distributed.detect("10.0.0.1:1234", "4", "3", environ={})
    assert spec == distributed.ClusterSpec("flags", "10.0.0.1:1234", 4, 3)


def test_slurm_and_tpu_pods_are_detected():
    slurm = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5"}
    assert distributed.detect(environ=slurm).source == "slurm"
    tpu = {"TPU_WORKER_HOSTNAMES": "t1k-0,t1k-1,t1k-2,t1k-3"}
    assert distributed.detect(environ=tpu).source == "tpu"
    assert distributed.detect(environ={"JAX_COORDINATOR_ADDRESS": "h:1"}).source == "env"
    # Explicit flags win over the environment.
    assert distributed.detect("h:1", 2, 0, environ=slurm).source == "flags"


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(num_processes=2, process_id=0), "--coordinator is missing"),
        (dict(coordinator="h:1", process_id=0), "--num_processes is missing"),
        (dict(coordinator="h:1", num_processes=2), "--process_id is missing"),
        (dict(coordinator="h:1", num_processes=2, process_id=2), "allowed: 0 to 1"),
        (dict(coordinator="h:1", num_processes="two", process_id=0), "an integer is needed"),
        (dict(coordinator="nohost", num_processes=2, process_id=0), "expected host:port"),
        (dict(coordinator="h:1", num_processes=0, process_id=0), "must be >= 1"),
    ],
)
def test_bad_flags_are_one_line_errors(flags, message):
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.detect(**flags, environ={})


def test_launcher_rejects_incomplete_cluster_flags(tmp_path, capsys):
    from launch.main import main

    workdir = tmp_path / "run"
    code = main([*SMOKE, "--workdir", str(workdir), "--num_processes", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["advjax: error: flag --coordinator is missing: --coordinator=host:port, "
                   "--num_processes=N and --process_id=i go together"]  # fmt: skip
    assert not workdir.exists()


# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize("num_processes", [1, 2, 4])
def test_process_shares_make_the_global_batch(num_processes):
    common = dict(num_examples=1000, batch_size=64, seed=3)
    for step in (0, 7, 15, 16):
        whole = data.batch_indices(step, **common)
        shares = [
            data.batch_indices(step, **common, process_index=p, process_count=num_processes)
            for p in range(num_processes)
        ]
        assert all(len(s) == 64 // num_processes for s in shares)
        np.testing.assert_array_equal(np.concatenate(shares), whole)


def test_uneven_shares_are_refused():
    with pytest.raises(ValueError, match="equal shares"):
        data.batch_indices(0, num_examples=100, batch_size=10, seed=0, process_count=3)


# ----------------------------------------------------------------------------- whole runs


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=xla_flags_with_devices(devices),
        JAX_PLATFORMS="cpu",
        ADVJAX_PROGRESS="0",
    )
    env.pop("ADVJAX_KILL_AT", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(text: str) -> str:
    """The end of a log without native stack-trace frames."""
    return "\n".join(line for line in text.splitlines() if "    @ " not in line)[-4000:]


def _final(workdir: pathlib.Path):
    """(parameters of the last checkpoint, test accuracies of report.json)."""
    from advjax import runs

    model = runs.load_trained(str(workdir))
    report = json.loads((workdir / "report.json").read_text())["eval"]
    accuracies = {
        "clean": report["clean_accuracy"],
        "robust": report["robust_accuracy"],
        **{k: v["robust_accuracy"] for k, v in report["attacks"].items()},
    }
    return model.variables["params"], accuracies, model.step


def _cluster(workdir: pathlib.Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = _env(2) | (extra_env or {})
    return subprocess.run(
        ["bash", "launch/local_cluster.sh", "2", *SMOKE, "--workdir", str(workdir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """The smoke run as 1 process x 4 devices and as 2 processes x 2 devices."""
    root = tmp_path_factory.mktemp("distributed")
    one, two = root / "one_process", root / "two_processes"
    single = subprocess.run(
        [PYTHON, "launch/main.py", *SMOKE, "--workdir", str(one)],
        cwd=REPO,
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert single.returncode == 0, _tail(single.stderr)
    cluster = _cluster(two)
    assert cluster.returncode == 0, _tail(cluster.stderr)
    return one, two, cluster


@pytest.mark.slow
def test_two_processes_equal_one_process(reference_runs):
    one, two, cluster = reference_runs
    params_1, acc_1, step_1 = _final(one)
    params_2, acc_2, step_2 = _final(two)
    assert step_1 == step_2 > 0
    import jax

    for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert acc_1 == acc_2
    report_1 = json.loads((one / "report.json").read_text())
    report_2 = json.loads((two / "report.json").read_text())
    assert report_1["train"]["num_devices"] == report_2["train"]["num_devices"] == 4
    assert (report_1["num_processes"], report_2["num_processes"]) == (1, 2)

    # Records come from process 0 alone: one line per log step, no duplicates.
    def logged_steps(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["step"] for line in lines]

    assert logged_steps(two) == logged_steps(one)
    # The local cluster script prints the report's headline once (process 0).
    assert cluster.stdout.count('"clean_accuracy"') == 1


@pytest.mark.slow
def test_killed_process_stops_the_other_and_the_rerun_resumes(reference_runs, tmp_path):
    _, two, _ = reference_runs
    workdir = tmp_path / "killed"
    port = _free_port()
    procs = []
    for i in range(2):
        env = _env(2)
        # The survivor learns of the death from the coordination service after this many
        # seconds of missed heartbeats, busy in its collective until then (30 s by default).
        env["ADVJAX_HEARTBEAT_TIMEOUT"] = "10"
        if i == 1:
            # Process 1 SIGKILLs itself once the checkpoint of step 10 is on disk.
            env["ADVJAX_KILL_AT"] = "after_save@10"
        cluster = [f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
        cmd = [PYTHON, "launch/main.py", *SMOKE, "--workdir", str(workdir), *cluster]
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        procs[1].wait(timeout=600)
        died = time.monotonic()
        assert procs[1].returncode == -9
        _, err = procs[0].communicate(timeout=90)
        waited = time.monotonic() - died
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode != 0
    assert waited < 60, f"the surviving process took {waited:.0f} s to stop"
    assert (
        "another process died first" in err
        or "another task died" in err  # JAX's coordination service stopped it.
    ), _tail(err)
    assert not (workdir / "report.json").exists()

    rerun = _cluster(workdir)
    assert rerun.returncode == 0, _tail(rerun.stderr)
    assert "Resuming" in rerun.stdout
    params_k, acc_k, step_k = _final(workdir)
    params_2, acc_2, step_2 = _final(two)
    assert step_k == step_2
    import jax

    for a, b in zip(jax.tree.leaves(params_k), jax.tree.leaves(params_2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert acc_k == acc_2
