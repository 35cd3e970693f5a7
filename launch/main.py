"""The advjax launcher: one entry point for training, evaluation and analyses.

    python launch/main.py --config configs/mnist_pgd.py[:smoke] --workdir runs/x \\
        [--mode train|eval|analyze] [--config.train.num_epochs=3 ...]

* ``train``: trains (resuming from ``workdir/checkpoints`` if present), then evaluates
  on the test set and writes ``report.json``.
* ``eval``: evaluates the run's last checkpoint (``--config.eval.use_best`` for the
  best) with ``config.eval`` and writes ``report.json``'s ``eval`` section.
* ``analyze``: runs the analysis named by ``config.analysis.name``.

Several processes (hosts) run one job when each gets ``--coordinator=host:port
--num_processes=N --process_id=i`` (``launch/local_cluster.sh`` does this on one machine),
or without flags under SLURM (several tasks) and on TPU pod slices, where JAX finds the
cluster itself; ``jax.distributed.initialize`` runs before anything touches a device.

Every user error (config file, argument, key, type, value, workdir, data, checkpoint,
analysis setting, device count) ends in one line ``advjax: error: ...`` and exit code
2, before anything is written or computed; internal errors keep their traceback.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import logging  # noqa: E402

from advjax import (  # noqa: E402
    checkpoints,
    configlib,
    data,
    distributed,
    registry,
    runs,
    training,
    xla_cache,
)
from advjax.experiments import ANALYSES, AnalysisError  # noqa: E402

MODES = ("train", "eval", "analyze")
USAGE = (
    "usage: launch/main.py --config configs/<name>.py[:arg] --workdir <folder> "
    "[--mode train|eval|analyze] [--config.<key>=<value> ...] "
    "[--coordinator=host:port --num_processes=N --process_id=i]"
)
CLUSTER_FLAGS = ("coordinator", "num_processes", "process_id")

EXPECTED_ERRORS = (
    configlib.ConfigError,
    registry.UnknownNameError,
    data.DataUnavailableError,
    data.DataConfigError,
    checkpoints.CheckpointError,
    training.TrainingDivergedError,
    AnalysisError,
    distributed.DistributedError,
)


def parse_args(argv: list[str]) -> tuple[str, str, str, list[tuple[str, str]]]:
    """``(config spec, workdir, mode, [(key, raw value), ...])`` from the command line.

    Accepts ``--flag=value`` and ``--flag value`` for ``--config``, ``--workdir``,
    ``--mode`` and every ``--config.<key>`` override.

    Raises:
      ConfigError: an unknown or incomplete flag.
    """
    flags: dict[str, str] = {}
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help", "--helpfull"):
            print(__doc__.strip() + "\n\n" + USAGE)
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise configlib.ConfigError(f"unexpected argument {arg!r}; {USAGE}")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise configlib.ConfigError(f"flag --{name} needs a value; {USAGE}")
            value = argv[i + 1]
            i += 1
        if name.startswith("config."):
            overrides.append((name[len("config.") :], value))
        elif name in ("config", "workdir", "mode"):
            flags[name] = value
        else:
            raise configlib.ConfigError(f"unknown flag --{name}; {USAGE}")
        i += 1
    for required in ("config", "workdir"):
        if required not in flags:
            raise configlib.ConfigError(f"flag --{required} is required; {USAGE}")
    mode = flags.get("mode", "train")
    if mode not in MODES:
        raise configlib.ConfigError(f"flag --mode: got {mode!r}; allowed: {', '.join(MODES)}")
    return flags["config"], flags["workdir"], mode, overrides


def split_cluster_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``({flag: value}, the other arguments)``: the multi-process flags
    (``--coordinator``, ``--num_processes``, ``--process_id``) taken out of ``argv``.

    Raises:
      ConfigError: one of them without a value.
    """
    cluster: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        name, eq, value = argv[i][2:].partition("=") if argv[i].startswith("--") else ("", "", "")
        if name in CLUSTER_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise configlib.ConfigError(f"flag --{name} needs a value; {USAGE}")
                value = argv[i + 1]
                i += 1
            cluster[name] = value
        else:
            rest.append(argv[i])
        i += 1
    return cluster, rest


def prepare(argv: list[str]):
    """The validated config, workdir and mode of a command line; writes nothing."""
    spec, workdir, mode, overrides = parse_args(argv)
    config = configlib.load_config(spec)
    config.lock()
    for key, value in overrides:
        configlib.override(config, key, value)
    if mode == "analyze" and not config.analysis.get("name"):
        raise configlib.ConfigError(
            "config key 'analysis.name' is empty; --mode analyze needs one of "
            f"{', '.join(ANALYSES.names())}"
        )
    configlib.validate(config)
    configlib.check_workdir(config, workdir, mode)
    return config, workdir, mode


def run(config, workdir: str, mode: str) -> dict:
    if mode == "train":
        return runs.train_and_evaluate(config, workdir)
    if mode == "eval":
        return runs.evaluate_run(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    return ANALYSES.get(config.analysis.name, key="analysis.name")(config, workdir)


def main(argv: list[str] | None = None) -> int:
    """Runs one command line; returns the exit code (2 for a user error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.set_verbosity(logging.WARNING)
    try:
        cluster, rest = split_cluster_flags(argv)
        if any(a in ("-h", "--help", "--helpfull") for a in rest):
            parse_args(rest)  # Prints the usage and exits.
        distributed.initialize(distributed.detect(**cluster))
        xla_cache.enable()
        report = run(*prepare(rest))
    except EXPECTED_ERRORS as err:
        print(f"advjax: error: {configlib.one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        if not distributed.joined():
            raise
        # A failed collective usually means a peer died: say so, and leave at once rather
        # than wait at JAX's exit barrier for processes that are gone.
        traceback.print_exc()
        print(distributed.failure_line(err), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    if distributed.is_main():
        summary = report.get("eval", report) if isinstance(report, dict) else report
        print(json.dumps(_headline(summary), indent=2, default=str))
    return 0


def _headline(section) -> dict:
    if not isinstance(section, dict):
        return {"result": section}
    keys = [k for k, v in section.items() if isinstance(v, (int, float, str))]
    out = {k: section[k] for k in keys[:20]}
    full = section.get("full_test_set")
    if isinstance(full, dict):
        out["full_test_set"] = {
            k: full[k] for k in ("num_examples", "clean_accuracy", "robust_accuracy") if k in full
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
