"""Training objectives: pure losses that the one train step differentiates.

An objective is a `loss_fn(params, forward, batch, key, carry) -> (loss, aux)`:

* ``forward.train(params, x) -> (logits, new_model_state)`` runs the model in training
  mode (BatchNorm statistics update, dropout on); ``forward.eval(params, x) -> logits``
  runs it in evaluation mode and is what inner maximisations attack, so generating
  adversarial examples never changes BatchNorm statistics.
* ``batch`` holds ``x`` and ``y``, ``eps_scale`` (a scalar in [0, 1] that ramps attack
  budgets up early in training when ``train.eps_ramp_fraction`` > 0; multiply eps by
  it) and any per-example arrays the objective asked for through ``extra_train_arrays``.
* ``aux`` holds ``model_state`` (from the last ``forward.train`` call), ``metrics``
  (scalars, averaged over replays and logged) and, for objectives with ``uses_carry``,
  ``carry``: a persistent perturbation shaped like ``batch["x"]`` (Free AT).

Builders ``build_<name>(objective_config) -> Objective`` are registered by name in
`OBJECTIVES` and selected by ``config.train.objective.name``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from advjax.registry import Registry


class Forward(NamedTuple):
    """The model as the objective sees it: a train-mode and an eval-mode call.

    ``bounds`` is the dataset's input box, which inner maximisations must respect.
    """

    train: Callable[[Any, jax.Array], tuple[jax.Array, Any]]
    eval: Callable[[Any, jax.Array], jax.Array]
    bounds: tuple[float, float] = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective and how the train step should drive it.

    Attributes:
      loss_fn: ``(params, forward, batch, key, carry) -> (loss, aux)``.
      replays: optimizer updates per batch, each a fresh ``loss_fn`` call on the same
        batch (Free AT, Shafahi et al. 2019); 1 for every other objective.
      uses_carry: whether ``loss_fn`` reads and returns a persistent perturbation.
      extra_train_arrays: called once on the training `Dataset` before training;
        returns per-example arrays (leading axis = training example) batched with x, y.
      prepare: ``prepare(dataset, *, load_model)``, run once by `advjax.runs` before
        training when the objective needs files made from other runs (IR's teacher
        targets); ``load_model(workdir) -> advjax.models.Model`` restores a finished run,
        so objectives never import the run layer above them.
    """

    loss_fn: Callable[..., tuple[jax.Array, dict]]
    replays: int = 1
    uses_carry: bool = False
    extra_train_arrays: Callable[[Any], dict] | None = None
    prepare: Callable[..., None] | None = None


def build_objective(objective_config) -> Objective:
    """Builds the objective named by ``objective_config.name``."""
    builder = OBJECTIVES.get(objective_config.name, key="train.objective.name")
    return builder(objective_config)


# Training objectives: builder(objective_config) -> advjax.objectives.Objective.
OBJECTIVES = Registry(
    "objective",
    {
        "standard": "advjax.objectives.base:build_standard",
        "pgd_at": "advjax.objectives.base:build_pgd_at",
        "trades": "advjax.objectives.trades:build_trades",
        "mart": "advjax.objectives.mart:build_mart",
        "fgsm_rs": "advjax.objectives.fast:build_fgsm_rs",
        "free_at": "advjax.objectives.fast:build_free_at",
        "input_gradient": "advjax.objectives.regularizers:build_input_gradient",
        "jacobian": "advjax.objectives.regularizers:build_jacobian",
        "fisher_kl": "advjax.objectives.fisher:build_fisher_kl",
        "interpretation": "advjax.objectives.interpretation:build_interpretation",
        "squared_at": "advjax.objectives.regression:build_squared_at",
    },
)
