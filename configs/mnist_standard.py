"""Standard (non-robust) training on MNIST: the baseline every robust model is compared to.

`python launch/main.py --config configs/mnist_standard.py --workdir runs/mnist_standard`
trains the small CNN for 5 epochs (about 2 minutes on a 2-core CPU), then evaluates
clean and PGD-20 (l_inf, eps 0.3) accuracy on the 10k test set. Arguments:
``madry`` for the Madry CNN, ``smoke`` for a run of seconds.
"""

from __future__ import annotations

from configs import base

ARGS = ("smoke", "madry")


def get_config(arg: str | None = None):
    c = base.get_base_config()
    c.model.name = "small_cnn"
    c.train.objective.name = "standard"
    c.train.batch_size = 100
    c.train.num_epochs = 5.0
    c.train.optimizer.learning_rate = 1e-3
    c.train.val_attack.name = "none"
    args = set((arg or "").split(","))
    if "madry" in args:
        c.model.name = "madry_cnn"
        c.train.optimizer.learning_rate = 1e-4
        c.train.batch_size = 50
    if "smoke" in args:
        base.shrink_for_smoke(c)
    return c
