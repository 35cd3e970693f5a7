"""FGSM with random start on MNIST (Wong, Rice & Kolter 2020, "Fast is better than free").

Published recipe (``locuslab/fast_adversarial`` MNIST/train_mnist.py): the small CNN
(conv 4x4-16 s2, conv 4x4-32 s2, fc 100, fc 10), l_inf eps = 0.3, alpha = 0.375
(1.25 eps) with a uniform random start, Adam with a cyclic learning rate peaking at
5e-3, 10 epochs, batch 100; evaluation with PGD-50 (step 0.01) and 10 restarts.
Published figures: the README gives none for MNIST; the paper reports roughly 98-99%
clean and about 88-89% PGD accuracy at eps 0.3 (from memory, not checked against the
paper's table). Catastrophic overfitting (PGD accuracy collapsing while FGSM accuracy
soars) is guarded against by the training loop: a PGD-10 check on 1,000 held-out
training images each epoch, early stopping when it falls 0.2 below its best, and
evaluation of the best checkpoint.

Expected run time on a 2-core CPU: about 1-2 minutes per epoch, so 15-25 minutes for
the 10 epochs, plus a few minutes of evaluation on the first 1,000 test images.

Arguments (comma-separated):
  ``cpu``: a wider small CNN (32/64 channels, fc 256), 12 epochs, eps ramped up over the
    first 20% of training. Measured here (seed 0, first 1,000 test images, best = last
    checkpoint, no early stop): 99.2% clean; 87.2% under PGD-50 x 10 restarts; 83.1%
    after APGD-CE, 81.3% after APGD-T and 79.5% after Square, i.e. 79.5% worst case,
    short of the 88% target (a black-box attack finding more points to the gradient
    masking FGSM training is prone to). Training took 32 minutes and the evaluation 53
    minutes on the 2-core CPU shared with other jobs (about 8 and 15 minutes alone).
    The multi-step recipes (configs/mnist_pgd.py, configs/mnist_trades.py on a GPU)
    are the ones expected to pass 88% under the ensemble.
  ``smoke``: a run of seconds that exercises every stage.
"""

from __future__ import annotations

from configs import base

ARGS = ("smoke", "cpu")


def eval_attacks(eps):
    """Wong et al.'s PGD-50 x 10 restarts and the attack library's AutoAttack-style
    ensemble (APGD-CE, APGD-T, Square); the report's robust accuracy is the
    per-example worst case over both."""
    return base.ml_collections.ConfigDict(
        dict(
            pgd50_r10=base.pgd_attack(eps=eps, step_size=0.01, num_steps=50, num_restarts=10),
            ensemble=dict(name="ensemble", eps=eps, attacks=("apgd_ce", "apgd_t", "square")),
        )
    )


def shrink_ensemble(ensemble) -> None:
    """Cuts an ensemble config to a few steps and queries (smoke runs)."""
    ensemble.num_steps = 5
    ensemble.num_targets = 2
    ensemble.num_queries = 20
    ensemble.boundary_restarts = 2
    ensemble.boundary_steps = 5


def get_config(arg: str | None = None):
    c = base.get_base_config()
    eps = base.eps_ref(c)
    c.model = base.ml_collections.ConfigDict(dict(name="small_cnn", channels=(16, 32), hidden=100))
    c.train.objective = base.ml_collections.ConfigDict(
        dict(name="fgsm_rs", eps=eps, step_size=1.25 * c.eps.linf, norm="linf")
    )
    c.train.batch_size = 100
    c.train.num_epochs = 10.0
    c.train.optimizer.name = "adam"
    c.train.optimizer.learning_rate = 5e-3
    c.train.optimizer.schedule = "cyclic"
    c.train.optimizer.cycle_peak = 0.4
    # Catastrophic-overfitting guard: PGD accuracy of held-out training images.
    c.data.num_val = 1000
    c.train.val_examples = 1000
    c.train.val_attack = base.pgd_attack(eps=eps, step_size=0.05, num_steps=10)
    c.train.early_stop_drop = 0.2
    c.eval.use_best = True
    c.eval.num_examples = 1000
    c.eval.attacks = eval_attacks(eps)
    c.checkpoint.every_steps = 600
    args = set((arg or "").split(","))
    if "cpu" in args:
        c.model.channels = (32, 64)
        c.model.hidden = 256
        c.train.num_epochs = 12.0
        c.train.eps_ramp_fraction = 0.2
    if "smoke" in args:
        base.shrink_for_smoke(c)
        c.data.num_val = 100
        c.train.val_examples = 100
        shrink_ensemble(c.eval.attacks.ensemble)
    return c
