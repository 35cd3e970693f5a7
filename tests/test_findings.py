"""The findings kit: per-seed statistics, finding rows, the README table and its check."""

from __future__ import annotations

import math
import os

import pytest

from advjax import findings
from tests.helpers import load_launch_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reproduce_module():
    return load_launch_module("reproduce")


def test_seed_stats_student_t_interval():
    s = findings.seed_stats([1.0, 2.0, 3.0])
    # mean 2, sample std 1, t_{0.975, 2} = 4.302652729... (tables), half-width t * 1 / sqrt(3).
    half = 4.302652729749464 / math.sqrt(3.0)
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["n"] == 3
    assert s["ci"] == pytest.approx([2.0 - half, 2.0 + half], abs=1e-12)
    one = findings.seed_stats([0.5])
    assert one["std"] is None and one["ci"] is None
    with pytest.raises(ValueError, match="finite"):
        findings.seed_stats([1.0, float("nan")])


def test_finding_rejects_unknown_verdict():
    with pytest.raises(ValueError, match="allowed"):
        findings.finding("c", "m", "true", "w", key="k")


def test_every_paper_has_a_title_and_a_registered_module():
    assert set(findings.ORDER) == set(findings.PAPERS.names()) == set(findings.TITLES)


def test_render_table_rows_and_escaping():
    report = {
        "seeds": [0, 1, 2],
        "provenance": {
            "command": "cmd",
            "wall_seconds": 120,
            "machine": {
                "cpu_count": 2,
                "load_average_start": [17.4, 1, 1],
                "load_average_end": [3.2, 1, 1],
            },
        },
        "findings": [
            findings.finding("a | b", "0.5", "holds", "why", key="k1"),
            findings.finding("c", "0.1", "not tested here", "no data", key="k2"),
        ],
    }
    table = findings.render_table({"ren": report})
    assert "`cmd` (3 seeds, 2 min on 2 cores at load average 3-17; `results/ren/`)" in table
    assert "| a \\| b | 0.5 | **holds** | why |" in table
    assert "| c | 0.1 | **not tested here** | no data |" in table
    assert findings.render_table({}) == ""


def test_readme_findings_table_matches_results():
    """The README's Findings block is exactly the table rendered from results/*/."""
    mod = _reproduce_module()
    assert (
        mod.readme_table(os.path.join(REPO, "README.md"), os.path.join(REPO, "results"), check=True)
        == 0
    )
