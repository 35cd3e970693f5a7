"""Core vs spurious features under adversarial training (Moayeri et al. 2022).

``--mode analyze`` (analysis ``spurious``) runs three parts:

* theory: the closed-form adversarially optimal linear regressors for l_1 / l_2 / l_inf
  over an eps sweep, for the scale pairs lambda_c:lambda_s in {1:1, 1:2, 1:3, 2:1, 3:1}
  on advjax's reconstruction of the paper's data model (only its abstract was available):
  spurious reliance and shifted-domain error, the paper's claims (i)-(iii) checked at
  every pair;
* finite sample: PGD adversarial training of the linear model through the normal training
  loop (``configs/moayeri_linear.py``), one run per norm and scale pair (1:1 and 3:1),
  against least squares on the same sample and the closed form;
* benchmark: MNIST 3s and 8s on class-coloured backgrounds (training correlation
  rho = 0.9; test domains same / random / flipped; binary, like Waterbirds, so a
  background-only classifier is always wrong on the flipped domain), a small CNN trained
  standard and with l_inf (eps 0.1) and l_2 (eps 1.0) PGD-3 AT (``analysis.at_norms``; add
  'l1' for an l_1 model at eps 10), all with the same budget (3 epochs of 6,000 images);
  accuracy per domain, BG-gap, worst-group accuracy, RFS from foreground-only /
  background-only Gaussian noise (sigma 0.5-4, pooled), PGD-10 robust accuracy on the
  'same' and 'random' background domains.

    python launch/main.py --config configs/spurious.py --workdir runs/spurious --mode analyze

About 3 minutes on an idle 2-core CPU (an l_1 model adds about 2: its exact l_1-box
projection is the costly step of each PGD iteration). ``launch/reproduce.py moayeri``
runs the same parts over three seeds (`advjax.findings.moayeri`).
Arguments: ``smoke`` (seconds), ``texture`` (striped backgrounds instead of flat
colours), ``fashion`` (Fashion-MNIST objects via TFDS; needs a prepared ``data.data_dir``).
"""

from __future__ import annotations

from configs import base

ARGS = ("smoke", "fashion", "texture")


def get_config(arg: str | None = None):
    args = set((arg or "").split(","))
    c = base.get_base_config()
    c.data.update(
        dict(
            name="spurious",
            base="tfds:fashion_mnist" if "fashion" in args else "mnist",
            classes=(3, 8),
            rho=0.9,
            background="texture" if "texture" in args else "colour",
            jitter=0.1,
            test_domain="random",
            num_train=6_000,
            num_test=2_000,
        )
    )
    c.model = base.ml_collections.ConfigDict(dict(name="small_cnn"))
    c.eps.linf = 0.1
    c.train.batch_size = 128
    c.train.num_epochs = 3.0
    c.train.optimizer.name = "adam"
    c.train.optimizer.learning_rate = 2e-3
    c.train.optimizer.schedule = "cosine"
    c.train.val_attack = base.ml_collections.ConfigDict(dict(name="none"))
    c.train.val_examples = 500
    c.train.log_every_steps = 50
    c.checkpoint.every_steps = 200
    c.eval.attacks = base.ml_collections.ConfigDict(
        dict(pgd10=base.pgd_attack(norm="linf", eps=base.eps_ref(c), step_size=0.025, num_steps=10))
    )
    c.eval.num_examples = 500
    c.analysis = base.ml_collections.ConfigDict(
        dict(
            name="spurious",
            parts=("theory", "finite_sample", "benchmark"),
            # Theory.
            eps_grid=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6),
            # lambda_c:lambda_s pairs: spurious scale equal, larger, smaller.
            scales=((1.0, 1.0), (1.0, 2.0), (1.0, 3.0), (2.0, 1.0), (3.0, 1.0)),
            d_core=1,
            d_spurious=1,
            noise_core=0.5,
            noise_spurious=1.0,
            theory_steps=6000,
            # Finite sample.
            finite_sample_config="configs/moayeri_linear.py",
            finite_sample_norms=("linf", "l2", "l1"),
            finite_sample_scales=((1.0, 1.0), (3.0, 1.0)),
            # Benchmark: AT radii per norm (PGD-3, step 2.5 eps / 3), the AT models trained,
            # noise levels for RFS, robust accuracy of every model under l_inf and l_2
            # PGD-10 at those radii on the 'same' and 'random' background domains.
            eps=dict(linf=0.1, l2=1.0, l1=10.0),
            at_norms=("linf", "l2"),
            at_steps=3,
            noise_sigmas=(0.5, 1.0, 2.0, 4.0),
            robust_eval_examples=250,
            robust_eval_norms=("linf", "l2"),
            robust_eval_domains=("same", "random"),
        )
    )
    if "smoke" in args:
        c.data.num_train = 600
        c.data.num_test = 250
        c.train.num_epochs = 1.0
        c.train.batch_size = 100
        c.train.val_examples = 100
        c.train.log_every_steps = 3
        c.train.progress = False
        c.checkpoint.every_steps = 10
        c.eval.num_examples = 100
        c.analysis.eps_grid = (0.0, 0.2, 0.4)
        c.analysis.scales = ((1.0, 1.0), (3.0, 1.0))
        c.analysis.theory_steps = 1500
        c.analysis.finite_sample_config = "configs/moayeri_linear.py:smoke"
        c.analysis.finite_sample_norms = ("l2",)
        c.analysis.noise_sigmas = (0.5,)
        c.analysis.finite_sample_scales = ((3.0, 1.0),)
        c.analysis.robust_eval_examples = 0
    return c
