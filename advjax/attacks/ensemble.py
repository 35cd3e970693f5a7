"""AutoAttack-style ensemble: APGD-CE, then APGD-T, then Square, worst case per example.

Croce & Hein 2020, Sec. 5 ("standard" version, with Square in place of FAB-T as the
issue asks): the attacks run in sequence and each one only needs to attack the points
that are still robust; the reported robust accuracy is the per-example worst case.

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
from advjax.attacks.square import build_square

COMPONENTS = ("apgd_ce", "apgd_dlr", "apgd_t", "square")

_DEFAULTS = {
    "norm": "linf",
    "attacks": ("apgd_ce", "apgd_t", "square"),
    "num_steps": 100,
    "num_restarts": 1,
    "num_targets": 9,
    "num_queries": 5000,
    "p_init": 0.8,
}


def _component(name: str, v: dict) -> Attack:
    common = {"name": name, "norm": v["norm"], "eps": v["eps"]}
    if name == "square":
        return build_square(dict(common, num_queries=v["num_queries"], p_init=v["p_init"]))
    apgd_cfg = dict(common, num_steps=v["num_steps"], num_restarts=v["num_restarts"])
    if name == "apgd_t":
        return build_apgd_t(dict(apgd_cfg, num_targets=v["num_targets"]))
    return (build_apgd_ce if name == "apgd_ce" else build_apgd_dlr)(apgd_cfg)


def run_ensemble(hp: dict, logits_fn, x, y, key, *, bounds=(0.0, 1.0), eps=None):
    """`Attack.run` of 'ensemble': every component on the batch, first success kept."""
    keys = example_keys(key, x.shape[0])
    x_best = x
    fooled = jnp.zeros((x.shape[0],), bool)
    for n in hp["attacks"]:
        comp = _component(n, hp)
        x_c = comp.run(
            dict(comp.hparams),
            logits_fn,
            x,
            y,
            fold_in_each(keys, name_id(n)),
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

    Config keys: ``eps`` (required), ``norm`` ('linf' or 'l2'), ``attacks`` (ordered
    component names from 'apgd_ce', 'apgd_dlr', 'apgd_t', 'square'), ``num_steps`` and
    ``num_restarts`` (APGD), ``num_targets`` (APGD-T), ``num_queries`` and ``p_init``
    (Square).

    Returns:
      An `Attack` of kind ``ENSEMBLE`` with the ordered component attacks.
    """
    v = config_values(cfg, attack="ensemble", defaults=_DEFAULTS, required=("eps",))
    check_choice(v["norm"], ("linf", "l2"), attack="ensemble", key="norm")
    check_number(v["eps"], attack="ensemble", key="eps", minimum=0.0)
    names = tuple(v["attacks"])
    if not names:
        raise ValueError("attack 'ensemble': config key 'attacks' must name at least one attack")
    for n in names:
        check_choice(n, COMPONENTS, attack="ensemble", key="attacks")
    if len(set(names)) != len(names):
        raise ValueError(f"attack 'ensemble': config key 'attacks' repeats a name: {names}")
    v["eps"] = float(v["eps"])
    v["attacks"] = names
    components = tuple(_component(n, v) for n in names)
    budget = {c.name: c.budget for c in components}
    return Attack("ensemble", run_ensemble, freeze(v), ENSEMBLE, freeze(budget), components)
