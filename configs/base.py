"""Shared defaults for every advjax config.

Each experiment config starts from `get_base_config()` and overrides what it needs.
The returned ConfigDict is locked by the launcher, so a misspelt override such as
``--config.train.lerning_rate`` fails before any compute.
"""

from __future__ import annotations

import ml_collections  # noqa: F401 - configs use base.ml_collections


def pgd_attack(
    *,
    norm: str = "linf",
    eps,
    step_size: float,
    num_steps: int,
    random_start: bool = True,
    num_restarts: int = 1,
    loss: str = "ce",
):
    """An attack config for `advjax.attacks.pgd.build_pgd`."""
    return ml_collections.ConfigDict(
        dict(
            name="pgd",
            norm=norm,
            eps=eps,
            step_size=step_size,
            num_steps=num_steps,
            random_start=random_start,
            num_restarts=num_restarts,
            loss=loss,
        )
    )


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # One eps per threat model, shared by reference (`eps_ref`) by the training,
    # validation and evaluation attacks: --config.eps.linf=0.2 changes all three.
    c.eps = ml_collections.ConfigDict(dict(linf=0.3))

    c.data = ml_collections.ConfigDict(
        dict(
            name="mnist",  # mnist | tfds:<name> | idx:<folder> | tsipras_toy | spurious | ...
            num_train=0,  # 0 = all
            num_test=0,  # 0 = all
            num_val=0,  # training examples held out for validation / best checkpoint
            seed=0,
            data_dir="",  # TFDS data_dir
            download=False,  # TFDS downloads (never on an offline machine)
            cache_dir="",  # decoded-array cache (default ~/.cache/advjax)
            crop_padding=0,  # augmentation: random crop after padding
            flip=False,  # augmentation: random horizontal flip
        )
    )
    # torch_checkpoint: a PyTorch state-dict file to evaluate or analyse instead of a
    # trained run (--mode eval / analyze); model.name and its fields pick the converter.
    c.model = ml_collections.ConfigDict(dict(name="small_cnn", torch_checkpoint=""))

    c.train = ml_collections.ConfigDict()
    c.train.objective = ml_collections.ConfigDict(dict(name="standard"))
    c.train.batch_size = 128
    c.train.num_epochs = 1.0
    c.train.num_steps = 0  # > 0 overrides num_epochs
    c.train.num_devices = 0  # 0 = all local devices (data parallel)
    c.train.optimizer = ml_collections.ConfigDict(
        dict(
            name="adam",  # sgd | adam | adamw
            learning_rate=1e-3,
            momentum=0.9,
            nesterov=False,
            weight_decay=0.0,
            grad_clip_norm=0.0,  # 0 = off
            schedule="constant",  # constant | cosine | piecewise | cyclic
            warmup_steps=0,
            boundaries=(0.5, 0.75),  # piecewise: fractions of training
            decay_factor=0.1,
            cycle_peak=0.4,  # cyclic: fraction of training at the peak
        )
    )
    c.train.eps_ramp_fraction = 0.0  # linear eps warm-up over this fraction of training
    c.train.ema_decay = 0.0  # 0 = no EMA of parameters
    c.train.log_every_steps = 50
    c.train.eval_every_steps = 0  # 0 = once per epoch
    c.train.val_examples = 1000  # examples of the validation split used in periodic evaluation
    c.train.val_attack = pgd_attack(eps=eps_ref(c), step_size=0.1, num_steps=5)
    # > 0: stop when the validation score (robust accuracy if an attack is set) falls this
    # far below its best, once any eps ramp is over (catastrophic overfitting, Wong et al.).
    c.train.early_stop_drop = 0.0
    c.train.progress = True  # progress bars (also off with ADVJAX_PROGRESS=0 or no terminal)
    # Stop a diverging run before it is saved: a loss above loss_factor x its running
    # median over `window` steps, or a parameter norm above param_norm_factor x its
    # initial value (0 = off).
    c.train.divergence = ml_collections.ConfigDict(
        dict(loss_factor=1e3, param_norm_factor=1e3, window=100)
    )
    c.train.tensorboard = False  # also write TensorBoard event files next to metrics.jsonl

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 500
    c.eval.num_examples = 0  # 0 = the whole test set
    # Names of eval.attacks that also run on the whole test set when num_examples
    # evaluates a subset (report: eval.full_test_set), e.g. a cheap PGD next to an
    # ensemble that only a subset can afford.
    c.eval.full_test_set_attacks = ()
    c.eval.attacks = ml_collections.ConfigDict(
        dict(pgd20=pgd_attack(eps=eps_ref(c), step_size=0.01, num_steps=20))
    )
    c.eval.eps_grid = ()  # a tuple, so --config.eval.eps_grid='(0.1, 0.2)' overrides it
    c.eval.sanity_checks = True
    c.eval.use_best = False  # evaluate the best (val) checkpoint instead of the last

    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep=3))
    c.analysis = ml_collections.ConfigDict(dict(name=""))
    return c


def eps_ref(c: ml_collections.ConfigDict, norm: str = "linf"):
    """The shared eps of threat model ``norm`` (``c.eps.<norm>``), as a FieldReference."""
    return c.eps.get_ref(norm)


def shrink_for_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config in place to a run of seconds that still exercises every stage."""
    c.data.num_train = 512
    c.data.num_test = 200
    c.data.num_val = 0
    c.train.batch_size = 64
    c.train.num_epochs = 2.0
    c.train.num_steps = 0
    c.train.log_every_steps = 4
    c.train.val_examples = 100
    c.checkpoint.every_steps = 5
    c.eval.batch_size = 100
    c.eval.num_examples = 200
    attacks = [c.eval.attacks[name] for name in c.eval.attacks.keys()] + [c.train.val_attack]
    if "attack" in c.train.objective:
        attacks.append(c.train.objective.attack)
    for attack in attacks:
        _shorten(attack, num_steps=5)
    return c


def _shorten(attack: ml_collections.ConfigDict, *, num_steps: int) -> None:
    """Cuts an attack to ``num_steps`` steps, lengthening the step so it still reaches
    the boundary of the eps-ball (2.5 eps / steps, Madry et al.)."""
    if "num_steps" in attack and attack.num_steps > num_steps:
        attack.num_steps = num_steps
        if "step_size" in attack and "eps" in attack:
            attack.step_size = max(attack.step_size, 2.5 * attack.eps / num_steps)
    if "num_restarts" in attack:
        attack.num_restarts = 1
