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
accuracy, PGD-20 (step 0.01) and the ensemble APGD-CE, APGD-T (9 targets), Square (5,000
queries), each on the points still robust; PGD-20 also on the whole 10k test set
(``eval.full_test_set_attacks``). Robust accuracy is the per-example worst case, and
every sanity check of `advjax.evaluation` runs, among them the black-box check (Square
may fool at most 0.2% of the points that the white-box components leave robust). That
check fails for this recipe: Square fools about 1.7% of the points that APGD-CE and
APGD-T leave robust (gradient masking), so the ensemble's worst case, not PGD-20, is the
number to quote (README, "Results measured here"). Ten training steps instead of five
and the parameter average (2.8% without it) each narrowed the gap by about a point.
Forty-five other changes did not close it (gap 0.5-7.9%, none at 0.2%; every change
below 1.1% cost clean or robust accuracy); ``results/black_box_gap/recipes.md`` lists
each with its gap, clean and robust accuracy. On all 10k test images (one H200) the gap
of this recipe is 1.26% (seed 1: 1.56%), and 2.10% with 12 epochs.
``configs/black_box_gap.py`` measures why (README, "Results measured here"): the points
Square alone fools are points near the decision boundary on which APGD stalls just short
of it (lowest white-box margin 0.003-0.66 against a median of 4.65 over all robust
points), Square's points are barely across it, the margin falls monotonically on the
straight path to them, and at x about 60% of the input coordinates (the background) have
a zero gradient, so sign steps never move them while Square sets whole windows of them
to +-eps. APGD-CE or APGD-DLR with 20 restarts fool 9 of the 14; earlier, on the model
without the average, PGD-100 started halfway along Square's perturbation fooled a third
of them, and on this recipe's model at an earlier commit FAB-T (9 targets) 1 of 16.

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
