"""Benchmark: the default run with and without advjax's allocator settings.

`advjax.hostmem` sets glibc's allocator for the process on the first CPU program advjax
compiles (``ADVJAX_MALLOC=0`` leaves it alone). The settings are process-wide, so this
benchmark runs the README's main command (``configs/mnist_fast.py``, shortened by
``--epochs`` and ``--eval-examples``) in fresh processes, alternating the two settings
in interleaved rounds (the order flips every round), each in a new run folder, after one
untimed warm-up run that fills the compile cache. Reported are, per setting, the median
training and evaluation wall time (from each run's report.json), the median training
examples per second (the median of each run's ``metrics.jsonl`` windows), the whole
process's wall time, and the ratios (with over without: below 1 means the settings make
the run faster); the accuracies of each run show that the settings change no result.

Run: ``.venv/bin/python bench/malloc_ab.py [--rounds 4] [--epochs 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")

# Runs the launcher in this process and prints what the allocator got (last line).
CHILD = """
import json, sys
sys.path.insert(0, "launch")
import main
rc = main.main(sys.argv[1:])
from advjax import compile
print(json.dumps({"rc": rc, "malloc": compile.options_status()["malloc"]}))
"""

SETTINGS = {"with": {}, "without": {"ADVJAX_MALLOC": "0"}}


def one_run(setting: str, args, scratch: str) -> dict:
    workdir = tempfile.mkdtemp(dir=scratch)
    os.rmdir(workdir)
    env = dict(os.environ)
    env.pop("ADVJAX_MALLOC", None)
    env.update(SETTINGS[setting])
    argv = [
        "--config",
        "configs/mnist_fast.py",
        "--workdir",
        workdir,
        f"--config.train.num_epochs={args.epochs}",
        f"--config.eval.num_examples={args.eval_examples}",
        "--config.train.progress=False",
    ]
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], cwd=REPO, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"the {setting} run failed:\n{out.stderr[-3000:]}")
    child = json.loads(out.stdout.strip().splitlines()[-1])
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rates = [r["examples_per_sec"] for r in map(json.loads, f) if "examples_per_sec" in r]
    shutil.rmtree(workdir)
    evaluation = report["eval"]
    return {
        "setting": setting,
        "allocator": child["malloc"],
        "process_s": wall,
        "train_s": report["train"]["wall_seconds_this_call"],
        "eval_s": report["eval_wall_seconds"],
        "median_examples_per_s": statistics.median(rates),
        "clean_accuracy": evaluation.get("clean_accuracy"),
        "robust_accuracy": evaluation.get("robust_accuracy"),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--eval-examples", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="1 round of 0.2 epochs, 20 examples")
    ap.add_argument("--out", default=os.path.join(RESULTS, "malloc_ab.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs, args.eval_examples = 1, 0.2, 20
    load_start = list(os.getloadavg())
    scratch = tempfile.mkdtemp(prefix="advjax-malloc-ab-")
    runs = []
    try:
        warmup = one_run("with", args, scratch)
        print(f"warm-up run (untimed): {warmup['process_s']:.1f} s", flush=True)
        for r in range(args.rounds):
            order = ("without", "with") if r % 2 == 0 else ("with", "without")
            for setting in order:
                run = one_run(setting, args, scratch)
                runs.append(dict(run, round=r))
                print(
                    f"round {r} {setting:>7}: train {run['train_s']:.1f} s, "
                    f"eval {run['eval_s']:.1f} s, process {run['process_s']:.1f} s, "
                    f"{run['median_examples_per_s']:.0f} ex/s",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {}
    for setting in SETTINGS:
        mine = [r for r in runs if r["setting"] == setting]
        summary[setting] = {
            k: statistics.median(r[k] for r in mine)
            for k in ("train_s", "eval_s", "process_s", "median_examples_per_s")
        }
    ratios = {
        k: summary["with"][k] / summary["without"][k] for k in ("train_s", "eval_s", "process_s")
    }
    by_round = {(r["round"], r["setting"]): r for r in runs}
    pairs = {
        k: [by_round[r, "with"][k] / by_round[r, "without"][k] for r in range(args.rounds)]
        for k in ("train_s", "eval_s", "process_s")
    }
    same = len({(r["clean_accuracy"], r["robust_accuracy"]) for r in runs}) == 1
    result = {
        "what": "configs/mnist_fast.py in fresh processes, with and without advjax.hostmem",
        "args": vars(args),
        "medians": summary,
        "ratio_with_over_without": ratios,
        "ratio_per_round": pairs,
        "same_accuracies": same,
        "runs": runs,
        "machine": {
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "load_average_start": load_start,
            "load_average_end": list(os.getloadavg()),
        },
    }
    for k, v in ratios.items():
        per_round = ", ".join(f"{x:.3f}" for x in pairs[k])
        print(f"{k}: with / without = {v:.3f} (per round: {per_round})")
    print(f"same accuracies in every run: {same}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
