"""Robust and non-robust components of the between-class KL during training (Shi et al.).

`python launch/main.py --config configs/information.py --workdir runs/information
--mode analyze` trains the small MNIST CNN under standard training, PGD-AT and TRADES
(l_inf eps 0.3, 5-step inner maximisations, eps ramped over the first fifth of training)
on 10k training images for 4 epochs. At initialisation and after every epoch it measures,
on 500 test images: clean and PGD-10 accuracy; the metric M with advjax's two proxy
splits into robust and non-robust parts (the paper's formula is not available): first, on
256 between-class pairs, the split under an adversary that perturbs both inputs to merge
their predictions, then R_eps + N_eps on KL-maximising inputs (l_inf eps 0.3); the
input Fisher information (mean ||F||_F and lambda_max on 100 images); and I(Y; Z) of the
penultimate layer on clean and adversarial inputs. About 15 minutes on a shared 2-core
CPU. Results: ``information.json`` and ``figures/*.png`` in the workdir.

Arguments (comma-separated): ``smoke`` (a run of seconds), ``fisher`` (adds the
Fisher/KL-regularised objective of Shi et al. as a fourth regime), ``findings`` (the
per-seed size of ``python launch/reproduce.py shi``: the same training, measured on 300
evaluation images and 200 pairs, without I(Y; Z)).
"""

from __future__ import annotations

import ml_collections

from configs import base

ARGS = ("smoke", "fisher", "findings")


def get_config(arg: str | None = None):
    c = base.get_base_config()
    c.data.num_train = 10000
    c.data.num_test = 1000
    c.model.name = "small_cnn"
    c.train.batch_size = 100
    c.train.num_epochs = 4.0
    c.train.optimizer.name = "adam"
    c.train.optimizer.learning_rate = 1e-3
    c.train.eps_ramp_fraction = 0.2
    c.train.eval_every_steps = 100  # one epoch of 10k images
    c.train.log_every_steps = 20
    c.train.val_attack.name = "none"  # the analysis measures robust accuracy itself
    c.train.val_examples = 100
    c.checkpoint.every_steps = 100
    c.eval.attacks = ml_collections.ConfigDict()
    c.eval.sanity_checks = False

    inner = dict(eps=0.3, step_size=0.1, num_steps=5)
    c.analysis = ml_collections.ConfigDict(
        dict(
            name="information",
            regimes=dict(
                standard=dict(name="standard"),
                pgd_at=dict(name="pgd_at", attack=base.pgd_attack(**inner).to_dict()),
                trades=dict(
                    name="trades", beta=6.0, attack=base.pgd_attack(**inner, loss="kl").to_dict()
                ),
            ),
            # Threat model of the decomposition: x -> argmax KL(p(x) || p(x')) in B_eps(x).
            threat=dict(norm="linf", eps=0.3, step_size=0.05, num_steps=10),
            # Robust accuracy and the adversarial inputs of I(Y; Z_adv): PGD-10 on CE.
            attack=dict(norm="linf", eps=0.3, step_size=0.075, num_steps=10, random_start=True),
            num_examples=500,
            num_pairs=256,  # between-class pairs for the merging-adversary reading
            fisher_examples=100,
            chunk_size=250,
            layer="auto",  # penultimate dense layer; or a submodule name such as 'Dense_0'
            mutual_information=True,  # I(Y; Z) and I(Y; Y_hat) at every evaluation
            mi_bound="infonce",  # dv | nwj | infonce
            mi_depth=0,  # bilinear critic: 250 training pairs overfit deeper critics
            mi_steps=100,  # more steps overfit the 250 training pairs (held-out bound drops)
            mi_batch_size=125,
            power_iters=100,
            l2_eps=0.05,  # small l_2 ball for the Fisher approximation check
        )
    )
    args = set((arg or "").split(","))
    if "fisher" in args:
        c.analysis.regimes.fisher_kl = ml_collections.ConfigDict(
            dict(name="fisher_kl", beta=5.0, attack=base.pgd_attack(**inner).to_dict())
        )
    if "findings" in args:
        # One seed of `python launch/reproduce.py shi` (advjax.findings.shi): the same
        # regimes, training, threat model and attacks, measured on fewer examples, so that
        # three seeds take about 10 minutes on an idle 2-core CPU; I(Y; Z) is not part of
        # the findings and is skipped.
        a = c.analysis
        a.num_examples = 300
        a.num_pairs = 200
        a.fisher_examples = 50
        a.chunk_size = 150
        a.mutual_information = False
    if "smoke" in args:
        base.shrink_for_smoke(c)
        c.train.num_epochs = 2.0
        c.train.eval_every_steps = 4
        c.train.eps_ramp_fraction = 0.0
        c.eval.attacks = ml_collections.ConfigDict()
        a = c.analysis
        for name in a.regimes.keys():
            if "attack" in a.regimes[name]:
                a.regimes[name].attack.num_steps = 2
                a.regimes[name].attack.step_size = 0.15
        a.threat.num_steps = 3
        a.attack.num_steps = 3
        a.attack.step_size = 0.1
        a.num_examples = 100
        a.fisher_examples = 20
        a.num_pairs = 40
        a.chunk_size = 50
        a.mi_steps = 20
        a.mi_batch_size = 25
        a.power_iters = 5
    return c
