"""The default advjax run: a robust MNIST model in minutes on a CPU, evaluated with the
AutoAttack-style ensemble.

Training: PGD adversarial training (Madry et al. 2018) of the small CNN of Wong, Rice
and Kolter 2020, with 10 PGD steps of 2.5 eps_train / 10 from a uniform random start.
The training radius is 7/6 of the evaluation eps (0.35 for eps 0.3, linked to
``config.eps.linf``): the extra margin raises robust accuracy at eps under every attack
of the ensemble. The radius ramps up linearly over the first 20% of training; Adam with
a cyclic learning rate (peak 5e-3 at 40%), batch 100, 6 epochs; the evaluated model is
the exponential moving average of the parameters (decay 0.998, a horizon of about 500
of the 3,600 steps); a held-out validation split (1,000 training images, PGD-10) keeps
the best checkpoint and stops a run whose robust accuracy collapses.

Evaluation, on the first ``eval.num_examples`` (1,000) test images, l_inf eps 0.3: clean
accuracy, PGD-20 (step 0.01) and the ensemble APGD-CE, APGD-T (9 targets), APGD-B
(`advjax.attacks.boundary`), Square (5,000 queries), each on the points still robust;
PGD-20 also on the whole 10k test set (``eval.full_test_set_attacks``). Robust accuracy
is the per-example worst case, and every sanity check of `advjax.evaluation` runs, among
them the black-box check (Square may fool at most 0.2% of the points that the white-box
components leave robust).

The model has a black-box gap against AutoAttack's components: Square fools about 1.7%
of the points that APGD-CE and APGD-T leave robust (AutoAttack's own code finds the
same), points near the boundary where the gradient is zero on most of the background.
Forty-five changes to the recipe did not close it (gap 0.5-7.9%, none at 0.2%; every
change below 1.1% cost clean or robust accuracy; ``results/black_box_gap/recipes.md``).
APGD-B closes it from the attack's side: on the points closest to the boundary it runs
restarts from block starts along a Gaussian-smoothed gradient, and Square then fools
0.2% (README, "Results measured here"; ``configs/black_box_gap.py`` measures the gap).

Arguments: ``smoke`` (seconds).
"""

from __future__ import annotations

from configs import base
from configs.mnist_fgsm_rs import shrink_ensemble

ARGS = ("smoke",)

# Training radius over evaluation radius.
TRAIN_EPS_FACTOR = 7.0 / 6.0
TRAIN_PGD_STEPS = 10


def get_config(arg: str | None = None):
    c = base.get_base_config()
    eps = base.eps_ref(c)
    train_eps = eps * TRAIN_EPS_FACTOR
    c.data.num_val = 1000
    c.model.name = "small_cnn"
    c.train.objective = base.ml_collections.ConfigDict(
        dict(
            name="pgd_at",
            attack=base.pgd_attack(
                eps=train_eps,
                step_size=train_eps * (2.5 / TRAIN_PGD_STEPS),
                num_steps=TRAIN_PGD_STEPS,
            ),
            clean_weight=0.0,
        )
    )
    c.train.batch_size = 100
    c.train.num_epochs = 6.0
    c.train.eps_ramp_fraction = 0.2
    c.train.optimizer.name = "adam"
    c.train.optimizer.learning_rate = 5e-3
    c.train.optimizer.schedule = "cyclic"
    c.train.optimizer.cycle_peak = 0.4
    c.train.ema_decay = 0.998
    c.train.val_examples = 1000
    c.train.val_attack = base.pgd_attack(eps=eps, step_size=0.05, num_steps=10)
    c.train.early_stop_drop = 0.2
    c.train.log_every_steps = 100
    c.checkpoint.every_steps = 500
    # The ensemble costs thousands of model calls per image on a CPU, so the default
    # evaluates a stated subset; --config.eval.num_examples=0 gives the whole test set.
    c.eval.num_examples = 1000
    c.eval.attacks = base.ml_collections.ConfigDict(
        dict(
            pgd20=base.pgd_attack(eps=eps, step_size=0.01, num_steps=20),
            ensemble=dict(
                name="ensemble", eps=eps, attacks=("apgd_ce", "apgd_t", "apgd_boundary", "square")
            ),
        )
    )
    # PGD-20 also on the whole 10k test set (seconds), next to the ensemble's subset.
    c.eval.full_test_set_attacks = ("pgd20",)
    c.eval.use_best = True
    if "smoke" in (arg or "").split(","):
        base.shrink_for_smoke(c)
        c.data.num_val = 100
        shrink_ensemble(c.eval.attacks.ensemble)
    return c
