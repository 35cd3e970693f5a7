"""Madry et al. 2018 PGD adversarial training on CIFAR-10 (cifar10_challenge recipe).

Published recipe (``MadryLab/cifar10_challenge`` config.json): the challenge's wide
ResNet (5 residual units per stage, widths 160/320/640, i.e. WRN-34-10), l_inf
eps = 8/255, PGD with 10 steps of 2/255 and random start (the paper says 7 steps),
momentum SGD 0.9, learning rate 0.1 -> 0.01 -> 0.001 at 40k / 60k steps, 80k steps,
batch 128, weight decay 2e-4, random crops and flips. Published figures: 87.3% natural
accuracy; 47.04% under PGD-20 (CE), 45.21% with 10 restarts, 43.95% for the best
leaderboard attack.

Expected run time: about 1-2 days on one modern GPU (11 forward/backward passes of a
46M-parameter WRN per batch); impractical on a CPU. Needs CIFAR-10 prepared for TFDS
(``--config.data.data_dir``); this machine has no copy.

Arguments (comma-separated):
  ``cpu``: WRN-10-1 with PGD-5 on 5,000 training images for 5 epochs, evaluated on 500
    test images (tens of minutes): checks the pipeline, not the figures.
  ``smoke``: a run of seconds.
"""

from __future__ import annotations

from configs import base
from configs.cifar10_fgsm_rs import cifar10_eval_attacks
from configs.mnist_fgsm_rs import shrink_ensemble

ARGS = ("smoke", "cpu")


def get_config(arg: str | None = None):
    c = base.get_base_config()
    c.eps.linf = 8 / 255
    eps = base.eps_ref(c)
    c.data.name = "tfds:cifar10"
    c.data.crop_padding = 4
    c.data.flip = True
    c.model = base.ml_collections.ConfigDict(dict(name="wide_resnet", depth=34, width=10))
    c.train.objective = base.ml_collections.ConfigDict(
        dict(name="pgd_at", attack=base.pgd_attack(eps=eps, step_size=2 / 255, num_steps=10))
    )
    c.train.batch_size = 128
    c.train.num_steps = 80_000
    c.train.optimizer.name = "sgd"
    c.train.optimizer.learning_rate = 0.1
    c.train.optimizer.momentum = 0.9
    c.train.optimizer.weight_decay = 2e-4
    c.train.optimizer.schedule = "piecewise"
    c.train.optimizer.boundaries = [0.5, 0.75]
    c.train.optimizer.decay_factor = 0.1
    c.train.val_attack = base.pgd_attack(eps=eps, step_size=2 / 255, num_steps=10)
    c.train.eval_every_steps = 5000
    c.eval.batch_size = 250
    c.eval.num_examples = 1000
    c.eval.attacks = cifar10_eval_attacks(eps)
    c.eval.attacks.pgd20 = base.pgd_attack(eps=eps, step_size=2 / 255, num_steps=20)
    c.checkpoint.every_steps = 2000
    args = set((arg or "").split(","))
    if "cpu" in args:
        c.model.depth = 10
        c.model.width = 1
        c.train.objective.attack = base.pgd_attack(
            eps=eps, step_size=2.5 * c.eps.linf / 5, num_steps=5
        )
        c.data.num_train = 5000
        c.train.num_steps = 0
        c.train.num_epochs = 5.0
        c.train.eval_every_steps = 0
        c.train.val_examples = 500
        c.eval.num_examples = 500
        c.checkpoint.every_steps = 200
    if "smoke" in args:
        base.shrink_for_smoke(c)
        c.model.depth = 10
        c.model.width = 1
        shrink_ensemble(c.eval.attacks.ensemble)
    return c
