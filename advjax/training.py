"""The train state, the one jitted train step, and the resumable training loop.

``make_train_step(module, objective, tx, ...)`` builds a pure step
``(state, batch, key) -> (state, metrics)`` from any `advjax.objectives.Objective`;
``train(config, workdir)`` drives it: deterministic batches from (seed, step), data
parallelism over a ``jax.sharding.Mesh`` with a ``data`` axis, periodic validation,
checkpoints (last K and best), ``metrics.jsonl`` and a progress bar. Re-running the
same command resumes from the last checkpoint and ends with the same numbers as an
uninterrupted run.

In a multi-process run (`advjax.distributed`) the mesh spans every process's devices,
each process loads only its rows of each global batch and assembles the global batch
with ``jax.make_array_from_process_local_data``; validation batches are split across the
processes and their sums gathered; ``metrics.jsonl`` and ``config.json`` come from
process 0. The global batch, the schedule and the results do not depend on how many
processes share the work.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from advjax import checkpoints, configlib, data, distributed, models, optim
from advjax.compile import jit
from advjax.objectives import Forward, Objective, build_objective
from advjax.progress import progress_bar


class TrainingDivergedError(RuntimeError):
    """Training diverged (non-finite or exploding loss or parameters); the last good
    checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from step to step (a pytree)."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    ema_params: Any = None
    carry: Any = None


@dataclasses.dataclass
class TrainedModel:
    """A model ready for attacks and analyses.

    Attributes:
      config: the run's config.
      module: the flax module.
      variables: ``{"params": ..., **model_state}`` (EMA parameters if the run used EMA).
      info: the dataset's `advjax.data.DatasetInfo`.
      step: the training step the variables come from.
    """

    config: Any
    module: Any
    variables: dict
    info: data.DatasetInfo
    step: int = 0

    def logits_fn(self, x: jax.Array) -> jax.Array:
        """Eval-mode logits; a pure function of ``x`` (BatchNorm statistics frozen)."""
        return self.module.apply(self.variables, x, train=False)

    @property
    def model(self) -> models.Model:
        """The model as data (`advjax.models.Model`): what attacks and analyses take."""
        return models.eval_model(self.module, self.variables)


def make_forward(
    module, model_state: dict, dropout_key: jax.Array, bounds: tuple[float, float] = (0.0, 1.0)
) -> Forward:
    """The train-mode and eval-mode calls of ``module`` for one step."""
    mutable = list(model_state.keys())

    def train_call(params, x):
        variables = {"params": params, **model_state}
        if mutable:
            logits, new_state = module.apply(
                variables, x, train=True, mutable=mutable, rngs={"dropout": dropout_key}
            )
            return logits, dict(new_state)
        return module.apply(variables, x, train=True, rngs={"dropout": dropout_key}), {}

    def eval_call(params, x):
        return module.apply({"params": params, **model_state}, x, train=False)

    return Forward(train=train_call, eval=eval_call, bounds=bounds)


def make_train_step(
    module,
    objective: Objective,
    tx: optax.GradientTransformation,
    *,
    ema_decay: float = 0.0,
    crop_padding: int = 0,
    flip: bool = False,
    eps_ramp_steps: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Callable:
    """A pure train step for ``objective``.

    Args:
      module: the flax module.
      objective: the training objective.
      tx: the optax transformation (optimizer, schedule, clipping, weight decay).
      ema_decay: decay of the parameter EMA (0 = none).
      crop_padding, flip: data augmentation applied inside the step.
      eps_ramp_steps: objectives read ``batch["eps_scale"]``, which rises linearly from
        0 to 1 over these steps (1 throughout when 0), to warm up attack budgets.
      bounds: the input box handed to the objective through ``Forward.bounds``.

    Returns:
      ``step(state, batch, key) -> (state, metrics)``; the key is the run's base key,
      folded with the step inside, so a resumed run draws the same randomness.
    """

    def one_update(state: TrainState, batch, key, replay):
        k_drop, k_obj = jax.random.split(jax.random.fold_in(key, replay))
        forward = make_forward(module, state.model_state, k_drop, bounds)

        def loss_fn(params):
            return objective.loss_fn(params, forward, batch, k_obj, state.carry)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        new_state = state.replace(
            params=params,
            opt_state=opt_state,
            model_state=aux.get("model_state", state.model_state),
            ema_params=ema,
            carry=aux.get("carry", state.carry),
        )
        metrics = {"loss": loss, **aux.get("metrics", {})}
        metrics["param_grad_norm"] = optax.tree.norm(grads)
        metrics["param_norm"] = optax.tree.norm(params)
        return new_state, metrics

    def step(state: TrainState, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        k_aug, k_upd = jax.random.split(key)
        batch = dict(batch)
        batch["x"] = data.augment(k_aug, batch["x"], crop_padding=crop_padding, flip=flip)
        if eps_ramp_steps > 0:
            scale = jnp.minimum((state.step + 1).astype(jnp.float32) / eps_ramp_steps, 1.0)
        else:
            scale = jnp.ones((), jnp.float32)
        batch["eps_scale"] = scale
        if objective.replays == 1:
            state, metrics = one_update(state, batch, k_upd, 0)
        else:
            state, metrics = jax.lax.scan(
                lambda s, r: one_update(s, batch, k_upd, r), state, jnp.arange(objective.replays)
            )
            metrics = jax.tree.map(jnp.mean, metrics)
        return state.replace(step=state.step + 1), metrics

    return step


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Setup:
    """What a run needs before its first step, all checked before any compute."""

    config: Any
    dataset: data.Dataset
    module: Any
    objective: Objective
    tx: optax.GradientTransformation
    total_steps: int
    steps_per_epoch: int
    extras: dict
    mesh: Mesh


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh with axis ``data`` over the first ``num_devices`` local devices of every
    process (all of them for 0), process by process: process ``p``'s devices hold one
    contiguous block of each batch's rows."""
    local = jax.local_devices()
    if num_devices and num_devices > len(local):
        raise ValueError(
            f"config key 'train.num_devices': {num_devices} requested, {len(local)} available"
        )
    per_process: dict[int, list] = {}
    for d in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
        per_process.setdefault(d.process_index, []).append(d)
    devices = [d for p in sorted(per_process) for d in per_process[p][: num_devices or None]]
    return Mesh(np.asarray(devices), ("data",))


def total_train_steps(train_config, num_train: int) -> tuple[int, int]:
    per_epoch = data.steps_per_epoch(num_train, train_config.batch_size)
    if train_config.num_steps > 0:
        return int(train_config.num_steps), per_epoch
    return max(int(math.ceil(train_config.num_epochs * per_epoch)), 1), per_epoch


def setup(config, dataset: data.Dataset | None = None) -> Setup:
    """Loads data and builds model, objective and optimizer (``config`` is validated by
    the callers, `advjax.runs` and the launcher)."""
    mesh = make_mesh(config.train.num_devices)
    if config.train.batch_size % mesh.size:
        raise ValueError(
            f"config key 'train.batch_size': {config.train.batch_size} is not divisible by "
            f"the {mesh.size} devices of the data-parallel mesh"
        )
    dataset = dataset if dataset is not None else data.load_dataset(config.data)
    module = models.build_model(config.model, dataset.info)
    objective = build_objective(config.train.objective)
    total, per_epoch = total_train_steps(config.train, dataset.num_train)
    tx = optim.make_optimizer(config.train.optimizer, total_steps=total)
    extras = {}
    if objective.extra_train_arrays is not None:
        extras = {k: np.asarray(v) for k, v in objective.extra_train_arrays(dataset).items()}
        if config.data.crop_padding or config.data.flip:
            raise configlib.ConfigError(
                f"config keys 'data.crop_padding'/'data.flip': objective "
                f"{config.train.objective.name!r} trains on per-example arrays "
                f"({', '.join(extras)}) that augmentation would misalign; turn augmentation off"
            )
        for k, v in extras.items():
            if v.shape[0] != dataset.num_train:
                raise ValueError(
                    f"objective {config.train.objective.name!r}: extra array {k!r} has "
                    f"{v.shape[0]} rows, the training set {dataset.num_train}"
                )
    return Setup(config, dataset, module, objective, tx, total, per_epoch, extras, mesh)


def new_state(module, objective: Objective, tx, config, info, key: jax.Array) -> TrainState:
    """A fresh `TrainState`: initial variables, optimizer state, EMA and carry."""
    variables = models.init_variables(module, info, key)
    params = variables.pop("params")
    carry = None
    if objective.uses_carry:
        carry = jnp.zeros((config.train.batch_size, *info.input_shape), jnp.float32)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=variables,
        opt_state=tx.init(params),
        # A copy: the training step donates the state, and XLA refuses to donate one
        # buffer twice.
        ema_params=jax.tree.map(jnp.copy, params) if config.train.ema_decay > 0 else None,
        carry=carry,
    )


def init_state(s: Setup, key: jax.Array) -> TrainState:
    return new_state(s.module, s.objective, s.tx, s.config, s.dataset.info, key)


def state_shardings(state: TrainState, mesh: Mesh):
    """Everything replicated except the per-example carry, which follows the batch."""
    replicated = NamedSharding(mesh, P())
    shardings = jax.tree.map(lambda _: replicated, state)
    if state.carry is not None:
        shardings = shardings.replace(carry=NamedSharding(mesh, P("data")))
    return shardings


def batch_seed(config) -> int:
    """The seed of the batch order: changes with both ``seed`` and ``data.seed``."""
    return int(config.data.seed + 1_000_003 * config.seed)


def get_batch(s: Setup, step: int) -> dict:
    """This process's rows of the global batch of ``step`` (all of it in one process)."""
    idx = data.batch_indices(
        step,
        num_examples=s.dataset.num_train,
        batch_size=s.config.train.batch_size,
        seed=batch_seed(s.config),
        process_index=distributed.process_index(),
        process_count=distributed.process_count(),
    )
    batch = {"x": s.dataset.train_x[idx], "y": s.dataset.train_y[idx]}
    batch.update({k: v[idx] for k, v in s.extras.items()})
    return batch


# ------------------------------------------------------------------------ evaluation


def trained_model(s: Setup, state: TrainState) -> TrainedModel:
    params = state.ema_params if state.ema_params is not None else state.params
    # Attacks and analyses run per process on local data: they need local variables.
    variables = distributed.host_local({"params": params, **state.model_state})
    return TrainedModel(
        config=s.config,
        module=s.module,
        variables=variables,
        info=s.dataset.info,
        step=int(state.step),
    )


def validation_split(s: Setup) -> tuple[np.ndarray, np.ndarray, str]:
    """The validation split, or the first test examples when none is held out."""
    n = s.config.train.val_examples
    if s.dataset.val_x is not None:
        return s.dataset.val_x[:n], s.dataset.val_y[:n], "val"
    return s.dataset.test_x[:n], s.dataset.test_y[:n], "test_subset"


@functools.partial(jit, static_argnames=("attack", "bounds", "classification"))
def _validation_stats(attack, model: models.Model, x, y, key, *, bounds, classification):
    """Summed clean (and robust) correctness of one validation batch.

    Module level with the attack static and the model as data: every run of one
    architecture and validation attack shares the compiled program.
    """
    logits = model(x)
    if not classification:
        return {"val_mse": jnp.sum((logits[:, 0] - y) ** 2)}
    out = {"val_accuracy": jnp.sum(jnp.argmax(logits, -1) == y)}
    if attack is not None:
        x_adv = attack(model, x, y, key, bounds=bounds)
        out["val_robust_accuracy"] = jnp.sum(jnp.argmax(model(x_adv), -1) == y)
    return out


def _validation_keys(classification: bool, robust: bool) -> tuple[str, ...]:
    if not classification:
        return ("val_mse",)
    return ("val_accuracy", "val_robust_accuracy") if robust else ("val_accuracy",)


def make_validator(s: Setup) -> Callable[[TrainedModel, jax.Array], dict]:
    """Clean and (cheap) robust accuracy on the validation split, jitted per batch."""
    from advjax.attacks import build_attack

    x_val, y_val, source = validation_split(s)
    val_attack = s.config.train.val_attack
    attack = None
    if val_attack.name != "none":
        attack = build_attack(val_attack, key="train.val_attack.name")
    bs = min(s.config.eval.batch_size, max(len(x_val), 1))
    classification = s.dataset.info.num_classes > 1
    bounds = tuple(float(b) for b in s.dataset.info.bounds)

    def batch_stats(variables, x, y, key):
        return _validation_stats(
            attack,
            models.eval_model(s.module, variables),
            x,
            y,
            key,
            bounds=bounds,
            classification=classification,
        )

    def validate(model: TrainedModel, key: jax.Array) -> dict:
        if len(x_val) == 0:
            return {}
        totals: dict[str, float] = {}
        n = (len(x_val) // bs) * bs  # Static shapes: the remainder is left out.
        # Batch i runs on process i mod P with key fold_in(key, i): the sums (of counts)
        # equal those of one process.
        rank, size = distributed.process_index(), distributed.process_count()
        for i, start in enumerate(range(0, n, bs)):
            if i % size != rank:
                continue
            stats = batch_stats(
                model.variables,
                x_val[start : start + bs],
                y_val[start : start + bs],
                jax.random.fold_in(key, i),
            )
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        if size > 1:
            names = sorted(_validation_keys(classification, attack is not None))
            local = np.asarray([totals.get(k, 0.0) for k in names], np.float64)
            totals = dict(
                zip(names, distributed.allgather(local).sum(axis=0).tolist(), strict=True)
            )
        return {k: v / n for k, v in totals.items()} | {"val_source": source, "val_examples": n}

    return validate


# ------------------------------------------------------------------------------ loop


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file (``metrics.jsonl``); none when it is absent."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: str, records: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def _jsonable(v):
    if isinstance(v, (np.generic, jax.Array)):
        return float(v)
    return v


@dataclasses.dataclass
class TrainResult:
    model: TrainedModel
    best_model: TrainedModel | None
    summary: dict


def train(
    config,
    workdir: str,
    *,
    eval_hook: Callable[[TrainedModel, int, float], dict] | None = None,
    dataset: data.Dataset | None = None,
) -> TrainResult:
    """Trains (or resumes training) the run described by ``config`` in ``workdir``.

    Args:
      config: a full advjax config (see configs/base.py).
      workdir: the run folder; it receives config.json, metrics.jsonl, checkpoints/.
      eval_hook: optional ``(model, step, epoch) -> metrics`` called at every periodic
        evaluation and at the end; its values are logged with the step.
      dataset: an already loaded dataset (skips loading ``config.data``).

    Returns:
      The final (and best) `TrainedModel` and a summary for report.json.

    Raises:
      TrainingDivergedError: the loss became non-finite; the last good checkpoint stays.
    """
    s = setup(config, dataset)
    main = distributed.is_main()
    if main:
        os.makedirs(workdir, exist_ok=True)
        configlib.claim_workdir(config, workdir)
    distributed.sync("advjax_train_workdir")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    ckpt = checkpoints.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep
    )
    base_key = jax.random.key(config.seed)
    init_key, step_key, val_key = jax.random.split(base_key, 3)

    state = init_state(s, init_key)
    initial_params = state.params
    shardings = state_shardings(state, s.mesh)
    batch_sharding = NamedSharding(s.mesh, P("data"))
    # The restore target lives on the mesh, so every process reads only its own shards.
    state = distributed.global_arrays(state, shardings)
    meta: dict = {"finished": False, "best": None, "best_step": None, "stopped_early": False}
    start_step = 0
    if ckpt.latest_step() is not None:
        try:
            state, meta = ckpt.restore(state, fallback=True)
        except checkpoints.DamagedCheckpointError:
            pass  # Every checkpoint is damaged: start again from step 0 (same result).
        for bad in ckpt.damaged:
            moved = ckpt.quarantine(bad)
            checkpoints.warn(f"the damaged checkpoint of step {bad} is kept in {moved}")
        start_step = int(state.step)
        if main:
            records = [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= start_step]
            _write_jsonl(metrics_path, records)
            if meta.get("finished"):
                print(f"{workdir}: training finished at step {start_step}; nothing to train.")
            else:
                print(f"Resuming {workdir} from step {start_step} of {s.total_steps}.")
    elif main and os.path.exists(metrics_path):
        _write_jsonl(metrics_path, [])

    state = jax.device_put(state, shardings)
    rows = distributed.local_rows(batch_sharding, config.train.batch_size)
    share = config.train.batch_size // distributed.process_count()
    if (rows.start, rows.stop) != (distributed.process_index() * share, rows.start + share):
        raise RuntimeError(f"the mesh gives this process rows {rows}, its batch share differs")
    step_fn = jit(
        make_train_step(
            s.module,
            s.objective,
            s.tx,
            ema_decay=config.train.ema_decay,
            crop_padding=config.data.crop_padding,
            flip=config.data.flip,
            eps_ramp_steps=int(config.train.eps_ramp_fraction * s.total_steps),
            bounds=tuple(s.dataset.info.bounds),
        ),
        in_shardings=(shardings, batch_sharding, NamedSharding(s.mesh, P())),
        out_shardings=(shardings, NamedSharding(s.mesh, P())),
        donate_argnums=(0,),
    )
    validate = make_validator(s)
    eval_every = config.train.eval_every_steps or s.steps_per_epoch
    schedule = optim.make_schedule(config.train.optimizer, total_steps=s.total_steps)

    tensorboard = _tensorboard_writer(config, workdir, start_step) if main else None

    def log(record: dict) -> None:
        if not main:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        if tensorboard is not None:
            for k, v in record.items():
                if k not in ("step", "epoch") and isinstance(_jsonable(v), (int, float)):
                    tensorboard.add_scalar(k, float(v), record["step"])

    def periodic_eval(step: int) -> dict:
        model = trained_model(s, state)
        out = validate(model, jax.random.fold_in(val_key, step))
        if eval_hook is not None:
            out.update(eval_hook(model, step, step / s.steps_per_epoch))
        return out

    def save(step: int, *, finished: bool = False, best: bool = False) -> None:
        meta["finished"] = finished
        # Every process saves (orbax coordinates them; process 0 writes what is shared).
        host_state = jax.device_get(distributed.host_local(state))
        guard.check_state(step, host_state)
        ckpt.save(step, host_state, dict(meta, step=step), best=best)

    guard = DivergenceGuard(s, workdir, initial_params)
    guard.last_good = ckpt.latest_step()
    pending = None  # Metrics of the step in flight: fetched after the next dispatch.
    window_start, window_examples = time.time(), 0
    bar = progress_bar(
        total=s.total_steps,
        initial=start_step,
        enabled=bool(config.train.progress) and main,
        desc=f"train {config.train.objective.name}",
        unit="step",
    )
    step = start_step
    try:
        while step < s.total_steps and not meta["finished"]:
            batch = _global_batch(get_batch(s, step), batch_sharding, config.train.batch_size)
            state, metrics = step_fn(state, batch, step_key)
            step += 1
            if pending is not None:
                guard.check_metrics(*pending)
            pending = (step, metrics)
            window_examples += config.train.batch_size
            boundary_log = step % config.train.log_every_steps == 0
            boundary_eval = step % eval_every == 0 or step == s.total_steps
            boundary_ckpt = step % config.checkpoint.every_steps == 0 or step == s.total_steps
            if boundary_log or boundary_eval or boundary_ckpt:
                guard.check_metrics(*pending)
                pending = None
            if boundary_log:
                elapsed = max(time.time() - window_start, 1e-9)
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                record = {
                    "step": step,
                    "epoch": step / s.steps_per_epoch,
                    **host,
                    "lr": float(schedule(step - 1)),
                    "examples_per_sec": window_examples / elapsed,
                }
                log(record)
                bar.set_postfix(
                    loss=f"{host['loss']:.3f}", ex_s=f"{record['examples_per_sec']:.0f}"
                )
                window_start, window_examples = time.time(), 0
            is_best = False
            if boundary_eval:
                val = periodic_eval(step)
                log({"step": step, "epoch": step / s.steps_per_epoch, **val})
                score = val.get("val_robust_accuracy", val.get("val_accuracy"))
                if score is None and "val_mse" in val:
                    score = -val["val_mse"]
                if score is not None and (meta["best"] is None or score > meta["best"]):
                    meta["best"], meta["best_step"], is_best = score, step, True
                drop = config.train.early_stop_drop
                ramped = step >= int(config.train.eps_ramp_fraction * s.total_steps)
                if drop > 0 and ramped and score is not None and score < meta["best"] - drop:
                    meta["stopped_early"] = True
                    print_main(
                        f"Early stop at step {step}: validation score {score:.3f} fell more than "
                        f"{drop} below its best {meta['best']:.3f} (step {meta['best_step']}); "
                        f"the best checkpoint is the result."
                    )
            done = step == s.total_steps or meta["stopped_early"]
            if is_best:
                # The best checkpoint commits before the last one: the last one may carry
                # the "finished" mark, and a run killed between the two commits must resume
                # (and replay this step) rather than evaluate a stale best checkpoint.
                save(step, finished=done, best=True)
                ckpt.wait()
                checkpoints.kill_point("between_best_and_last", step)
            if boundary_ckpt or is_best or done:
                save(step, finished=done)
                guard.last_good = step
            bar.update(1)
            if meta["stopped_early"]:
                break
        if pending is not None:
            guard.check_metrics(*pending)
    finally:
        bar.close()
        if tensorboard is not None:
            tensorboard.close()
        ckpt.wait()

    model = trained_model(s, state)
    best_model = None
    if ckpt.latest_step(best=True) is not None:
        best_state, _ = ckpt.restore(jax.device_get(distributed.host_local(state)), best=True)
        best_model = trained_model(s, best_state)
    ckpt.close()
    if meta["stopped_early"] and best_model is not None:
        model = best_model
    summary = {
        "steps": int(state.step),
        "total_steps": s.total_steps,
        "epochs": int(state.step) / s.steps_per_epoch,
        "best_val": meta["best"],
        "best_step": meta["best_step"],
        "stopped_early": meta["stopped_early"],
        "num_params": models.count_params(state.params),
        "num_train": s.dataset.num_train,
        "num_devices": s.mesh.size,
    }
    return TrainResult(model=model, best_model=best_model, summary=summary)


def print_main(*args, **kwargs) -> None:
    """``print`` on process 0 only (one line per run, not per process)."""
    if distributed.is_main():
        print(*args, **kwargs)


def _global_batch(local: dict, sharding: NamedSharding, batch_size: int) -> dict:
    """The global batch from this process's rows (every process passes its own)."""
    if distributed.process_count() == 1:
        return jax.device_put(local, sharding)
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (batch_size, *v.shape[1:]))
        for k, v in local.items()
    }


def _tensorboard_writer(config, workdir: str, start_step: int):
    """A TensorBoard event writer in ``workdir`` (next to metrics.jsonl) when
    ``config.train.tensorboard`` is on (tensorboardX: no TensorFlow needed); None otherwise.

    A resumed run purges the events an interrupted attempt wrote after ``start_step``.
    """
    if not config.train.get("tensorboard", False):
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(logdir=workdir, purge_step=start_step + 1 if start_step else None)


# One compiled program for every parameter tree of a shape (not one per leaf, eagerly).
_tree_norm = jit(optax.tree.norm)


class DivergenceGuard:
    """Stops a diverging run before it is saved (``config.train.divergence``).

    A step diverges when its loss or parameter norm is not finite, its loss exceeds
    ``loss_factor`` times the median of the previous ``window`` losses (floored at 1e-3,
    so a run that fits its data perfectly is not stopped by one hard batch), or its
    parameter norm exceeds ``param_norm_factor`` times the norm at initialisation. A
    checkpoint is written only when `check_state` finds its parameters finite and its
    logits on a fixed probe batch finite.

    Args:
      s: the run's setup.
      workdir: the run folder (named in messages).
      initial_params: the parameters at step 0 (the reference norm).
    """

    MEDIAN_FLOOR = 1e-3
    PROBE_EXAMPLES = 64

    def __init__(self, s: Setup, workdir: str, initial_params):
        cfg = s.config.train.get("divergence", None)
        self.loss_factor = float(cfg.loss_factor) if cfg is not None else 0.0
        self.param_factor = float(cfg.param_norm_factor) if cfg is not None else 0.0
        self.losses: collections.deque = collections.deque(
            maxlen=int(cfg.window) if cfg is not None else 100
        )
        self.initial_norm = float(_tree_norm(initial_params))
        self.s, self.workdir = s, workdir
        self.last_good: int | None = None
        x_probe, _, _ = validation_split(s)
        if len(x_probe) == 0:
            x_probe = s.dataset.train_x
        self.probe = np.asarray(x_probe[: self.PROBE_EXAMPLES])
        self._logits = jit(lambda variables, x: s.module.apply(variables, x, train=False))

    def _stop(self, what: str) -> None:
        where = (
            f"the last good checkpoint (step {self.last_good}) is kept in "
            f"{self.workdir}/checkpoints"
            if self.last_good is not None
            else "no checkpoint had been written yet"
        )
        opt = self.s.config.train.optimizer
        raise TrainingDivergedError(
            f"training diverged: {what} (objective {self.s.config.train.objective.name!r}, "
            f"{opt.name} at learning rate {opt.learning_rate}); {where}. Lower "
            f"train.optimizer.learning_rate or set train.optimizer.grad_clip_norm and rerun "
            f"in a fresh --workdir (thresholds: train.divergence)."
        )

    def check_metrics(self, step: int, metrics) -> None:
        """Raises `TrainingDivergedError` if the metrics of ``step`` show divergence."""
        loss = float(metrics["loss"])
        param_norm = float(metrics["param_norm"])
        if not math.isfinite(loss):
            self._stop(f"loss became {loss} at step {step}")
        if not math.isfinite(param_norm):
            self._stop(f"the parameters became non-finite at step {step}")
        if self.param_factor and param_norm > self.param_factor * self.initial_norm:
            self._stop(
                f"the parameter norm reached {param_norm:.3g} at step {step}, more than "
                f"{self.param_factor:g} x its initial {self.initial_norm:.3g}"
            )
        if self.loss_factor and self.losses:
            median = float(np.median(self.losses))
            if loss > self.loss_factor * max(median, self.MEDIAN_FLOOR):
                self._stop(
                    f"loss {loss:.3g} at step {step} is more than {self.loss_factor:g} x its "
                    f"running median {median:.3g}"
                )
        self.losses.append(loss)

    def check_state(self, step: int, host_state: TrainState) -> None:
        """Raises `TrainingDivergedError` unless ``host_state`` is fit to be saved."""
        trees = [host_state.params]
        if host_state.ema_params is not None:
            trees.append(host_state.ema_params)
        if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(trees)):
            self._stop(f"the parameters of step {step} are not finite")
        model = trained_model(self.s, host_state)
        logits = np.asarray(self._logits(model.variables, self.probe))
        if not np.isfinite(logits).all():
            self._stop(f"the parameters of step {step} give non-finite logits on a probe batch")


def restore_target(config, info: data.DatasetInfo) -> tuple[Any, TrainState]:
    """The module and an abstract `TrainState` (shapes only) to restore a run into."""
    module = models.build_model(config.model, info)
    objective = build_objective(config.train.objective)
    tx = optim.make_optimizer(config.train.optimizer, total_steps=1)
    abstract = jax.eval_shape(
        lambda key: new_state(module, objective, tx, config, info, key), jax.random.key(0)
    )
    return module, abstract
