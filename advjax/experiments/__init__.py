"""Experiments for ``--mode analyze``: orchestration of models, attacks and analyses.

Each module has ``run(config, workdir) -> dict``, registered by name in
`ANALYSES`; the math lives in `advjax.analysis`.
"""

from advjax.registry import Registry


class AnalysisError(RuntimeError):
    """An analysis cannot produce results with this config; the message says which key."""


# Analyses for `--mode analyze`: run(config, workdir) -> report dict.
ANALYSES = Registry(
    "analysis",
    {
        "tradeoff_toy": "advjax.experiments.tradeoff_toy:run",
        "tradeoff_visuals": "advjax.experiments.tradeoff_visuals:run",
        "small_data": "advjax.experiments.small_data:run",
        "interactions": "advjax.experiments.interactions:run",
        "black_box_gap": "advjax.experiments.black_box_gap:run",
        "information": "advjax.experiments.information:run",
        "interpretability": "advjax.experiments.interpretability:run",
        "spurious": "advjax.experiments.spurious:run",
    },
)
