"""The papers' findings, reproduced at a CPU-sized scale: one module per paper.

Each module has ``reproduce(out_dir, *, seeds, smoke) -> dict`` (registered in `PAPERS`):
it runs its experiments once per seed (through the analyses of `advjax.experiments`, in
``out_dir/runs/`` so that an interrupted run resumes), aggregates them, writes its figures
(PNG) into ``out_dir`` and returns a report whose ``"findings"`` is a list of `finding`
rows: one per claim of the paper, with what advjax measured, its interval across seeds and
a verdict. ``launch/reproduce.py PAPER`` adds the provenance (command, commit, wall time,
machine) and writes ``results/<paper>/results.json``; the README's Findings table is
`render_table` of those files (``launch/reproduce.py --table``), and a test keeps them
equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from advjax.registry import Registry

# reproduce(out_dir, *, seeds, smoke) -> report dict with "findings" (list of `finding`).
PAPERS = Registry(
    "paper",
    {
        "tsipras": "advjax.findings.tsipras:reproduce",
        "ren": "advjax.findings.ren:reproduce",
        "shi": "advjax.findings.shi:reproduce",
        "moayeri": "advjax.findings.moayeri:reproduce",
        "noack": "advjax.findings.noack:reproduce",
    },
)

TITLES = {
    "tsipras": "Tsipras et al. (2019), Robustness may be at odds with accuracy",
    "ren": "Ren et al. (2021), A unified game-theoretic interpretation of adversarial robustness",
    "shi": "Shi et al., Disentangling non-robust and robust components in a performance metric",
    "moayeri": "Moayeri et al. (2022), Explicit trade-offs between adversarial and natural "
    "distributional robustness",
    "noack": "Noack et al. (2021), Interpretability and adversarial robustness",
}

ORDER = ("tsipras", "ren", "shi", "moayeri", "noack")  # the papers as the README lists them
VERDICTS = ("holds", "does not hold", "not tested here")
DEFAULT_SEEDS = (0, 1, 2)


def seed_stats(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and a two-sided Student-t interval of the mean of
    per-seed values (the interval is ``None`` for a single value)."""
    from scipy import stats

    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"seed_stats needs finite values, got {list(v)}")
    mean = float(v.mean())
    if v.size == 1:
        return {"mean": mean, "std": None, "n": 1, "ci": None, "values": v.tolist()}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1)) * std / math.sqrt(v.size)
    return {
        "mean": mean,
        "std": std,
        "n": int(v.size),
        "ci": [mean - half, mean + half],
        "confidence": confidence,
        "values": v.tolist(),
    }


def finding(
    claim: str,
    measured: str,
    verdict: str,
    why: str,
    *,
    key: str,
    stats: dict | None = None,
) -> dict:
    """One row of a paper's findings.

    Args:
      claim: the paper's claim in one sentence (advjax's readings are called so).
      measured: what advjax measured, with its interval (a short, human-readable string).
      verdict: one of `VERDICTS`.
      why: the reason for the verdict (which number against which threshold, or why the
        claim is not tested here).
      key: a stable identifier of the row (tests and notebooks look rows up by it).
      stats: the numbers behind ``measured`` (for instance `seed_stats` of each quantity).
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r}; allowed: {', '.join(VERDICTS)}")
    return {
        "key": key,
        "claim": claim,
        "measured": measured,
        "verdict": verdict,
        "why": why,
        "stats": stats or {},
    }


def fmt_stats(s: dict, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    """``"0.912 ± 0.004 [0.902, 0.922] (n=3)"`` for a `seed_stats` dict (``scale`` 100 and
    ``unit`` ``"%"`` for accuracies)."""
    f = f"{{:.{digits}f}}"
    text = f.format(s["mean"] * scale) + unit
    if s.get("std") is not None:
        lo, hi = s["ci"]
        text += f" ± {f.format(s['std'] * scale)} [{f.format(lo * scale)}, {f.format(hi * scale)}]"
    return text + f" (n={s['n']})"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_table(reports: dict[str, dict]) -> str:
    """The README's Findings table (Markdown) of ``{paper: results.json}``, papers in
    `ORDER`."""
    lines = []
    for paper in ORDER:
        if paper not in reports:
            continue
        report = reports[paper]
        prov = report.get("provenance", {})
        machine = prov.get("machine", {})
        load = ""
        if machine.get("load_average_start") and machine.get("load_average_end"):
            lo, hi = sorted((machine["load_average_start"][0], machine["load_average_end"][0]))
            load = f" at load average {lo:.0f}-{hi:.0f}"
        lines.append(f"**{TITLES.get(paper, paper)}**: `{prov.get('command', '')}` "
                     f"({len(report.get('seeds', []))} seeds, "
                     f"{prov.get('wall_seconds', 0) / 60:.0f} min on "
                     f"{machine.get('cpu_count', '?')} cores{load}; "
                     f"`results/{paper}/`)")  # fmt: skip
        lines.append("")
        lines.append("| claim | advjax measured | verdict | why |")
        lines.append("|---|---|---|---|")
        for row in report["findings"]:
            lines.append(
                f"| {_cell(row['claim'])} | {_cell(row['measured'])} | "
                f"**{row['verdict']}** | {_cell(row['why'])} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n" if lines else ""
