"""Finite-sample adversarial training of the core/spurious linear regression model.

The linear-regression setting of Moayeri et al. 2022, "Explicit Tradeoffs between
Adversarial and Natural Distributional Robustness" (as its abstract states it; the
Gaussian model below is advjax's reconstruction, not the paper's own section-3 model,
which was not available): a linear model ``w^T x + b`` trained with squared loss and an
l_p PGD inner maximisation (objective ``squared_at``) on 10,000 draws of the Gaussian model
with one core feature (noise 0.5) and one spurious feature (noise 1), both of scale 1
(``data.scale_core`` / ``data.scale_spurious`` change the scales).
Training lands on the minimiser of the closed-form adversarial risk
(`advjax.analysis.tradeoff.minimize_adversarial_risk`) up to sampling error; the
``spurious`` analysis (``--mode analyze``) trains one such model per norm and compares.

    python launch/main.py --config configs/moayeri_linear.py:l1 --workdir runs/moayeri_l1

Arguments (comma-separated): ``linf`` | ``l2`` (default) | ``l1`` (threat model of the
inner maximisation), ``smoke`` (seconds). Wall time on a 2-core CPU: about a minute.
"""

from __future__ import annotations

from configs import base

ARGS = ("smoke", "linf", "l2", "l1")


def get_config(arg: str | None = None):
    args = set((arg or "").split(","))
    norm = next((n for n in ("linf", "l2", "l1") if n in args), "l2")
    c = base.get_base_config()
    c.data.update(
        dict(
            name="moayeri_regression",
            num_train=10_000,
            num_test=10_000,
            num_val=0,
            seed=0,
            d_core=1,
            d_spurious=1,
            scale_core=1.0,
            scale_spurious=1.0,
            noise_core=0.5,
            noise_spurious=1.0,
            test_spurious_sign=1.0,
        )
    )
    c.model = base.ml_collections.ConfigDict(dict(name="linear"))
    c.train.objective = base.ml_collections.ConfigDict(
        dict(
            name="squared_at",
            attack=dict(
                name="pgd",
                norm=norm,
                eps=0.4,
                step_size=0.1,
                num_steps=10,
                random_start=False,
                num_restarts=1,
            ),
        )
    )
    c.train.batch_size = 1000
    c.train.num_epochs = 60.0
    c.train.optimizer.name = "adam"
    c.train.optimizer.learning_rate = 0.02
    c.train.optimizer.schedule = "cosine"
    c.train.val_attack = base.ml_collections.ConfigDict(dict(name="none"))
    c.train.val_examples = 2000
    c.train.eval_every_steps = 0
    c.train.log_every_steps = 100
    c.checkpoint.every_steps = 300
    c.eval.attacks = base.ml_collections.ConfigDict()
    c.eval.sanity_checks = False
    c.eval.num_examples = 2000
    c.analysis = base.ml_collections.ConfigDict(
        dict(name="spurious", parts=("theory", "finite_sample"))
    )
    if "smoke" in args:
        c.data.num_train = 2000
        c.data.num_test = 500
        c.train.num_epochs = 5.0
        c.train.batch_size = 500
        c.train.val_examples = 200
        c.train.log_every_steps = 5
        c.checkpoint.every_steps = 10
        c.eval.num_examples = 200
        c.train.progress = False
    return c
