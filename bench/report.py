"""BENCHMARKS.md: one page of targets and results, then one short table per benchmark with its
command. What follows `KEEP_MARKER` in the file (sections written by hand) is kept as it is."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from bench import REPO
from bench.common import table

KEEP_MARKER = "<!-- Written by hand from here on: `python -m bench` keeps what follows. -->"

RECORDED = """## Recorded results of earlier fixes

Each fix was measured side by side with and without it, in one run, by switching it from the
benchmark; that switching has left the benchmarks. The last recorded figures, from the run at
commit 19a0f57 (2026-11-25, `python -m bench`), are not re-run:

| Fix (where) | Benchmark | Without | With |
|---|---|---|---|
| one boto3 session per process (aws.py) | 2: per electron | 727 ms | 438 ms |
| the same | 4: 16 at once / one | 17.4x (16: 8.30 s) | 6.6x (16: 3.02 s) |
| TCP_NODELAY on the SSH socket (remote.py) | 3: loopback | 116 ms | 31 ms |
| quick ACKs on the SSH socket (remote.py) | 3: loopback | 76 ms | 31 ms |
| a warm worker, one command per task (runner.py) | 3: loopback | 87 ms | 31 ms |
| the bootstrap wait checks every 0.1 s, not 0.5 s (remote.py) | 2: per electron | 855 ms | 438 ms |
| the bootstrap installs with uv, not pip (bootstrap.sh) | bootstrap install | 39.58 s | 6.30 s |
| `DeleteStack` sent once (stack.py) | 2: AWS calls | DeleteStack x2 | none repeated |
"""


def code_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()

    dirty = git("status", "--porcelain", "ec2_executor", "cdk_stacks")
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (
        " with local changes" if dirty else ""
    )


def verdict(passed: bool | None) -> str:
    return {True: "**pass**", False: "**FAIL**", None: "n/a"}[passed]


def section_markdown(section: dict[str, Any]) -> str:
    if "error" in section:
        return f"## {section['key']}\n\nDid not finish: {section['error']}.\n"
    return "\n".join(
        [
            f"## {section['title']}",
            "",
            f"Command: `{section['command']}` (took {section['seconds']:.0f} s).",
            "",
            section["table"],
            "",
            section["note"],
            "",
        ]
    )


def document(results: dict[str, dict[str, Any]], facts: str, minutes: float, code: str) -> str:
    rows = []
    for key, section in results.items():
        if "error" in section:
            rows.append((f"{key}: did not finish", section["error"], "", verdict(False)))
        number = section.get("title", "").split(".")[0]
        for t in section.get("targets", []):
            rows.append((f"{number}. {t['name']}", t["measured"], t["goal"], verdict(t["passed"])))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = [
        "# Benchmarks",
        "",
        f"Written by `python -m bench` (`make bench`) on {stamp}, {code}, in {minutes:.1f} min; "
        f"every figure below comes from that run. The machine: {facts} It is shared and noisy: "
        "times are medians (min-max), comparisons are made side by side in one run, alternating "
        "the order, with ratios per pair. Nothing connects outside 127.0.0.0/8 but the package "
        "registry, once, for the SSH plugin's venv.",
        "",
        "## Targets",
        "",
        table(("Target", "Measured", "Goal", "Result"), rows),
        "",
        RECORDED,
    ]
    return "\n".join(head + [section_markdown(s) for s in results.values()] + [KEEP_MARKER, "", ""])


def kept_tail(text: str) -> str:
    """What follows the marker in the current file."""
    _, found, tail = text.partition(KEEP_MARKER)
    return tail.lstrip("\n") if found else ""
