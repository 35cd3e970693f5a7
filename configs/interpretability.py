"""Noack et al. (2021): interpretation regularisation vs. gradient-norm baselines on MNIST.

Eight models on one MNIST training subset: standard; l_2 PGD-AT (eps 1.5, the robust
teacher); input-gradient regularisation (double backprop); Jacobian regularisation; IR with
SmoothGrad targets of the l_2-AT teacher; the three comparisons that carry the paper: IR
with plain-gradient targets of the same teacher, IR with lambda_cs = 0 (no cosine term:
CE + lambda_gm ||G||_F) and IR with SmoothGrad targets of the standard model.
Evaluation: PGD-40 with random start at the paper's l_2 eps {1.5, 2.5, 3.5} (steps 0.5,
1.2, 1.75) and l_inf eps {0.1, 0.2, 0.25, 0.3} (step 2.5 eps / 40); the l_inf rows are the
cross-norm test. The AutoAttack-style ensemble (APGD-CE, APGD-T, Square) runs at l_2 eps
{1.5, 2.5} and the cross-norm l_inf eps {0.1, 0.2} on the first test images, each
joined by the PGD attack of its threat model (per-example worst case). The authors' MNIST
recipe (SimpleCNN, SGD, 100 epochs, batch 50) is a GPU job; this default is CPU-sized
(small CNN, 5k examples, a few epochs of Adam).

    python launch/main.py --config configs/interpretability.py --workdir DIR --mode analyze

Arguments: ``smoke`` (seconds), ``permuted`` (adds IR with 10% permuted targets),
``findings`` (the per-seed size of ``launch/reproduce.py noack``, see ``FINDINGS_SIZE``; the
three seeds, run as three processes at once on a shared 2-core machine at load 6-20, took
23 minutes of wall time, about 1,390 s per seed).
"""

from __future__ import annotations

from configs import base

ml_collections = base.ml_collections

L2_EPS_STEPS = ((1.5, 0.5), (2.5, 1.2), (3.5, 1.75))  # Noack et al., ir_utils/utils.py
LINF_EPS = (0.1, 0.2, 0.25, 0.3)


def _name(norm: str, eps: float) -> str:
    return f"{norm}_{eps:g}".replace(".", "p")


def paper_attacks(num_steps: int = 40) -> ml_collections.ConfigDict:
    """The paper's MNIST evaluation attacks (PGD with random start)."""
    attacks = {}
    for eps, step in L2_EPS_STEPS:
        # The paper's steps are for 40 iterations; shorter runs use 2.5 eps / steps.
        step = step if num_steps == 40 else 2.5 * eps / num_steps
        attacks[_name("l2", eps)] = base.pgd_attack(
            norm="l2", eps=eps, step_size=step, num_steps=num_steps
        )
    for eps in LINF_EPS:
        attacks[_name("linf", eps)] = base.pgd_attack(
            norm="linf", eps=eps, step_size=2.5 * eps / num_steps, num_steps=num_steps
        )
    return ml_collections.ConfigDict(attacks)


ARGS = ("smoke", "permuted", "findings")

# What the `findings` argument shrinks (recorded in results/noack/results.json).
FINDINGS_SIZE = dict(
    num_epochs=4.0,
    pgd_eval_examples=150,
    pgd_attacks=("l2_1p5", "l2_2p5", "l2_3p5", "linf_0p1", "linf_0p2", "linf_0p3"),
    # PGD-40 at the ensembles' budgets runs once, inside the ensemble evaluation.
    pgd_with_ensemble_only=True,
    ensemble_examples=150,
    ensemble_num_steps=20,
    ensemble_num_targets=2,
    ensemble_num_queries=100,
    smoothgrad_samples=16,
    sanity_checks=False,
)


def ensemble_attack(norm: str, eps, *, num_steps: int = 50, num_queries: int = 300):
    """APGD-CE, APGD-T (3 targets) and Square, shortened for a CPU."""
    return ml_collections.ConfigDict(
        dict(
            name="ensemble",
            norm=norm,
            eps=eps,
            attacks=["apgd_ce", "apgd_t", "square"],
            num_steps=num_steps,
            num_targets=3,
            num_queries=num_queries,
        )
    )


def get_config(arg: str | None = None):
    args = set((arg or "").split(","))
    c = base.get_base_config()
    c.data.num_train = 5_000
    c.data.num_test = 1_000
    c.model.name = "small_cnn"
    c.train.batch_size = 100
    c.train.num_epochs = 6.0
    c.train.optimizer.name = "adam"
    c.train.optimizer.learning_rate = 1e-3
    c.train.log_every_steps = 25
    c.train.eval_every_steps = 50
    c.train.val_examples = 200
    c.eps.l2 = 1.5  # the l_2 threat model of the teacher, validation and the ensemble
    c.train.val_attack = base.pgd_attack(
        norm="l2", eps=base.eps_ref(c, "l2"), step_size=0.75, num_steps=5
    )
    c.checkpoint.every_steps = 1_000
    c.eval.batch_size = 500
    c.eval.num_examples = 500
    c.eval.attacks = paper_attacks(40)
    c.eval.sanity_checks = True
    c.eval.sanity_num_examples = 100
    c.eval.sanity_square_queries = 100

    smoothgrad = dict(
        method="smoothgrad",
        # Noack et al. average 50 noisy copies plus the clean one (sigma 0.15); 16 keeps the
        # teacher maps affordable on a CPU.
        num_samples=16,
        sigma=0.15,
        include_clean=True,
        chunk_size=10,
        batch_size=500,
        threshold_std=1.0,  # authors' dataset code: keep values outside mean +- 1 std
    )
    ir = dict(name="interpretation", lambda_cs=3.0, lambda_gm=0.15)  # MNIST script
    models = dict(
        standard=dict(name="standard"),
        pgd_at_l2=dict(
            name="pgd_at",
            # The paper's teacher uses PGD-40; 7 steps of 2.5 eps / 7 on a CPU.
            attack=base.pgd_attack(
                norm="l2", eps=base.eps_ref(c, "l2"), step_size=0.55, num_steps=7
            ),
        ),
        input_gradient=dict(name="input_gradient", weight=1.0),
        jacobian=dict(name="jacobian", weight=0.05, num_projections=1),
        ir_robust_teacher=dict(ir, teacher="pgd_at_l2", targets=dict(smoothgrad)),
        # The comparisons: plain-gradient targets of the same teacher (the authors' "simp"
        # maps, same thresholding), no direction term (lambda_cs = 0 leaves CE plus the
        # logit-gradient norm; the targets are loaded but weigh nothing), and SmoothGrad
        # maps of the standard model.
        ir_gradient_targets=dict(
            ir, teacher="pgd_at_l2", targets=dict(smoothgrad, method="gradient")
        ),
        ir_no_cosine=dict(ir, lambda_cs=0.0, teacher="pgd_at_l2", targets=dict(smoothgrad)),
        ir_standard_teacher=dict(ir, teacher="standard", targets=dict(smoothgrad)),
    )
    if "permuted" in args:
        models["ir_permuted"] = dict(
            ir, teacher="pgd_at_l2", targets=dict(smoothgrad, permute_fraction=0.1)
        )
    c.analysis = ml_collections.ConfigDict(
        dict(
            name="interpretability",
            models=models,
            order=list(models),  # table and figure order (ConfigDict sorts its keys)
            roles=dict(
                ir_robust="ir_robust_teacher",
                baselines=["input_gradient", "jacobian"],
                standard="standard",
                teacher="pgd_at_l2",
                gradient_targets="ir_gradient_targets",
                no_cosine="ir_no_cosine",
                standard_teacher="ir_standard_teacher",
            ),
            # AutoAttack-style ensembles on the first `ensemble_examples` test images,
            # shortened for a CPU (APGD-CE, APGD-T with 3 targets, Square 300 queries): the
            # teacher's l_2 eps, a heavier l_2 eps, and the cross-norm l_inf eps.
            ensemble=dict(
                ensemble_l2_1p5=ensemble_attack("l2", base.eps_ref(c, "l2")),
                ensemble_l2_2p5=ensemble_attack("l2", 2.5),
                ensemble_linf_0p1=ensemble_attack("linf", 0.1),
                ensemble_linf_0p2=ensemble_attack("linf", 0.2),
            ),
            ensemble_examples=200,
            # PGD attacks evaluated with the ensembles (per-example worst case per threat
            # model).
            ensemble_with=["l2_1p5", "l2_2p5", "linf_0p1", "linf_0p2"],
            pgd_with_ensemble_only=False,
            batch_size=500,
            num_metric_examples=500,
            hook_examples=200,
            fg_threshold=0.5,
            num_figure_examples=8,
            figure_smoothgrad_samples=50,
            figure_ig_steps=64,
        )
    )
    if "smoke" in args:
        base.shrink_for_smoke(c)
        c.train.num_epochs = 1.0
        c.train.eval_every_steps = 4
        c.eval.num_examples = 100
        c.eval.sanity_checks = False
        c.eval.attacks = paper_attacks(5)
        m = c.analysis.models
        m.pgd_at_l2.attack.num_steps = 3
        m.pgd_at_l2.attack.step_size = 1.25
        for name in ("ir_robust_teacher", "ir_no_cosine", "ir_standard_teacher"):
            m[name].targets.num_samples = 4
        for name in ("ir_robust_teacher", "ir_gradient_targets", "ir_no_cosine",
                     "ir_standard_teacher"):  # fmt: skip
            m[name].targets.batch_size = 128
        c.analysis.ensemble = ml_collections.ConfigDict({})
        c.analysis.ensemble_with = []
        c.analysis.num_metric_examples = 100
        c.analysis.hook_examples = 50
        c.analysis.num_figure_examples = 4
        c.analysis.figure_smoothgrad_samples = 4
        c.analysis.figure_ig_steps = 8
    if "findings" in args:
        _findings_size(c)
    return c


def _findings_size(c: ml_collections.ConfigDict) -> None:
    """`FINDINGS_SIZE` applied in place (after ``smoke``, which it keeps small)."""
    size = FINDINGS_SIZE
    smoke = c.data.num_train < 1_000
    if not smoke:
        c.train.num_epochs = size["num_epochs"]
        c.eval.num_examples = size["pgd_eval_examples"]
    keep = [k for k in size["pgd_attacks"] if k in c.eval.attacks]
    c.eval.attacks = ml_collections.ConfigDict({k: c.eval.attacks[k].to_dict() for k in keep})
    c.eval.sanity_checks = size["sanity_checks"]
    c.analysis.pgd_with_ensemble_only = size["pgd_with_ensemble_only"]
    for m in c.analysis.models.values():
        if "targets" in m and m.targets.method == "smoothgrad" and not smoke:
            m.targets.num_samples = size["smoothgrad_samples"]
    if smoke:
        # Two small ensembles, one per norm, so the smoke run exercises the cross-norm rows.
        c.analysis.ensemble = ml_collections.ConfigDict(
            dict(
                ensemble_l2_1p5=ensemble_attack("l2", base.eps_ref(c, "l2"), num_steps=5,
                                                num_queries=20),
                ensemble_linf_0p1=ensemble_attack("linf", 0.1, num_steps=5, num_queries=20),
            )
        )  # fmt: skip
        c.analysis.ensemble_with = ["l2_1p5", "linf_0p1"]
        c.analysis.ensemble_examples = 50
        return
    for e in c.analysis.ensemble.values():
        e.num_steps = size["ensemble_num_steps"]
        e.num_targets = size["ensemble_num_targets"]
        e.num_queries = size["ensemble_num_queries"]
    c.analysis.ensemble_examples = size["ensemble_examples"]
