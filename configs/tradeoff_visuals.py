"""Tsipras et al. 2019, section 4: what standard and robust MNIST models look like.

Trains (or restores) two small CNNs of one architecture: a standard one and an l_2
PGD-AT one (eps_train 2.0, 7 steps of 0.7, eps ramped up over the first 20% of
training), then draws input-gradient maps, large-eps l_2 adversarial examples
(eps 5, 100 steps of 0.25 on CE, untargeted and toward every class) and the
interpolation x + t * delta, as PNG grids with their numbers in tradeoff_visuals.json.

    python launch/main.py --config configs/tradeoff_visuals.py --workdir runs/visuals \\
        --mode analyze

Set ``--config.analysis.robust_workdir=DIR`` (and ``standard_workdir``) to study models
of finished runs instead, e.g. one trained with configs/mnist_fgsm_rs.py (then use
``--config.analysis.norm=linf --config.analysis.eps=0.3 ...`` or keep the l_2 attack).

Expected run time on a 2-core CPU: about 10-15 minutes (both trainings, 3 epochs each);
the visuals themselves take a minute or two. Arguments: ``smoke`` (seconds).

Measured here on the small-data sweep's n = 1,000 models (standard vs l_2 eps_train 2,
8 test images, eps 5): share of |gradient| on the digit 0.18 vs 0.47; gradient-image
correlation 0.18 vs 0.59; targeted examples nearer the target-class mean than the
source-class mean 49% vs 75%.
"""

from __future__ import annotations

from configs import base

ARGS = ("smoke",)


def get_config(arg: str | None = None):
    args = set((arg or "").split(","))
    c = base.get_base_config()
    c.data.name = "mnist"
    c.model = base.ml_collections.ConfigDict(dict(name="small_cnn", channels=(32, 64), hidden=256))
    c.eps.l2 = 2.0  # eps_train of the robust model (objective and validation)
    c.train.objective = base.ml_collections.ConfigDict(
        dict(
            name="pgd_at",
            attack=base.pgd_attack(
                norm="l2", eps=base.eps_ref(c, "l2"), step_size=0.7, num_steps=7
            ),
        )
    )
    c.train.batch_size = 100
    c.train.num_epochs = 3.0
    c.train.eps_ramp_fraction = 0.2
    c.train.optimizer.name = "adam"
    c.train.optimizer.learning_rate = 1e-3
    c.train.optimizer.schedule = "cosine"
    c.train.val_attack = base.pgd_attack(
        norm="l2", eps=base.eps_ref(c, "l2"), step_size=0.5, num_steps=10
    )
    c.train.log_every_steps = 100
    c.checkpoint.every_steps = 600
    c.analysis = base.ml_collections.ConfigDict(
        dict(
            name="tradeoff_visuals",
            standard_workdir="",  # restore instead of training when set
            robust_workdir="",
            num_images=8,
            norm="l2",
            eps=5.0,
            step_size=0.25,
            num_steps=100,
            num_interpolation=9,
            foreground_threshold=0.5,
        )
    )
    if "smoke" in args:
        base.shrink_for_smoke(c)
        c.model = base.ml_collections.ConfigDict(dict(name="small_cnn"))
        c.train.num_epochs = 1.0
        c.train.progress = False
        c.analysis.num_images = 3
        c.analysis.num_steps = 5
        c.analysis.step_size = 2.0
        c.analysis.num_interpolation = 4
    return c
