"""FGSM with random start on CIFAR-10 (Wong, Rice & Kolter 2020, CIFAR10/train_fgsm.py).

Published recipe: PreAct ResNet-18, l_inf eps = 8/255, alpha = 10/255 with a uniform
random start, SGD momentum 0.9, weight decay 5e-4, batch 128, cyclic learning rate
peaking at 0.2, 15 epochs, random crops (padding 4) and flips, mixed precision; early
stopping on the PGD accuracy of a training batch against catastrophic overfitting.
Published figures (README, PGD-50 with 10 restarts): 86.06% clean, 46.06% robust at
eps = 8/255, 12 minutes on one GPU (Free AT: 85.96% / 46.33%, 785 min; PGD-7 AT:
87.30% / 45.80%, 4966 min).

Expected run time: about 15-30 minutes on one modern GPU (no mixed precision here); on
a 2-core CPU one epoch takes several hours. Needs CIFAR-10 prepared for TFDS
(``--config.data.data_dir``); this machine has no copy.

Arguments (comma-separated):
  ``cpu``: a quarter-width PreAct ResNet-18 on 5,000 training images for 5 epochs,
    evaluated on 500 test images (tens of minutes): checks the pipeline, not the figures.
  ``smoke``: a run of seconds.
"""

from __future__ import annotations

from configs import base
from configs.mnist_fgsm_rs import shrink_ensemble

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


ARGS = ("smoke", "cpu")


def cifar10_eval_attacks(eps):
    """PGD-50 x 10 restarts (Wong et al.) and the AutoAttack-style ensemble."""
    return base.ml_collections.ConfigDict(
        dict(
            pgd50_r10=base.pgd_attack(eps=eps, step_size=2 / 255, num_steps=50, num_restarts=10),
            # version='standard' | 'plus' | 'rand' runs AutoAttack's own (see ensemble.py).
            ensemble=dict(
                name="ensemble", eps=eps, version="", attacks=("apgd_ce", "apgd_t", "square")
            ),
        )
    )


def get_config(arg: str | None = None):
    c = base.get_base_config()
    c.eps.linf = 8 / 255
    eps = base.eps_ref(c)
    c.data.name = "tfds:cifar10"
    c.data.crop_padding = 4
    c.data.flip = True
    c.model = base.ml_collections.ConfigDict(
        dict(name="preact_resnet18", mean=CIFAR10_MEAN, std=CIFAR10_STD)
    )
    c.train.objective = base.ml_collections.ConfigDict(
        dict(name="fgsm_rs", eps=eps, step_size=10 / 255, norm="linf")
    )
    c.train.batch_size = 128
    c.train.num_epochs = 15.0
    c.train.optimizer.name = "sgd"
    c.train.optimizer.learning_rate = 0.2
    c.train.optimizer.momentum = 0.9
    c.train.optimizer.weight_decay = 5e-4
    c.train.optimizer.schedule = "cyclic"
    c.train.optimizer.cycle_peak = 0.5
    # Catastrophic-overfitting guard (held-out training images, PGD-10).
    c.data.num_val = 1000
    c.train.val_examples = 1000
    c.train.val_attack = base.pgd_attack(eps=eps, step_size=2 / 255, num_steps=10)
    c.train.early_stop_drop = 0.2
    c.eval.use_best = True
    c.eval.batch_size = 250
    c.eval.num_examples = 1000
    c.eval.attacks = cifar10_eval_attacks(eps)
    c.checkpoint.every_steps = 1000
    args = set((arg or "").split(","))
    if "cpu" in args:
        c.model.widths = (16, 32, 64, 128)
        c.data.num_train = 5000
        c.data.num_val = 500
        c.train.val_examples = 500
        c.train.num_epochs = 5.0
        c.eval.num_examples = 500
        c.checkpoint.every_steps = 200
    if "smoke" in args:
        base.shrink_for_smoke(c)
        c.model.widths = (8, 16, 16, 16)
        c.data.num_val = 100
        c.train.val_examples = 100
        shrink_ensemble(c.eval.attacks.ensemble)
    return c
