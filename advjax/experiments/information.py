"""Robust and non-robust components of the between-class KL over training (Shi et al.).

``python launch/main.py --config configs/information.py --workdir DIR --mode analyze``
trains one model per regime of ``config.analysis.regimes`` (standard, PGD-AT, TRADES, and
optionally the Fisher/KL objective) through `advjax.runs.train_or_load`, under
``DIR/models/<regime>``. At every periodic evaluation an ``eval_hook`` measures on a fixed
set of test examples:

* clean accuracy and robust accuracy (PGD on the cross-entropy, ``analysis.attack``);
* the metric M and advjax's two proxy splits of it into robust and non-robust parts (the
  paper's own formula is not available): first the merging-adversary reading
  M = R_pair + N_pair on ``analysis.num_pairs`` between-class pairs, with standard errors
  over the pairs (`advjax.analysis.information.pairwise_robust_decomposition`), then the
  worst-case-input reading M = R_eps + N_eps and the local worst-case KL
  (`robust_decomposition`), both in the threat model ``analysis.threat``;
* the input Fisher information: mean ||F(x)||_F, lambda_max(F(x)) and trace F(x);
* I(Y; Z) between the label and a layer's representation on clean inputs, on the PGD
  inputs (which depend on y) and on the label-free KL-maximising inputs (InfoNCE with a
  small critic), and the plug-in I(Y; Y_hat) on clean and PGD inputs (skipped with
  ``analysis.mutual_information=False``).

The initial variables (epoch 0, shared by all regimes) are measured once. The values go
to ``DIR/models/<regime>/metrics.jsonl``; ``run`` collects them into
``DIR/information.json`` with the final-model extras (the exact identity
E KL = I(X; Y_hat) + dispersion, power iteration against the Gram eigenvalue, the l_2
worst-case KL against eps^2 lambda_max / 2), the quantities behind the paper's qualitative
claims under advjax's two proxy splits (`component_readings`; no verdicts) and
draws ``DIR/figures/*.png``. The math lives in `advjax.analysis.information` and
`advjax.analysis.mutual_information`.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advjax import data, models, plots, registry
from advjax.analysis import information as info
from advjax.analysis import mutual_information as mi
from advjax.attacks import ATTACKS
from advjax.compile import jit
from advjax.experiments import kit

ADVERSARIAL = ("pgd_at", "trades", "fisher_kl", "mart", "fgsm_rs", "free_at")
# The pairwise (merging-adversary) reading first: advjax's primary proxy split.
PAIR_KEYS = ("M_pair", "R_pair", "N_pair", "R_pair_sem", "N_pair_sem")
MI_KEYS = ("mi_yz_clean", "mi_yz_adv", "mi_yz_worst", "mi_y_yhat_clean", "mi_y_yhat_adv")
CURVE_KEYS = (
    "clean_accuracy",
    "robust_accuracy",
    "M",
    *PAIR_KEYS,
    "R",
    "N",
    "local_worst_kl",
    "fisher_frobenius",
    "fisher_lambda_max",
    "fisher_trace",
    *MI_KEYS,
)
PREFIX = "info_"


def curve_keys(analysis: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The quantities measured at every evaluation (I(Y; Z) only with
    ``analysis.mutual_information``)."""
    if analysis.get("mutual_information", True):
        return CURVE_KEYS
    return tuple(k for k in CURVE_KEYS if k not in MI_KEYS)


# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------


_check = kit.check


def validate_analysis(a: ml_collections.ConfigDict) -> None:
    """Checks ``config.analysis`` before any compute."""
    _check(len(a.regimes) >= 1, "regimes", list(a.regimes.keys()), "need at least one regime")
    for name in a.regimes.keys():
        from advjax.objectives import OBJECTIVES

        OBJECTIVES.check(a.regimes[name].name, key=f"analysis.regimes.{name}.name")
    for key in (
        "num_examples",
        "fisher_examples",
        "num_pairs",
        "chunk_size",
        "mi_steps",
        "mi_batch_size",
    ):
        _check(int(a[key]) >= 1, key, a[key], "must be >= 1")
    _check(
        a.fisher_examples <= a.num_examples,
        "fisher_examples",
        a.fisher_examples,
        "must be <= analysis.num_examples",
    )
    for section in ("threat", "attack"):
        registry.one_of(a[section].norm, ("linf", "l2", "l1"), key=f"analysis.{section}.norm")
        _check(
            a[section].eps >= 0 and a[section].num_steps >= 1,
            f"{section}",
            a[section].to_dict(),
            "need eps >= 0 and num_steps >= 1",
        )
    _check(a.l2_eps > 0, "l2_eps", a.l2_eps, "must be > 0")
    registry.one_of(a.mi_bound, mi.BOUNDS, key="analysis.mi_bound")


def validate(config: ml_collections.ConfigDict) -> None:
    """The analysis settings and every regime's objective, before any compute (called by
    `advjax.configlib.validate`)."""
    from advjax.objectives import build_objective

    validate_analysis(config.analysis)
    for name in config.analysis.regimes.keys():
        try:
            build_objective(config.analysis.regimes[name])
        except ValueError as err:
            raise ValueError(f"analysis.regimes.{name}: {err}") from None


def regime_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The training config of one regime: ``config`` with ``train.objective`` replaced."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.train.objective = ml_collections.ConfigDict(config.analysis.regimes[name].to_dict())
    return c


# ---------------------------------------------------------------------------------------
# The per-evaluation probe (compiled once, reused for every regime and epoch)
# ---------------------------------------------------------------------------------------


# Compiled probe functions by (module, analysis settings, bounds): data, keys and variables
# are arguments, so the probes of several seeds in one process share one compilation.
_COMPILED: dict = {}


class InformationProbe:
    """Computes the tracked quantities of a model on a fixed evaluation set.

    Every computation is a jitted function of the model variables, so evaluations at
    later epochs, of other regimes and of other seeds with the same architecture and
    analysis settings reuse the compilation.

    Args:
      analysis: ``config.analysis``.
      x: [N, ...] evaluation inputs.
      y: [N] labels.
      num_classes: number of classes.
      bounds: input box.
      key: PRNG key; the same randomness is used at every evaluation (paired comparisons).
    """

    def __init__(self, analysis, x, y, *, num_classes: int, bounds, key: jax.Array):
        self.a = analysis
        self.x = jnp.asarray(x)
        self.y = jnp.asarray(y)
        self.num_classes = num_classes
        self.bounds = tuple(float(b) for b in bounds)
        self.key = key

    # -- compiled pieces -------------------------------------------------------------------

    def _fns(self, module):
        cache_key = (module, kit.config_hash(self.a.to_dict()), self.bounds)
        if cache_key in _COMPILED:
            return _COMPILED[cache_key]
        a, bounds = self.a, self.bounds
        chunk = int(a.chunk_size)
        attack_cfg = ml_collections.ConfigDict(dict(a.attack.to_dict(), name="pgd", loss="ce"))
        attack = ATTACKS.get("pgd")(attack_cfg)
        threat = a.threat

        def logits_with(variables):
            return lambda v: module.apply(variables, v, train=False)

        @jit
        def decomposition(variables, x, y, key):
            out = info.robust_decomposition(
                logits_with(variables),
                x,
                y,
                key,
                norm=threat.norm,
                eps=float(threat.eps),
                step_size=float(threat.step_size),
                num_steps=int(threat.num_steps),
                bounds=bounds,
                chunk_size=chunk,
            )
            values = {k: out[k] for k in ("M", "R", "N", "local_worst_kl")}
            pairs = info.pairwise_robust_decomposition(
                logits_with(variables),
                x,
                y,
                jax.random.fold_in(key, 1),
                num_pairs=int(a.num_pairs),
                norm=threat.norm,
                eps=float(threat.eps),
                step_size=float(threat.step_size),
                num_steps=int(threat.num_steps),
                bounds=bounds,
                chunk_size=chunk,
            )
            return values | pairs, out["x_worst"]

        @jit
        def adversarial(variables, x, y, key):
            fn = logits_with(variables)

            def rows(xr, yr, kr):
                return attack(fn, xr, yr, kr[0], bounds=bounds)

            keys = jax.random.split(key, x.shape[0])
            return mi.chunked_map(rows, x, y, keys, chunk_size=chunk)

        @jit
        def logits(variables, x):
            return info.batched_logits(logits_with(variables), x, chunk_size=chunk)

        @jit
        def fisher(variables, x):
            return info.fisher_statistics(logits_with(variables), x, chunk_size=min(chunk, 64))

        layer = a.layer
        if layer == "auto":
            names = info.layer_names(module, self._init_variables(module), self.x)
            layer = names[-2] if len(names) >= 2 else names[-1]

        @jit
        def representation(variables, x):
            z = info.layer_representation(module, variables, x, layer=layer, chunk_size=chunk)
            return (z - jnp.mean(z, 0)) / (jnp.std(z, 0) + 1e-6)

        fns = dict(
            decomposition=decomposition,
            adversarial=adversarial,
            logits=logits,
            fisher=fisher,
            representation=representation,
            layer=layer,
        )
        _COMPILED[cache_key] = fns
        return fns

    def _init_variables(self, module):
        return module.init(jax.random.PRNGKey(0), self.x[:1], train=False)

    def representation(self, module, variables, x) -> jax.Array:
        """The analysed layer's output, standardised per unit (critic inputs of unit scale)."""
        return self._fns(module)["representation"](variables, x)

    def mi_label_representation(self, z: jax.Array, key: jax.Array) -> float:
        return float(
            mi.variational_mi(
                key,
                mi.one_hot_labels(self.y, self.num_classes),
                z,
                bound=self.a.mi_bound,
                num_steps=int(self.a.mi_steps),
                batch_size=int(self.a.mi_batch_size),
                depth=int(self.a.mi_depth),
            )
        )

    # -- the hook --------------------------------------------------------------------------

    def measure(self, module, variables) -> dict[str, float]:
        """All per-evaluation quantities of one model (keys of `CURVE_KEYS`)."""
        fns = self._fns(module)
        k_dec, k_adv, k_mi = jax.random.split(self.key, 3)
        x, y = self.x, self.y
        scalars, x_worst = fns["decomposition"](variables, x, y, k_dec)
        out = {k: float(v) for k, v in scalars.items()}
        x_adv = fns["adversarial"](variables, x, y, k_adv)
        clean_logits = fns["logits"](variables, x)
        adv_logits = fns["logits"](variables, x_adv)
        pred, pred_adv = jnp.argmax(clean_logits, -1), jnp.argmax(adv_logits, -1)
        out["clean_accuracy"] = float(jnp.mean(pred == y))
        out["robust_accuracy"] = float(jnp.mean(pred_adv == y))
        stats = fns["fisher"](variables, x[: int(self.a.fisher_examples)])
        out["fisher_frobenius"] = float(jnp.mean(stats["frobenius"]))
        out["fisher_lambda_max"] = float(jnp.mean(stats["lambda_max"]))
        out["fisher_trace"] = float(jnp.mean(stats["trace"]))
        if not self.a.get("mutual_information", True):
            return out
        c = self.num_classes
        out["mi_y_yhat_clean"] = float(mi.plugin_mi(y, pred, num_a=c, num_b=c))
        out["mi_y_yhat_adv"] = float(mi.plugin_mi(y, pred_adv, num_a=c, num_b=c))
        # Same critic seed and split for clean and adversarial: a paired comparison.
        out["mi_yz_clean"] = self.mi_label_representation(
            self.representation(module, variables, x), k_mi
        )
        out["mi_yz_adv"] = self.mi_label_representation(
            self.representation(module, variables, x_adv), k_mi
        )
        # PGD on the cross-entropy uses y, so x_adv can carry label information by itself;
        # the KL-maximising inputs of the decomposition are label-free.
        out["mi_yz_worst"] = self.mi_label_representation(
            self.representation(module, variables, x_worst), k_mi
        )
        return out

    def hook(self, model, step: int, epoch: float) -> dict[str, float]:
        """`advjax.runs.train_or_load` eval_hook: prefixed values for metrics.jsonl."""
        del step, epoch
        start = time.time()
        values = self.measure(model.module, model.variables)
        values["seconds"] = time.time() - start
        return {PREFIX + k: v for k, v in values.items()}

    def final_checks(self, module, variables) -> dict:
        """Identity and approximation checks on the final model (one compiled call)."""
        a = self.a
        eps2 = float(a.l2_eps)
        key_power, key_l2 = jax.random.fold_in(self.key, 11), jax.random.fold_in(self.key, 12)
        cache_key = ("checks", module, kit.config_hash(a.to_dict()), self.bounds)
        if cache_key not in _COMPILED:
            _COMPILED[cache_key] = self._compile_checks(module)
        identity, approx = _COMPILED[cache_key](variables, self.x, key_power, key_l2)
        identity = {k: float(v) for k, v in identity.items()}
        identity["residual"] = identity["mean_pairwise_kl"] - (
            identity["mutual_information"] + identity["log_dispersion"]
        )
        return {"kl_identity": identity, **{k: float(v) for k, v in approx.items()}, "l2_eps": eps2}

    def _compile_checks(self, module):
        a = self.a
        eps2 = float(a.l2_eps)
        chunk = int(a.chunk_size)
        num_check = min(16, int(a.fisher_examples))

        @jit
        def checks(variables, x, key_power, key_l2):
            fn = lambda v: module.apply(variables, v, train=False)  # noqa: E731
            identity = info.kl_identity(
                info.batched_logits(fn, x, chunk_size=chunk), chunk_size=chunk
            )
            xs = x[:num_check]
            lam_power, _ = info.fisher_top_eigenpair(
                fn, xs, key_power, num_iters=int(a.power_iters), chunk_size=num_check
            )
            lam_gram = info.fisher_statistics(fn, xs, chunk_size=num_check)["lambda_max"]
            _, kl2 = info.kl_worst_case(
                fn, xs, key_l2, norm="l2", eps=eps2, step_size=eps2 / 4, num_steps=20
            )
            return identity, {
                "power_iteration_vs_gram_max_rel_error": jnp.max(
                    jnp.abs(lam_power - lam_gram) / jnp.maximum(lam_gram, 1e-12)
                ),
                "l2_local_worst_kl": jnp.mean(kl2),
                "l2_fisher_approximation": jnp.mean(info.fisher_local_kl(lam_gram, eps=eps2)),
            }

        return checks


# ---------------------------------------------------------------------------------------
# Findings and figures
# ---------------------------------------------------------------------------------------


# advjax's two proxy splits of M (the paper's own formula is not available), the pairwise
# merging-adversary reading first: key -> (suffix of the curve keys, label).
READINGS = {
    "merging_adversary": ("_pair", "advjax proxy 1: R_pair = between-class KL left after an "
                          "adversary merges each pair's predictions inside B_eps"),
    "worst_case_inputs": ("", "advjax proxy 2: R_eps = between-class KL on each input's "
                          "KL-maximising neighbour in B_eps"),
}  # fmt: skip
Z95 = 1.959963984540054  # two-sided 95% normal quantile (intervals over sampled pairs)


def component_readings(curves: dict[str, dict[str, list[float]]]) -> dict:
    """The measured quantities behind the paper's qualitative claims, for one run.

    For each of advjax's proxy splits (`READINGS`; neither is the paper's formula, which is
    not available) and each regime: the change of M, R and N from the first to the last
    evaluation and the final robust / non-robust shares R / M and N / M; for the pairwise
    reading also 95% intervals of the final R_pair and N_pair over the sampled pairs. For
    the input Fisher information: the final / initial ratio of mean ||F||_F under standard
    training, the standard / regime ratio at the end, and across regimes the Spearman rank
    correlation of final ||F||_F with robust accuracy (three or more regimes). No verdicts:
    `advjax.findings.shi` compares these across seeds.
    """
    out: dict = {
        "note": "advjax's proxies for the robust / non-robust split; the paper's formula is "
        "not available, so these are not the paper's metric",
        "readings": {},
    }
    std = curves.get("standard")
    for reading, (sfx, label) in READINGS.items():
        regimes: dict = {}
        for name, cur in curves.items():
            if not cur.get("M" + sfx):
                continue
            m, r, n = cur["M" + sfx], cur["R" + sfx], cur["N" + sfx]
            row = {
                "delta_M": m[-1] - m[0],
                "delta_R": r[-1] - r[0],
                "delta_N": n[-1] - n[0],
                "final_M": m[-1],
                "final_R": r[-1],
                "final_N": n[-1],
                "final_R_share": r[-1] / max(m[-1], 1e-12),
                "final_N_share": n[-1] / max(m[-1], 1e-12),
            }
            for part in ("R", "N"):
                sem = cur.get(f"{part}{sfx}_sem")
                if sfx and sem:
                    centre = row[f"final_{part}"]
                    row[f"final_{part}_interval_over_pairs"] = [
                        centre - Z95 * sem[-1],
                        centre + Z95 * sem[-1],
                    ]
            regimes[name] = row
        out["readings"][reading] = {"label": label, "regimes": regimes}
    fisher: dict = {}
    if std and std.get("fisher_frobenius"):
        f = std["fisher_frobenius"]
        fisher["standard_final_over_initial"] = f[-1] / max(f[0], 1e-30)
        for name, cur in curves.items():
            if name != "standard" and cur.get("fisher_frobenius"):
                fisher[f"{name}_standard_over_this"] = f[-1] / max(
                    cur["fisher_frobenius"][-1], 1e-30
                )
    finals = [
        (c["fisher_frobenius"][-1], c["robust_accuracy"][-1])
        for c in curves.values()
        if c.get("fisher_frobenius")
    ]
    if len(finals) >= 3:
        fisher["spearman_fisher_vs_robust_accuracy"] = spearman(
            [f for f, _ in finals], [r for _, r in finals]
        )
    out["fisher"] = fisher
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when either input is
    constant (the correlation is undefined)."""
    from scipy import stats

    ra, rb = stats.rankdata(a), stats.rankdata(b)
    if np.std(ra) == 0 or np.std(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def draw_figures(curves: dict, workdir: str) -> list[str]:
    """One PNG per tracked quantity (all regimes against epoch) and a 3 x 3 summary panel."""
    fig_dir = os.path.join(workdir, "figures")
    paths = []
    specs = [
        ("M", "between-class KL M (nats)", False),
        ("R_pair", "advjax proxy R_pair, merging adversary (nats)", False),
        ("N_pair", "advjax proxy N_pair, merging adversary (nats)", False),
        ("R", "advjax proxy R_eps, worst-case inputs (nats)", False),
        ("N", "advjax proxy N_eps, worst-case inputs (nats)", False),
        ("fisher_frobenius", "mean ||F(x)||_F", True),
        ("fisher_lambda_max", "mean lambda_max(F(x))", True),
        ("clean_accuracy", "clean accuracy", False),
        ("robust_accuracy", "robust accuracy", False),
        ("local_worst_kl", "local worst-case KL (nats)", True),
    ]
    for key, label, logy in specs:
        series = {name: c[key] for name, c in curves.items() if c.get(key)}
        if not series:
            continue
        epochs = next(iter(curves.values()))["epoch"]
        if any(len(c["epoch"]) != len(epochs) for c in curves.values()):
            fig, ax = plots.plt.subplots(figsize=(5.5, 3.8))
            for name, c in curves.items():
                ax.plot(c["epoch"], c[key], marker="o", ms=3, label=name)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            if logy:
                ax.set_yscale("log")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            paths.append(plots.save(fig, os.path.join(fig_dir, f"{key}.png")))
        else:
            paths.append(
                plots.line_plot(
                    os.path.join(fig_dir, f"{key}.png"),
                    epochs,
                    series,
                    xlabel="epoch",
                    ylabel=label,
                    logy=logy,
                )
            )
    has_mi = all(c.get("mi_yz_clean") for c in curves.values())
    if has_mi:
        paths.append(_mi_figure(curves, fig_dir))
    # Summary: M and the two proxy splits per regime, plus Fisher and accuracy.
    fig, axes = plots.plt.subplots(3, 3, figsize=(14, 10.5))
    panels = [
        ("M", "M (nats)"),
        ("R_pair", "advjax proxy R_pair, merging adversary"),
        ("N_pair", "advjax proxy N_pair, merging adversary"),
        ("fisher_frobenius", "mean ||F(x)||_F"),
        ("R", "advjax proxy R_eps, worst-case inputs"),
        ("N", "advjax proxy N_eps, worst-case inputs"),
        ("clean_accuracy", "clean accuracy"),
        ("robust_accuracy", "robust accuracy"),
        ("mi_yz_worst", "I(Y; Z) on KL worst-case inputs")
        if has_mi
        else ("local_worst_kl", "local worst-case KL (nats)"),
    ]
    for ax, (key, label) in zip(axes.ravel(), panels, strict=True):
        for name, c in curves.items():
            ax.plot(c["epoch"], c[key], marker="o", ms=3, label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if key in ("fisher_frobenius", "local_worst_kl"):
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(plots.save(fig, os.path.join(fig_dir, "summary.png")))
    return [os.path.relpath(p, workdir) for p in paths]


def _mi_figure(curves: dict, fig_dir: str) -> str:
    """I(Y; Z): clean (solid), CE-PGD inputs (dashed), KL-maximising inputs (dotted)."""
    fig, ax = plots.plt.subplots(figsize=(5.5, 3.8))
    styles = (
        ("mi_yz_clean", "o", "-", "clean"),
        ("mi_yz_adv", "x", "--", "PGD"),
        ("mi_yz_worst", "s", ":", "KL worst case"),
    )
    for i, (name, c) in enumerate(curves.items()):
        for key, marker, ls, label in styles:
            ax.plot(
                c["epoch"],
                c[key],
                marker=marker,
                ms=3,
                ls=ls,
                color=f"C{i}",
                label=f"{name} {label}",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("I(Y; Z) lower bound (nats)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return plots.save(fig, os.path.join(fig_dir, "mi_label_representation.png"))


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def curves_from_metrics(
    records: list[dict], keys: tuple[str, ...] = CURVE_KEYS
) -> dict[str, list[float]]:
    """Per-evaluation series of ``keys`` from a run's metrics.jsonl (records holding the
    hook values)."""
    rows = [r for r in records if PREFIX + "M" in r]
    out = {"epoch": [float(r["epoch"]) for r in rows], "step": [int(r["step"]) for r in rows]}
    for key in keys:
        # Runs recorded before a quantity existed leave it NaN rather than failing.
        out[key] = [float(r.get(PREFIX + key, float("nan"))) for r in rows]
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains or restores every regime with the probe as eval_hook; writes JSON and PNGs.

    Returns:
      The report written to ``workdir/information.json``.
    """
    from advjax import runs

    a = config.analysis
    start = time.time()
    dataset = data.load_dataset(config.data)
    n = min(int(a.num_examples), len(dataset.test_y))
    key = jax.random.fold_in(jax.random.key(config.seed), 6)
    probe = InformationProbe(
        a,
        dataset.test_x[:n],
        dataset.test_y[:n],
        num_classes=dataset.info.num_classes,
        bounds=dataset.info.bounds,
        key=key,
    )
    # Epoch 0: the initial variables, drawn as the training loop draws them (the same seed
    # and architecture for every regime, so one measurement serves all).
    module = models.build_model(config.model, dataset.info)
    init_key = jax.random.split(jax.random.key(config.seed), 3)[0]
    initial = probe.measure(module, models.init_variables(module, dataset.info, init_key))
    keys = curve_keys(a)
    curves, finals, timings = {}, {}, {}
    for name in a.regimes.keys():
        t0 = time.time()
        cfg = regime_config(config, name)
        model_dir = os.path.join(workdir, "models", name)
        model = runs.train_or_load(cfg, model_dir, dataset=dataset, eval_hook=probe.hook)
        curves[name] = curves_from_metrics(runs.read_metrics(model_dir), keys)
        if not curves[name]["M"]:
            # A run restored from a folder trained without the hook: measure the final model.
            values = probe.measure(model.module, model.variables)
            curves[name] = {"epoch": [float(cfg.train.num_epochs)], "step": [model.step]} | {
                k: [values[k]] for k in keys
            }
        curves[name]["epoch"].insert(0, 0.0)
        curves[name]["step"].insert(0, 0)
        for k in keys:
            curves[name][k].insert(0, initial[k])
        finals[name] = {k: v[-1] for k, v in curves[name].items() if k not in ("epoch", "step")}
        finals[name]["checks"] = probe.final_checks(model.module, model.variables)
        timings[name] = time.time() - t0
    report = {
        "paper": "Shi et al., arXiv 1906.02494",
        "decomposition": {
            reading: label for reading, (_, label) in READINGS.items()
        },  # advjax's proxies, not the paper's formula (not available)
        "threat": a.threat.to_dict(),
        "attack": a.attack.to_dict(),
        "num_examples": n,
        "fisher_examples": int(a.fisher_examples),
        "layer": a.layer,
        "mi_bound": a.mi_bound,
        "regimes": {name: a.regimes[name].to_dict() for name in a.regimes.keys()},
        "curves": curves,
        "final": finals,
        "readings": component_readings(curves),
        "seconds": {"per_regime": timings, "total": time.time() - start},
        "seed": int(config.seed),
        "config_hash": kit.config_hash(config.to_dict()),
    }
    report["figures"] = draw_figures(curves, workdir)
    kit.write_report(os.path.join(workdir, "information.json"), report)
    return report
