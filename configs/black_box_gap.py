"""Why Square fools points that APGD leaves robust: the default model's black-box gap.

`python launch/main.py --config configs/black_box_gap.py --workdir runs/black_box_gap
--mode analyze --config.analysis.model.workdir=runs/mnist_fast` restores the default run
(the README's first command; trained under ``<workdir>/model`` when the key is left empty)
and runs AutoAttack's components of its ensemble (APGD-CE, APGD-T with 9 targets, Square
with 5,000 queries, l_inf 0.3; ``analysis.components``, without the default's APGD-B)
component by component on the first 1,000 test images. For the points only Square
fools it reports the margins that the white-box attacks and Square reached, the margin on
the straight path from x to Square's point, the share of input coordinates with a zero
gradient, how many of these points APGD-CE or APGD-DLR with 1, 5 and 20 restarts fool,
and the gap when the whole ensemble runs again under another key
(`advjax.experiments.black_box_gap`). About 4 minutes on a 2-core CPU with the model
trained.

Arguments: ``smoke`` (the smoke-sized default model, 100 images, seconds); ``boundary``
(the same analysis of the default's whole ensemble, with APGD-B, `advjax.attacks.boundary`,
between APGD-T and Square).
"""

from __future__ import annotations

import ml_collections

from configs import base

ARGS = ("smoke", "boundary")


def get_config(arg: str | None = None):
    c = base.get_base_config()
    c.eval.attacks = ml_collections.ConfigDict()
    c.analysis = ml_collections.ConfigDict(
        dict(
            name="black_box_gap",
            model=dict(
                config="configs/mnist_fast.py",
                workdir="",  # empty: <workdir>/model
                overrides=dict(),
            ),
            ensemble="ensemble",  # the model config's eval.attacks entry to dissect
            # Its components in order instead of the model config's list (() keeps it):
            # AutoAttack's APGD-CE, APGD-T and Square, without the default's APGD-B.
            components=("apgd_ce", "apgd_t", "square"),
            num_examples=1000,  # the first test images (the default evaluation's subset)
            batch_size=500,
            segment_points=11,
            restarts=(1, 5, 20),  # APGD-CE / APGD-DLR restarts on the black-box-only points
            other_keys=1,  # further runs of the whole ensemble under other keys
            num_shown=8,
        )
    )
    if arg == "boundary":
        c.analysis.components = ()  # the default's ensemble, with APGD-B before Square
    elif arg == "smoke":
        a = c.analysis
        a.model.config = "configs/mnist_fast.py:smoke"
        a.num_examples = 100
        a.batch_size = 50
        a.restarts = (1, 2)
        a.num_shown = 4
    elif arg:
        raise ValueError(
            f"configs/black_box_gap.py: unknown argument {arg!r}; allowed: 'smoke', 'boundary'"
        )
    return c
