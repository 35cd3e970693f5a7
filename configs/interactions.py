"""Multi-order interactions of a standard and an adversarially trained MNIST model (Ren et al.).

`python launch/main.py --config configs/interactions.py --workdir runs/interactions
--mode analyze` trains (or restores) both models under ``runs/interactions/models/``: the
small CNN, standard for 1 epoch, and the robust model of configs/mnist_fast.py (PGD-5 AT at
eps 0.35 ramped in, Adam with a cyclic rate) for 4 epochs (3-4 minutes on a 2-core CPU; its
PGD-20 accuracy at eps 0.3 is in the report's ``robust_accuracy``). It then draws a pool of
300 random test images (seeded by ``config.seed``), evaluates both models on it (clean and
PGD-20), attacks the pool to a true-class logit drop in (2, 2.5] (eps at most 0.4), keeps 30
images that both models classify correctly and both attacks bring into the band (round-robin
over classes), and estimates I^(m)(i, j) on a 7x7 grid of 4x4 cells (n = 49) for 20
neighbouring pairs per image, 9 orders m/n in {0.1, ..., 0.9} and 16 contexts per (pair,
order), for v = log p(y | x_S) and v = log-odds from the same forward passes: 4 x 20 x 9 x 16
model calls per image, model and condition (1-2 minutes). Point
``--config.analysis.models.standard.workdir`` (and ``.robust``) at run folders to share them.

Arguments: ``weak`` (the earlier CPU-sized PGD-AT model: PGD-5 at eps 0.3 for 2 epochs on 30k
images, about 56% PGD-10 accuracy, band (4, 4.5] at eps 0.3), ``smoke`` (a run of seconds).

The band differs from the reference code's (8, 8.5] because the logits of small MNIST
networks are smaller than those of ImageNet ResNets: a drop of 8 (or 4) is out of reach of
the strong adversarially trained model at eps 0.3-0.4 for most images.
"""

from __future__ import annotations

import ml_collections

from configs import base

ARGS = ("smoke", "weak")


def get_config(arg: str | None = None):
    c = base.get_base_config()
    c.data.num_test = 0  # the whole test set; ``analysis.pool_size`` images are scanned
    c.eval.attacks = ml_collections.ConfigDict()
    c.analysis = ml_collections.ConfigDict(
        dict(
            name="interactions",
            models=dict(
                standard=dict(
                    config="configs/mnist_standard.py",
                    workdir="",  # empty: <workdir>/models/standard
                    overrides=dict(train=dict(num_epochs=1.0)),
                ),
                robust=dict(
                    config="configs/mnist_fast.py",
                    workdir="",
                    # PGD-5 (step 2.5 x 0.35 / 5), the recipe results/ren/ was run with.
                    overrides=dict(
                        train=dict(
                            num_epochs=4.0,
                            objective=dict(attack=dict(num_steps=5, step_size=0.175)),
                        )
                    ),
                ),
            ),
            pool_size=300,  # random test images (seed: config.seed); 0 = all, in order
            grid=(7, 7),
            baseline="mean",  # mean | zero | blur
            blur_sigma=2.0,
            # Game values, all from the same forward passes; the first is the headline.
            outputs=("log_prob", "log_odds"),  # of log_prob | log_odds | logit
            label="true",  # true | adv_prediction (the class predicted on x_adv)
            pairs="neighbour",  # neighbour | random
            num_images=30,
            num_pairs=20,
            num_contexts=16,
            ratios=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            bands=(0.3, 0.7),  # low: m/n <= 0.3, high: m/n >= 0.7
            chunk_size=128,  # masked images per model call (CPU caches favour small batches)
            exact_grid=(3, 3),  # exact decomposition on a coarse grid; () to skip
            attack=dict(
                eps=0.4,
                step_size=0.01,
                max_steps=200,
                band=(2.0, 2.5),
                norm="linf",
                init_std=0.001,
            ),
            # Robust accuracy of both models on the pool, reported next to the analysis.
            robust_eval=base.pgd_attack(eps=0.3, step_size=0.01, num_steps=20),
        )
    )
    if arg == "weak":
        a = c.analysis
        a.models.robust.config = "configs/mnist_pgd.py:cpu"
        # CPU-sized PGD-AT: PGD-5 (step 0.1) at eps 0.3 ramped in over the first 30% of 2
        # epochs on 30k images.
        a.models.robust.overrides = ml_collections.ConfigDict(
            dict(
                data=dict(num_train=30_000),
                train=dict(
                    num_epochs=2.0,
                    eps_ramp_fraction=0.3,
                    objective=dict(attack=dict(num_steps=5, step_size=0.1)),
                ),
            )
        )
        a.attack.band = (4.0, 4.5)
        a.attack.eps = 0.3
    elif arg == "smoke":
        a = c.analysis
        a.pool_size = 100
        for name, spec in (
            ("standard", "configs/mnist_standard.py:smoke"),
            ("robust", "configs/mnist_pgd.py:smoke"),
        ):
            a.models[name].config = spec
            a.models[name].overrides = ml_collections.ConfigDict(dict(train=dict(num_epochs=6.0)))
        # Three PGD steps at eps 0.3 on 512 images do not train; eps 0.1 does, in seconds.
        a.models.robust.overrides.train.objective = dict(attack=dict(eps=0.1))
        a.num_images, a.num_pairs, a.num_contexts = 3, 4, 4
        a.ratios = [0.1, 0.5, 0.9]
        a.attack.band = (0.5, 1.0)
        a.attack.eps = 0.3
        a.attack.step_size = 0.02
        a.attack.max_steps = 60
        a.exact_grid = (2, 3)
        a.chunk_size = 128
        a.robust_eval = base.pgd_attack(eps=0.1, step_size=0.05, num_steps=3)
    elif arg:
        raise ValueError(
            f"configs/interactions.py: unknown argument {arg!r}; allowed: 'weak', 'smoke'"
        )
    return c
