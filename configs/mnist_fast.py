"""The default advjax run: a robust MNIST model in minutes on a CPU.

Fast adversarial training in the manner of Wong, Rice and Kolter 2020 ("Fast is better
than free"): the small CNN, one PGD step from a uniform random start in the l_inf ball
(FGSM with random start) of length 1.25 eps, eps 0.3, Adam with a cyclic learning rate.
Two cheap changes make it reliable without early-stopping restarts: the eps budget
ramps up linearly over the first epochs, and a held-out validation split watches for
catastrophic overfitting (PGD accuracy collapsing), keeping the best checkpoint.

Evaluation: clean accuracy and the worst case of two PGD-20 attacks (l_inf eps 0.3,
random start, steps 0.01 and 0.0375) on the 10k MNIST test set, with sanity checks.
Arguments: ``smoke`` (seconds).
"""

from __future__ import annotations

from configs import base

ARGS = ("smoke",)


def get_config(arg: str | None = None):
    c = base.get_base_config()
    c.data.num_val = 1000
    c.model.name = "small_cnn"
    c.train.objective = base.ml_collections.ConfigDict(
        dict(
            name="pgd_at",
            attack=base.pgd_attack(eps=base.eps_ref(c), step_size=0.1, num_steps=3),
            clean_weight=0.0,
        )
    )
    c.train.batch_size = 100
    c.train.num_epochs = 8.0
    c.train.eps_ramp_fraction = 0.2
    c.train.optimizer.name = "adam"
    c.train.optimizer.learning_rate = 5e-3
    c.train.optimizer.schedule = "cyclic"
    c.train.optimizer.cycle_peak = 0.4
    c.train.val_examples = 1000
    c.train.val_attack = base.pgd_attack(eps=base.eps_ref(c), step_size=0.05, num_steps=10)
    c.train.early_stop_drop = 0.2
    c.train.log_every_steps = 100
    c.checkpoint.every_steps = 500
    # PGD-20 as in Madry et al. (step 0.01) and with the step that crosses the ball
    # (2.5 eps / steps); robust accuracy in report.json is the per-example worst case.
    c.eval.attacks = base.ml_collections.ConfigDict(
        dict(
            pgd20=base.pgd_attack(eps=base.eps_ref(c), step_size=0.01, num_steps=20),
            pgd20_large_step=base.pgd_attack(eps=base.eps_ref(c), step_size=0.0375, num_steps=20),
        )
    )
    c.eval.use_best = True
    if "smoke" in (arg or "").split(","):
        base.shrink_for_smoke(c)
        c.data.num_val = 100
    return c
