"""Runs as a whole: train-and-evaluate, load a finished run, read its record.

A run folder (``workdir``) holds ``config.json``, ``dataset_info.json``,
``metrics.jsonl``, ``checkpoints/`` (orbax: last K and ``best/``), ``report.json`` and
``figures/*.png``. Analyses use `train_or_load` to get the models they study, so a
missing model is trained through the same resumable loop as any other run.

In a multi-process run (`advjax.distributed`) every process trains and evaluates its
share, and the records (``config.json``, ``dataset_info.json``, ``report.json``, figures)
are written by process 0 only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from advjax import checkpoints, configlib, data, distributed, training
from advjax.configlib import claim_workdir, load_config, validate
from advjax.objectives import build_objective
from advjax.training import TrainedModel

__all__ = [
    "TrainedModel",
    "evaluate_model",
    "evaluate_run",
    "load_config",
    "load_torch_model",
    "load_trained",
    "read_metrics",
    "read_report",
    "train_and_evaluate",
    "train_or_load",
    "write_json",
]


def write_json(path: str, obj) -> None:
    """Writes ``obj`` atomically; only process 0 writes in a multi-process run."""
    if not distributed.is_main():
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=float)
    os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` in order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_report(workdir: str) -> dict | None:
    path = os.path.join(workdir, "report.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:
        raise configlib.ConfigError(
            f"{path} is empty or damaged; move it away and rerun (the run itself is intact)"
        ) from None


def load_trained(workdir: str, *, best: bool = False) -> TrainedModel:
    """Restores the last (or best) checkpoint of the run in ``workdir``.

    Raises:
      CheckpointError: no checkpoint, or one that does not fit the run's config.
    """
    stored = configlib.read_run_config(workdir)
    info_path = os.path.join(workdir, "dataset_info.json")
    if stored is None or not os.path.exists(info_path):
        raise checkpoints.CheckpointError(
            f"{workdir} is not an advjax run folder (no config.json / dataset_info.json)"
        )
    config = ml_collections.ConfigDict(stored)
    try:
        with open(info_path) as f:
            raw = json.load(f)
    except ValueError:
        raise configlib.ConfigError(
            f"{info_path} is empty or damaged; rerun --mode train in this workdir to rewrite it"
        ) from None
    info = data.DatasetInfo(
        name=raw["name"],
        input_shape=tuple(raw["input_shape"]),
        num_classes=raw["num_classes"],
        bounds=tuple(raw["bounds"]),
    )
    module, target = training.restore_target(config, info)
    ckpt = checkpoints.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep
    )
    try:
        state, meta = ckpt.restore(target, best=best, fallback=True)
    finally:
        ckpt.close()
    params = state.ema_params if state.ema_params is not None else state.params
    return TrainedModel(
        config=config,
        module=module,
        variables={"params": params, **state.model_state},
        info=info,
        step=int(meta.get("step", 0)),
    )


# Finished evaluation batches of an evaluation in progress (`advjax.evaluation.EvalStore`);
# removed once the report that holds them is written.
EVAL_STATE = "eval_state"


def load_torch_model(config, info: data.DatasetInfo) -> TrainedModel:
    """The model of a PyTorch checkpoint named by ``config.model.torch_checkpoint``.

    ``config.model.name`` and its other keys select the converter and the module's
    fields (`advjax.models.torch_import.from_model_config`); the state dict is checked
    against the architecture before anything is converted.

    Raises:
      CheckpointError: a missing or unsafe file, or a state dict that does not fit
        (missing, extra or misshapen keys), as one message.
    """
    from advjax.models import torch_import

    try:
        module, variables = torch_import.from_model_config(config.model, info)
    except torch_import.CheckpointError as err:
        raise checkpoints.CheckpointError(configlib.one_line(err)) from None
    return TrainedModel(config=config, module=module, variables=variables, info=info, step=0)


def evaluate_model(config, model: TrainedModel, dataset: data.Dataset, workdir: str) -> dict:
    """Clean and robust accuracy of ``model`` on the test set, per `config.eval`.

    Writes the eps-sweep figure to ``workdir/figures/`` when an eps grid is set.
    """
    from advjax import evaluation

    if model.info.num_classes == 1:
        return _evaluate_regression(config, model, dataset)

    def run(eval_config) -> dict:
        return evaluation.evaluate(
            eval_config,
            model.model,
            dataset.test_x,
            dataset.test_y,
            key=jax.random.fold_in(jax.random.key(config.seed), 7),
            bounds=tuple(dataset.info.bounds),
            state_dir=os.path.join(workdir, EVAL_STATE),
        )

    section = run(config.eval)
    full = full_test_set_config(config.eval, len(dataset.test_y))
    if full is not None:
        training.print_main(
            f"{workdir}: {', '.join(full.attacks.keys())} again on the whole test set "
            f"({len(dataset.test_y)} examples; the evaluation above used the first "
            f"{section['num_examples']})."
        )
        section["full_test_set"] = run(full)
    if config.eval.eps_grid and section.get("eps_sweep"):
        path = os.path.join(workdir, "figures", "robust_accuracy_vs_eps.png")
        if distributed.is_main():
            evaluation.plot_eps_curve(section, path)
        section["figures"] = [os.path.relpath(path, workdir)]
    return section


def full_test_set_config(eval_config, num_test: int):
    """The evaluation of ``eval.full_test_set_attacks`` on the whole test set, or None
    when there is nothing to add (no such attacks, or ``num_examples`` already covers the
    test set).

    The same attack configs and key as the subset's evaluation, so every attack gives the
    same outcome on the subset's examples (per-example keys); no sweep, no sanity checks
    (those ran on the subset).
    """
    names = list(eval_config.get("full_test_set_attacks", ()))
    if not names or not 0 < eval_config.num_examples < num_test:
        return None
    full = ml_collections.ConfigDict(eval_config.to_dict())
    full.num_examples = 0
    full.attacks = ml_collections.ConfigDict({n: eval_config.attacks[n].to_dict() for n in names})
    full.eps_grid = ()
    full.sanity_checks = False
    full.full_test_set_attacks = ()
    return full


def load_data(config, dataset: data.Dataset | None = None) -> data.Dataset:
    """``config.data``'s dataset (``dataset`` when given), checked against ``config.eval``
    before any training or evaluation starts.

    Raises:
      DataConfigError: ``eval.num_examples`` asks for more examples than the test set has.
    """
    dataset = dataset if dataset is not None else data.load_dataset(config.data)
    wanted = config.eval.get("num_examples", 0)
    if wanted > dataset.num_test:
        raise data.DataConfigError(
            f"config key 'eval.num_examples': {wanted} is more than the {dataset.num_test} "
            "examples of the test set; 0 evaluates the whole test set"
        )
    return dataset


def evaluate_run(config, workdir: str, *, dataset: data.Dataset | None = None) -> dict:
    """``--mode eval``: evaluates the run's last (or best) checkpoint with ``config.eval``
    and writes the ``eval`` section of ``report.json``, naming the step it evaluated."""
    if config.model.get("torch_checkpoint"):
        dataset = load_data(config, dataset)
        model = load_torch_model(config, dataset.info)
        os.makedirs(workdir, exist_ok=True)
    else:
        model = load_trained(workdir, best=config.eval.use_best)
        dataset = load_data(config, dataset)
    report = read_report(workdir) or {}
    report["eval"] = evaluate_model(config, model, dataset, workdir)
    report["eval"]["evaluated_step"] = model.step
    if config.model.get("torch_checkpoint"):
        report["eval"]["torch_checkpoint"] = config.model.torch_checkpoint
        print(f"{workdir}: evaluated the PyTorch checkpoint {config.model.torch_checkpoint}.")
    else:
        training.print_main(f"{workdir}: evaluated the checkpoint of step {model.step}.")
    write_json(os.path.join(workdir, "report.json"), report)
    _clear_eval_state(workdir)
    return report


SUMMARY_FIGURE = os.path.join("figures", "run_summary.png")


def _summary_figure(workdir: str, eval_section: dict) -> str:
    """Writes `plots.run_summary` of the run (process 0) and returns its relative path."""
    from advjax import plots

    if distributed.is_main():
        metrics = training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        plots.run_summary(os.path.join(workdir, SUMMARY_FIGURE), metrics, eval_section)
    return SUMMARY_FIGURE


def _clear_eval_state(workdir: str) -> None:
    """Removes the stored evaluation batches once every process is past them."""
    distributed.sync("advjax_eval_done")
    if distributed.is_main():
        shutil.rmtree(os.path.join(workdir, EVAL_STATE), ignore_errors=True)


def _evaluate_regression(config, model: TrainedModel, dataset: data.Dataset) -> dict:
    """Test MSE of a one-output model, clean and under each eval attack's norm and eps
    (PGD on the squared error, `advjax.objectives.regression.squared_pgd`)."""
    from advjax.attacks.ascent import default_step_size
    from advjax.objectives.regression import squared_pgd

    n = config.eval.num_examples or dataset.num_test
    x, y = dataset.test_x[:n], dataset.test_y[:n]

    def predict(inp):
        return model.logits_fn(inp)[:, 0]

    section = {"num_examples": int(len(x)), "test_mse": float(np.mean((predict(x) - y) ** 2))}
    for name in config.eval.attacks.keys():
        a = config.eval.attacks[name]
        x_adv = squared_pgd(
            predict,
            x,
            y,
            jax.random.fold_in(jax.random.key(config.seed), 11),
            norm=a.norm,
            eps=a.eps,
            step_size=a.get("step_size") or default_step_size(a.eps, a.num_steps),
            num_steps=a.num_steps,
            bounds=tuple(dataset.info.bounds),
        )
        section[f"adversarial_mse_{name}"] = float(np.mean((predict(x_adv) - y) ** 2))
    return section


def _train(config, workdir: str, eval_hook=None, dataset=None):
    dataset = load_data(config, dataset)
    if distributed.is_main():
        os.makedirs(workdir, exist_ok=True)
        claim_workdir(config, workdir)
    write_json(os.path.join(workdir, "dataset_info.json"), dataset.info.to_dict())
    distributed.sync("advjax_run_records")
    objective = build_objective(config.train.objective)
    if objective.prepare is not None:
        objective.prepare(dataset, load_model=lambda wd: load_trained(wd).model)
    start = time.time()
    result = training.train(config, workdir, eval_hook=eval_hook, dataset=dataset)
    return dataset, result, time.time() - start


def train_and_evaluate(
    config, workdir: str, *, eval_hook: Callable | None = None, dataset: data.Dataset | None = None
) -> dict:
    """Trains (resuming if possible), evaluates and writes ``report.json``."""
    validate(config)
    if config.model.get("torch_checkpoint"):
        raise configlib.ConfigError(
            "config key 'model.torch_checkpoint' imports a trained PyTorch model: use it with "
            "--mode eval or --mode analyze, not --mode train"
        )
    dataset, result, seconds = _train(config, workdir, eval_hook, dataset)
    model = _chosen(config, result)
    start = time.time()
    eval_section = evaluate_model(config, model, dataset, workdir)
    report = {
        "data": dataset.info.to_dict()
        | {"num_train": dataset.num_train, "num_test": dataset.num_test},
        "model": dict(config.model),
        "objective": config.train.objective.to_dict(),
        "seed": config.seed,
        "train": result.summary
        | {"finished": True, "wall_seconds_this_call": seconds, "evaluated_step": model.step},
        "eval": eval_section,
        "eval_wall_seconds": time.time() - start,
        "devices": [str(d) for d in jax.devices()],
        "num_processes": jax.process_count(),
    }
    if model.info.num_classes > 1:
        report["figures"] = [_summary_figure(workdir, eval_section)]
    checkpoints.kill_point("during_eval")
    write_json(os.path.join(workdir, "report.json"), report)
    _clear_eval_state(workdir)
    return report


def train_or_load(
    config, workdir: str, *, eval_hook: Callable | None = None, dataset: data.Dataset | None = None
) -> TrainedModel:
    """The trained model of ``config`` in ``workdir``, training it first if needed.

    A finished run is restored without training; an unfinished one resumes. With
    ``config.eval.use_best`` the best validation checkpoint is returned. With
    ``config.model.torch_checkpoint`` set, the imported PyTorch model is returned.
    """
    validate(config)
    if config.model.get("torch_checkpoint"):
        dataset = load_data(config, dataset)
        return load_torch_model(config, dataset.info)
    _, result, _ = _train(config, workdir, eval_hook, dataset)
    return _chosen(config, result)


def _chosen(config, result: training.TrainResult) -> TrainedModel:
    if config.eval.use_best and result.best_model is not None:
        return result.best_model
    return result.model
