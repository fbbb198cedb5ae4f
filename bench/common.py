"""What every benchmark shares: scratch directories, numbers, tables and the section format.

Import this before anything imports covalent: covalent's config, cache and data then live in a
temporary directory, never in ~/.config/covalent.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.covalent_server import CovalentPaths

BENCH_TMP = Path(tempfile.gettempdir()) / "ec2-executor-bench"
"""Kept between runs: the SSH plugin's venv, the warm template cache, the last run's JSON."""
_SCRATCH = Path(tempfile.mkdtemp(prefix="ec2-executor-bench-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ.update(CovalentPaths.create(_SCRATCH / "covalent").environment())


def scratch(name: str) -> Path:
    """A fresh directory for this process, removed at exit."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_SCRATCH))


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- numbers and tables ----------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def fmt_s(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "-"
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if abs(seconds) < 0.01:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e3:.0f} ms" if abs(seconds) < 1 else f"{seconds:.2f} s"


def spread(values: Sequence[float]) -> str:
    """Median (min-max)."""
    if not values:
        return "-"
    return f"{fmt_s(median(values))} ({fmt_s(min(values))}-{fmt_s(max(values))})"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


# --- a section of BENCHMARKS.md --------------------------------------------------------------


@dataclass
class Target:
    name: str
    measured: str
    goal: str
    passed: bool | None  # None: reported, no goal


@dataclass
class Section:
    key: str
    title: str
    command: str
    table: str = ""
    note: str = ""
    targets: list[Target] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    load: list[str] = field(default_factory=list)
    """The 1-minute load average at the benchmark's start and at its end."""


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def benchmark_main(
    key: str,
    run: Callable[[argparse.Namespace], Section],
    doc: str,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """The command line of every benchmark: run, print the section, optionally write JSON.
    `arguments` adds the benchmark's own."""
    from bench.report import section_markdown

    parser = argparse.ArgumentParser(
        prog=f"python -m bench.{key}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if arguments is not None:
        arguments(parser)
    parser.add_argument("--repeats", type=int, default=None, help="override the repeat count")
    parser.add_argument("--json", type=Path, default=None, help="also write the section here")
    parser.add_argument("--moto-in-process", action="store_true", help="moto as the tests run it")
    args = parser.parse_args()
    started, load = time.monotonic(), load_average()
    section = run(args)
    section.seconds = time.monotonic() - started
    section.load = [load, load_average()]
    section.command = command_line(key, sys.argv[1:])
    print(section_markdown(asdict(section)))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(section), default=str))


def command_line(key: str, argv: Sequence[str]) -> str:
    """The command that reproduces a section: its arguments as given, without `--json FILE`."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg == "--json":
            skip = not skip
            continue
        kept.append(arg)
    return " ".join(["python -m", f"bench.{key}", *kept])


def machine_facts() -> str:
    names = ("covalent", "boto3", "moto", "paramiko", "aws-cdk-lib")
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    python = sys.version.split()[0]
    return f"{os.cpu_count()} cores, load {load} at start, Python {python}, {versions}."
