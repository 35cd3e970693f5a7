"""Reproduces one paper's findings into ``results/<paper>/`` (JSON, PNG), or the README table.

    python launch/reproduce.py PAPER [--seeds 0,1,2] [--out results/PAPER] [--smoke]
    python launch/reproduce.py --table      # README's Findings section from results/*/

PAPER is one of tsipras, ren, shi, moayeri, noack (`advjax.findings.PAPERS`). The run
trains and analyses once per seed under ``<out>/runs/`` (rerunning the command resumes
from what is finished there; the folder is not part of the results), aggregates across
seeds and writes ``<out>/results.json`` with the command, commit, wall time and machine,
the figures it names, and ``<out>/findings.md`` (that paper's rows of the README table).
``--smoke`` runs every step at toy size (seconds; the tests use it). ``--table`` rewrites
the block between ``<!-- findings:start -->`` and ``<!-- findings:end -->`` in README.md
from ``results/*/results.json``; ``--check`` only compares and exits 1 on a difference.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from advjax import findings, runs, xla_cache  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- findings:start -->", "<!-- findings:end -->"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> dict:
    import jax

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
    }


def reproduce(paper: str, out: str, seeds: list[int], smoke: bool, command: str) -> dict:
    fn = findings.PAPERS.get(paper, key="paper")
    os.makedirs(out, exist_ok=True)
    info = machine()
    t0 = time.time()
    report = fn(out, seeds=seeds, smoke=smoke)
    info["load_average_end"] = list(os.getloadavg())
    for row in report["findings"]:
        if row["verdict"] not in findings.VERDICTS:
            raise ValueError(f"{paper}: finding {row['key']!r} has verdict {row['verdict']!r}")
    report = {
        "paper": paper,
        "title": findings.TITLES[paper],
        "seeds": list(seeds),
        "smoke": smoke,
        **report,
        "provenance": {
            "command": command,
            "commit": _git("rev-parse", "HEAD"),
            "uncommitted_changes": bool(_git("status", "--porcelain", "--", "advjax", "configs")),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - t0, 1),
            "machine": info,
        },
    }
    runs.write_json(os.path.join(out, "results.json"), report)
    with open(os.path.join(out, "findings.md"), "w") as f:
        f.write(findings.render_table({paper: report}))
    return report


def load_reports(results_dir: str) -> dict:
    reports = {}
    for paper in findings.ORDER:
        path = os.path.join(results_dir, paper, "results.json")
        if os.path.exists(path):
            with open(path) as f:
                reports[paper] = json.load(f)
    return reports


def readme_table(readme: str, results_dir: str, check: bool) -> int:
    with open(readme) as f:
        text = f.read()
    if START not in text or END not in text:
        print(f"{readme}: no {START} ... {END} block", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    table = findings.render_table(load_reports(results_dir))
    new = f"{head}{START}\n{table}{END}{tail}"
    if check:
        if new != text:
            print("README's Findings table differs from results/*/results.json; run "
                  "`python launch/reproduce.py --table`", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    with open(readme, "w") as f:
        f.write(new)
    print(f"wrote the Findings table of {readme}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paper", nargs="?", help=f"one of {', '.join(findings.ORDER)}")
    ap.add_argument("--seeds", default=",".join(map(str, findings.DEFAULT_SEEDS)))
    ap.add_argument("--out", default=None, help="default: results/<paper>")
    ap.add_argument("--smoke", action="store_true", help="toy sizes (seconds)")
    ap.add_argument("--table", action="store_true", help="rewrite README's Findings table")
    ap.add_argument("--check", action="store_true", help="with --table: compare only")
    args = ap.parse_args(argv)
    if args.table:
        return readme_table(
            os.path.join(REPO, "README.md"), os.path.join(REPO, "results"), args.check
        )
    if args.paper not in findings.ORDER:
        ap.error(f"paper {args.paper!r}; allowed: {', '.join(findings.ORDER)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: a comma-separated list of integers")
    if not seeds:
        ap.error("--seeds: at least one seed")
    xla_cache.enable()
    out = args.out or os.path.join(REPO, "results", args.paper)
    command = "python launch/reproduce.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    report = reproduce(args.paper, out, seeds, args.smoke, command.strip())
    for row in report["findings"]:
        print(f"[{row['verdict']}] {row['claim']}: {row['measured']}")
    print(f"wrote {os.path.join(out, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
