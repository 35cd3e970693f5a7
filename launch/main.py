"""The advjax launcher: one entry point for training, evaluation and analyses.

    python launch/main.py --config configs/mnist_pgd.py[:smoke] --workdir runs/x \\
        [--mode train|eval|analyze] [--config.train.num_epochs=3 ...]

* ``train``: trains (resuming from ``workdir/checkpoints`` if present), then evaluates
  on the test set and writes ``report.json``.
* ``eval``: evaluates the run's last checkpoint (``--config.eval.use_best`` for the
  best) with ``config.eval`` and writes ``report.json``'s ``eval`` section.
* ``analyze``: runs the analysis named by ``config.analysis.name``.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from advjax import checkpoints, configlib, data, registry, runs, training  # noqa: E402
from advjax.experiments import ANALYSES, AnalysisError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, optionally with an argument: configs/x.py:smoke.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (created if absent).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "analyze"], "What to do.")
flags.mark_flags_as_required(["config", "workdir"])

EXPECTED_ERRORS = (
    configlib.ConfigError,
    registry.UnknownNameError,
    data.DataUnavailableError,
    checkpoints.CheckpointError,
    training.TrainingDivergedError,
    AnalysisError,
)


def run(config, workdir: str, mode: str) -> dict:
    configlib.validate(config)
    if mode == "train":
        report = runs.train_and_evaluate(config, workdir)
    elif mode == "eval":
        model = runs.load_trained(workdir, best=config.eval.use_best)
        dataset = data.load_dataset(config.data)
        report = runs.read_report(workdir) or {}
        report["eval"] = runs.evaluate_model(config, model, dataset, workdir)
        report["eval"]["evaluated_step"] = model.step
        runs.write_json(os.path.join(workdir, "report.json"), report)
    else:
        if not config.analysis.name:
            raise configlib.ConfigError(
                "config key 'analysis.name' is empty; --mode analyze needs one of "
                f"{ANALYSES.names()}"
            )
        os.makedirs(workdir, exist_ok=True)
        report = ANALYSES.get(config.analysis.name, key="analysis.name")(config, workdir)
    return report


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        report = run(_CONFIG.value, _WORKDIR.value, _MODE.value)
    except EXPECTED_ERRORS as err:
        print(f"advjax: error: {err}", file=sys.stderr)
        sys.exit(2)
    summary = report.get("eval", report) if isinstance(report, dict) else report
    print(json.dumps(_headline(summary), indent=2, default=str))


def _headline(section) -> dict:
    if not isinstance(section, dict):
        return {"result": section}
    keys = [k for k, v in section.items() if isinstance(v, (int, float, str))]
    return {k: section[k] for k in keys[:20]}


if __name__ == "__main__":
    app.run(main)
