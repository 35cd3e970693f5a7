"""Experiments for ``--mode analyze``: orchestration of models, attacks and analyses.

Each module has ``run(config, workdir) -> dict``, registered by name in
`advjax.registry.ANALYSES`; the math lives in `advjax.analysis`.
"""


class AnalysisError(RuntimeError):
    """An analysis cannot produce results with this config; the message says which key."""
