"""Tsipras et al. 2019 toy model: l_inf adversarial training of a linear classifier.

"Robustness May Be at Odds with Accuracy", section 2: d = 1000 weak features
``N(eta y, 1)`` with ``eta = 3 / sqrt(d)`` and one robust feature ``x_1 = +-y`` (agreeing
with probability p = 0.95). A linear model (two logits: logistic loss) is trained with
PGD-AT at l_inf eps = 2 eta; PGD on a linear model is exact (the gradient sign is constant,
so 5 steps of eps/2 reach the worst-case corner). Expected: almost all weight on x_1,
standard and robust accuracy about p. ``--mode analyze`` (analysis ``tradeoff_toy``) also
trains the standard counterpart, evaluates the closed forms (averaging classifier at
Phi(3) ~ 99.87% standard and Phi(-3) ~ 0.13% robust accuracy) against Monte-Carlo, and
checks Theorem 1 on a sweep of classifiers. About a minute on a 2-core CPU.

    python launch/main.py --config configs/tradeoff_toy.py --workdir runs/toy --mode analyze

Arguments: ``smoke`` (d = 50, seconds).
"""

from __future__ import annotations

import math

from configs import base

ARGS = ("smoke",)


def get_config(arg: str | None = None):
    args = set((arg or "").split(","))
    dim = 50 if "smoke" in args else 1000
    eps = 2.0 * 3.0 / math.sqrt(dim)
    c = base.get_base_config()
    c.eps.linf = eps
    c.data.update(
        dict(name="tsipras_toy", dim=dim, eta=0.0, p=0.95, num_train=10_000, num_test=10_000)
    )
    c.model = base.ml_collections.ConfigDict(dict(name="linear"))
    attack = base.pgd_attack(norm="linf", eps=base.eps_ref(c), step_size=eps / 2, num_steps=5)
    c.train.objective = base.ml_collections.ConfigDict(dict(name="pgd_at", attack=attack))
    c.train.batch_size = 200
    c.train.num_epochs = 20.0
    c.train.optimizer.name = "adam"
    c.train.optimizer.learning_rate = 0.01
    c.train.optimizer.schedule = "cosine"
    c.train.val_attack = base.pgd_attack(
        norm="linf", eps=base.eps_ref(c), step_size=eps / 2, num_steps=5
    )
    c.train.val_examples = 2000
    c.train.log_every_steps = 100
    c.checkpoint.every_steps = 500
    c.eval.attacks = base.ml_collections.ConfigDict(
        dict(
            pgd10=base.pgd_attack(norm="linf", eps=base.eps_ref(c), step_size=eps / 4, num_steps=10)
        )
    )
    c.eval.num_examples = 2000
    # PGD on a linear model converges to the same corner from every start, so the
    # "random start matters" sanity check would flag an exact attack as broken.
    c.eval.sanity_checks = False
    c.analysis = base.ml_collections.ConfigDict(
        dict(
            name="tradeoff_toy",
            # Mixtures w_alpha = alpha e_1 + (1 - alpha) [0, 1/d, ..., 1/d] checked against
            # Theorem 1; the trade-off happens at small alpha.
            alphas=tuple(round(0.01 * i, 2) for i in range(31)) + (0.4, 0.5, 0.6, 0.8, 1.0),
            num_monte_carlo=20_000,
            train_standard=True,
        )
    )
    if "smoke" in args:
        c.data.num_train = 1000
        c.data.num_test = 1000
        c.train.num_epochs = 4.0
        c.train.batch_size = 100
        c.train.val_examples = 200
        c.train.log_every_steps = 10
        c.train.progress = False
        c.checkpoint.every_steps = 20
        c.eval.num_examples = 200
        c.analysis.num_monte_carlo = 2000
        c.analysis.alphas = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
    return c
