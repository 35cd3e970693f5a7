"""AutoAttack: its ``standard``, ``plus`` and ``rand`` versions, and custom ensembles.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Sec. 5, and the reference code's ``_set_version``
(``autoattack.py``): the attacks run in sequence, each only on the points still robust,
and robust accuracy is the per-example worst case. The config key ``version`` picks
the components and their restarts / targets as the reference does (``num_steps``,
``num_queries`` and ``p_init`` stay configurable; their defaults are the reference's):

* ``standard`` (l_inf, l_2): APGD-CE (1 restart), APGD-T (9 targets, 1 restart),
  FAB-T (9 targets, 1 restart), Square (5000 queries, p_init 0.8). l_1: APGD-CE with 5
  restarts and APGD-T with 5 targets, both with the 3 eps / 2 eps / eps schedule
  (``large_eps``), then FAB-T; Square has no l_1 version here, so it is left out.
* ``plus``: APGD-CE and APGD-DLR (5 restarts each), untargeted FAB (5 restarts),
  Square (5000 queries), APGD-T (9 targets, 1 restart), FAB-T (9 targets, 1 restart);
  the reference meant it for l_inf and l_2 (without Square for l_1 here).
* ``rand`` (randomised defences): APGD-CE and APGD-DLR, 1 restart each, with EOT over
  20 draws of the model (a `advjax.models.Model` with ``takes_key=True``).

Without ``version`` (the default ``''``) the ensemble is the ``attacks`` list
(default APGD-CE, APGD-T, Square) with one shared ``num_steps`` / ``num_restarts`` /
``num_targets``. It may also hold ``apgd_boundary`` (`advjax.attacks.boundary`: a
margin probe, then many diverse APGD restarts on the points closest to the boundary),
set by ``boundary_restarts``, ``boundary_steps`` and ``boundary_margin``; the default
run (``configs/mnist_fast.py``) puts it between APGD-T and Square.

`build_ensemble` returns an `Attack` of kind ``ENSEMBLE`` whose run, traced as one
program, runs every component on the whole batch and keeps, per example, the first
misclassified point (static shapes); its ``components`` are the component `Attack`
values, so `advjax.evaluation.evaluate` runs them itself on the still-robust points
only and reports each one's robust accuracy (and sanity-checks the black-box
component against the white-box ones before it, as AutoAttack does).
"""

from __future__ import annotations

import jax.numpy as jnp

from advjax.attacks import (
    ENSEMBLE,
    Attack,
    check_choice,
    check_number,
    config_values,
    example_keys,
    fold_in_each,
    freeze,
    name_id,
)
from advjax.attacks.apgd import build_apgd_ce, build_apgd_dlr, build_apgd_t
from advjax.attacks.boundary import build_apgd_boundary
from advjax.attacks.fab import build_fab, build_fab_t
from advjax.attacks.square import build_square

COMPONENTS = ("apgd_ce", "apgd_dlr", "apgd_t", "apgd_boundary", "fab_t", "fab", "square")
VERSIONS = ("", "standard", "plus", "rand")
_BUILDERS = {
    "apgd_ce": build_apgd_ce,
    "apgd_dlr": build_apgd_dlr,
    "apgd_t": build_apgd_t,
    "apgd_boundary": build_apgd_boundary,
    "fab_t": build_fab_t,
    "fab": build_fab,
    "square": build_square,
}

_DEFAULTS = {
    "version": "",
    "norm": "linf",
    "attacks": ("apgd_ce", "apgd_t", "square"),
    "num_steps": 100,
    "num_restarts": 1,
    "num_targets": 9,
    "num_queries": 5000,
    "p_init": 0.8,
    "boundary_restarts": 18,
    "boundary_steps": 50,
    "boundary_margin": 2.0,
}


def version_components(version: str, norm: str) -> tuple[tuple[str, dict], ...]:
    """AutoAttack's components of ``version`` for ``norm``: ``(name, settings)`` pairs
    (restarts, targets, large-eps schedule, EOT draws), in the reference's order."""
    if version == "standard":
        if norm == "l1":
            return (
                ("apgd_ce", {"num_restarts": 5, "large_eps": True}),
                ("apgd_t", {"num_restarts": 1, "num_targets": 5, "large_eps": True}),
                ("fab_t", {"num_restarts": 1, "num_targets": 9}),
            )
        return (
            ("apgd_ce", {"num_restarts": 1}),
            ("apgd_t", {"num_restarts": 1, "num_targets": 9}),
            ("fab_t", {"num_restarts": 1, "num_targets": 9}),
            ("square", {}),
        )
    if version == "plus":
        return (
            ("apgd_ce", {"num_restarts": 5}),
            ("apgd_dlr", {"num_restarts": 5}),
            ("fab", {"num_restarts": 5}),
            ("square", {}),
            ("apgd_t", {"num_restarts": 1, "num_targets": 9}),
            ("fab_t", {"num_restarts": 1, "num_targets": 9}),
        )
    if version == "rand":
        return (
            ("apgd_ce", {"num_restarts": 1, "eot_samples": 20}),
            ("apgd_dlr", {"num_restarts": 1, "eot_samples": 20}),
        )
    raise ValueError(f"attack 'ensemble': config key 'version' got {version!r}")


def _component(name: str, v: dict, settings: dict | None = None) -> Attack:
    common = {"name": name, "norm": v["norm"], "eps": v["eps"]}
    if name == "square":
        return build_square(dict(common, num_queries=v["num_queries"], p_init=v["p_init"]))
    if name == "apgd_boundary":
        return build_apgd_boundary(
            dict(
                common,
                num_steps=v["num_steps"],
                num_restarts=v["boundary_restarts"],
                restart_steps=v["boundary_steps"],
                margin_below=v["boundary_margin"],
            )
        )
    if settings is None:  # A custom ensemble: the shared settings.
        settings = {"num_restarts": v["num_restarts"]}
        if name in ("apgd_t", "fab_t"):
            settings["num_targets"] = v["num_targets"]
    return _BUILDERS[name](dict(common, num_steps=v["num_steps"], **settings))


def _components(v: dict) -> tuple[Attack, ...]:
    if v["version"]:
        chosen = version_components(v["version"], v["norm"])
        # Square has no l_1 version here (the reference's plus version warns for l_1).
        chosen = [(n, s) for n, s in chosen if not (n == "square" and v["norm"] == "l1")]
        return tuple(_component(n, v, s) for n, s in chosen)
    return tuple(_component(n, v) for n in v["attacks"])


def run_ensemble(hp: dict, logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None):
    """`Attack.run` of 'ensemble': every component on the batch, first success kept."""
    keys = example_keys(key, x.shape[0])
    x_best = x
    fooled = jnp.zeros((x.shape[0],), bool)
    for comp in _components(hp):
        x_c = comp.run(
            dict(comp.hparams),
            logits_fn,
            x,
            y,
            fold_in_each(keys, name_id(comp.name)),
            bounds=bounds,
            eps=eps,
        )
        succ = jnp.argmax(logits_fn(x_c), axis=1) != y
        take = succ & ~fooled
        x_best = jnp.where(take.reshape((-1,) + (1,) * (x.ndim - 1)), x_c, x_best)
        fooled = fooled | succ
    return x_best


def build_ensemble(cfg) -> Attack:
    """Registry builder for 'ensemble'.

    Config keys: ``eps`` (required), ``norm`` ('linf', 'l2'; 'l1' with a version),
    ``version`` ('' for the ``attacks`` list, or 'standard', 'plus', 'rand': AutoAttack's
    versions, module docstring), ``attacks`` (ordered component names from 'apgd_ce',
    'apgd_dlr', 'apgd_t', 'apgd_boundary', 'fab_t', 'fab', 'square'; ignored with a
    version), ``num_steps`` (APGD and FAB steps, and APGD-B's probe, 100),
    ``num_restarts`` and ``num_targets`` (the custom ensemble's, 1 and 9),
    ``num_queries`` (Square, 5000), ``p_init`` (0.8), and APGD-B's ``boundary_restarts``
    (18), ``boundary_steps`` (50 per restart) and ``boundary_margin`` (2.0).

    Returns:
      An `Attack` of kind ``ENSEMBLE`` with the ordered component attacks.
    """
    v = config_values(cfg, attack="ensemble", defaults=_DEFAULTS, required=("eps",))
    check_choice(v["version"], VERSIONS, attack="ensemble", key="version")
    norms = ("linf", "l2", "l1") if v["version"] else ("linf", "l2")
    check_choice(v["norm"], norms, attack="ensemble", key="norm")
    check_number(v["eps"], attack="ensemble", key="eps", minimum=0.0)
    names = tuple(v["attacks"])
    if not v["version"]:
        if not names:
            raise ValueError(
                "attack 'ensemble': config key 'attacks' must name at least one attack"
            )
        for n in names:
            check_choice(n, COMPONENTS, attack="ensemble", key="attacks")
        if len(set(names)) != len(names):
            raise ValueError(f"attack 'ensemble': config key 'attacks' repeats a name: {names}")
    v["eps"] = float(v["eps"])
    v["attacks"] = names
    components = _components(v)
    if v["version"]:
        v["attacks"] = tuple(c.name for c in components)
    budget = {c.name: c.budget for c in components}
    return Attack("ensemble", run_ensemble, freeze(v), ENSEMBLE, freeze(budget), components)
