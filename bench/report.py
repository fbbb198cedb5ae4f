"""BENCHMARKS.md, written whole from the raw results in bench/results/ (one JSON file per run,
named by its commit): the newest run's targets and sections, then the targets of earlier
commits' runs, labelled as such. Nothing in the file is kept by hand."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench import REPO
from bench.common import table

RESULTS = REPO / "bench" / "results"
CODE_PATHS = ("ec2_executor", "cdk_stacks", "bench", "tests/harness")
"""What a run's figures depend on: a change here makes the run's commit "with local changes"."""


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip()


def code_state() -> dict[str, Any]:
    """The commit the benchmarks run at, and whether the code differs from it."""
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "local_changes": bool(git("status", "--porcelain", *CODE_PATHS)),
    }


def commit_text(run: dict[str, Any]) -> str:
    return f"commit {run['commit']}" + (" with local changes" if run["local_changes"] else "")


def results_file(commit: str) -> Path:
    return RESULTS / f"{commit}.json"


def load_runs() -> list[dict[str, Any]]:
    """Every kept run, newest first."""
    runs = [json.loads(path.read_text()) for path in RESULTS.glob("*.json")]
    return sorted(runs, key=lambda r: r["started"], reverse=True)


def verdict(passed: bool | None) -> str:
    return {True: "**pass**", False: "**FAIL**", None: "n/a"}[passed]


def load_text(section: dict[str, Any]) -> str:
    """The 1-minute load average at the benchmark's start and end."""
    before, after = section.get("load", ["?", "?"])
    return f"{before} → {after}"


def section_markdown(section: dict[str, Any]) -> str:
    if "error" in section:
        return f"## {section['key']}\n\nDid not finish: {section['error']}.\n"
    return "\n".join(
        [
            f"## {section['title']}",
            "",
            f"Command: `{section['command']}` (took {section['seconds']:.0f} s; load "
            f"{load_text(section)}).",
            "",
            section["table"],
            "",
            section["note"],
            "",
        ]
    )


def target_rows(run: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for key, section in run["sections"].items():
        if "error" in section:
            rows.append(
                (f"{key}: did not finish", section["error"], "", verdict(False), load_text(section))
            )
        for t in section.get("targets", []):
            name = f"{key}: {t['name']}"
            rows.append((name, t["measured"], t["goal"], verdict(t["passed"]), load_text(section)))
    return rows


TARGET_HEADERS = ("Target", "Measured", "Goal", "Result", "Load (1 min) start → end")


def document(runs: list[dict[str, Any]]) -> str:
    latest, earlier = runs[0], runs[1:]
    head = [
        "# Benchmarks",
        "",
        f"Written by `python -m bench` (`make bench`) from `bench/results/{latest['commit']}.json`:"
        f" every figure in the sections below was measured in one run at "
        f"{commit_text(latest)}, started {latest['started']}, {latest['minutes']:.1f} min. "
        f"The machine: {latest['machine']} It is shared: each figure comes with the load "
        "average (1 min) at its benchmark's start and end; comparisons are made side by side "
        "in one run, alternating the order. `python -m bench --report` rewrites this file "
        "from the JSON.",
        "",
        "## Targets",
        "",
        table(TARGET_HEADERS, target_rows(latest)),
        "",
    ]
    body = [section_markdown(s) for s in latest["sections"].values()]
    tail = []
    if earlier:
        tail = [
            "## Earlier commits (not this run)",
            "",
            "Targets from runs at earlier commits, kept in `bench/results/`; not re-run here.",
            "",
        ]
        for run in earlier:
            tail += [
                f"### {commit_text(run)}, started {run['started']}",
                "",
                table(TARGET_HEADERS, target_rows(run)),
                "",
            ]
    return "\n".join(head + body + tail).rstrip() + "\n"
