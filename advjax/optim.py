"""Optimizers and learning-rate schedules built from ``config.train.optimizer``."""

from __future__ import annotations

import optax

from advjax.registry import one_of

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "piecewise", "cyclic")


def check_optimizer_config(opt, *, total_steps: int) -> None:
    """Validates ``config.train.optimizer`` with messages that name the key."""
    one_of(opt.name, OPTIMIZERS, key="train.optimizer.name")
    one_of(opt.schedule, SCHEDULES, key="train.optimizer.schedule")
    if not opt.learning_rate > 0:
        raise ValueError(
            f"config key 'train.optimizer.learning_rate': must be > 0, got {opt.learning_rate}"
        )
    for key in ("weight_decay", "grad_clip_norm", "warmup_steps", "momentum"):
        if opt[key] < 0:
            raise ValueError(f"config key 'train.optimizer.{key}': must be >= 0, got {opt[key]}")
    if opt.schedule == "piecewise":
        b = list(opt.boundaries)
        if not b or any(not 0 < f < 1 for f in b) or b != sorted(b):
            raise ValueError(
                f"config key 'train.optimizer.boundaries': piecewise needs increasing fractions of "
                f"training in (0, 1), got {b}"
            )
    if opt.schedule == "cyclic" and not 0 < opt.cycle_peak < 1:
        raise ValueError(
            f"config key 'train.optimizer.cycle_peak': must be in (0, 1), got {opt.cycle_peak}"
        )
    if total_steps <= 0:
        raise ValueError("training has 0 steps: raise train.num_epochs or train.num_steps")


def make_schedule(opt, *, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule; boundaries are fractions of ``total_steps``."""
    lr = float(opt.learning_rate)
    warmup = int(opt.warmup_steps)
    if opt.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif opt.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
    elif opt.schedule == "piecewise":
        main = optax.piecewise_constant_schedule(
            lr,
            {int(f * total_steps) - warmup: float(opt.decay_factor) for f in opt.boundaries},
        )
    else:  # cyclic: the triangular one-cycle of Wong et al. 2020 (0 -> lr -> 0).
        peak = max(int(opt.cycle_peak * total_steps), 1)
        main = optax.join_schedules(
            [
                optax.linear_schedule(0.0, lr, peak),
                optax.linear_schedule(lr, 0.0, total_steps - peak),
            ],
            [peak],
        )
        return main
    if warmup > 0:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
    return main


def make_optimizer(opt, *, total_steps: int) -> optax.GradientTransformation:
    """Gradient clipping, weight decay and the optimizer with its schedule."""
    check_optimizer_config(opt, total_steps=total_steps)
    schedule = make_schedule(opt, total_steps=total_steps)
    parts = []
    if opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
    if opt.name == "sgd":
        if opt.weight_decay > 0:
            parts.append(optax.add_decayed_weights(float(opt.weight_decay)))
        parts.append(
            optax.sgd(schedule, momentum=float(opt.momentum) or None, nesterov=bool(opt.nesterov))
        )
    elif opt.name == "adam":
        if opt.weight_decay > 0:  # L2 penalty through the gradient, as torch.optim.Adam does.
            parts.append(optax.add_decayed_weights(float(opt.weight_decay)))
        parts.append(optax.adam(schedule))
    else:
        parts.append(optax.adamw(schedule, weight_decay=float(opt.weight_decay)))
    return optax.chain(*parts)
