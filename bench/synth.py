"""Template synthesis per stack shape: cold (empty `EC2_EXECUTOR_CACHE_DIR`) against a cache hit
(warm, in this process, and the first call in a fresh `python -c` process).

python -m bench.synth [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench import REPO
from bench.common import (
    Section,
    Stat,
    Target,
    benchmark_main,
    fmt_s,
    median,
    progress,
    scratch,
    table,
)

KEY = "synth"
TITLE = "1. Template synthesis: cold vs cache hit"
COMMAND = "python -m bench.synth"
HIT_TARGET = 0.050
RATIO_TARGET = 100.0
WARM_CALLS = 200
FRESH_PROCESSES = 5

FRESH_HIT = """
import json, sys, time
t0 = time.perf_counter()
from cdk_stacks.shape import NetworkMode, StackShape
from cdk_stacks.templates import template_for
t1 = time.perf_counter()
body = template_for(StackShape(network=NetworkMode(sys.argv[1])))
t2 = time.perf_counter()
print(json.dumps({
    "import": t1 - t0,
    "call": t2 - t1,
    "bytes": len(body),
    "aws_cdk": "aws_cdk" in sys.modules,
    "jsii": "jsii" in sys.modules,
}))
"""


def _with_cache(directory: str) -> dict[str, str]:
    return {**os.environ, "EC2_EXECUTOR_CACHE_DIR": directory}


def cold(shape: Any) -> tuple[float, str]:
    """`template_for` with an empty cache dir: the child-process synthesis, then the write."""
    from cdk_stacks.templates import template_for

    directory = str(scratch("templates-cold"))
    os.environ["EC2_EXECUTOR_CACHE_DIR"] = directory
    started = time.perf_counter()
    template_for(shape)
    return time.perf_counter() - started, directory


def warm(shape: Any, directory: str) -> list[float]:
    from cdk_stacks.templates import template_for

    os.environ["EC2_EXECUTOR_CACHE_DIR"] = directory
    times = []
    for _ in range(WARM_CALLS):
        started = time.perf_counter()
        template_for(shape)
        times.append(time.perf_counter() - started)
    return times


def fresh(shape: Any, directory: str) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", FRESH_HIT, shape.network.value],
        env=_with_cache(directory),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    reply: dict[str, Any] = json.loads(done.stdout)
    reply["process"] = time.perf_counter() - started
    return reply


def run(args: argparse.Namespace) -> Section:
    from cdk_stacks.shape import ALL_SHAPES

    repeats = args.repeats or 3
    section = Section(KEY, TITLE, COMMAND)
    saved = os.environ.get("EC2_EXECUTOR_CACHE_DIR")
    results: dict[str, dict[str, list[Any]]] = {
        shape.key: {"cold": [], "warm": [], "fresh": []} for shape in ALL_SHAPES
    }
    try:
        for i in range(repeats):
            for shape in ALL_SHAPES if i % 2 == 0 else tuple(reversed(ALL_SHAPES)):
                progress(f"synth: {shape.key}, repeat {i + 1}/{repeats}: cold, then hits")
                seconds, directory = cold(shape)
                results[shape.key]["cold"].append(seconds)
                results[shape.key]["warm"] += warm(shape, directory)
                results[shape.key]["fresh"] += [
                    fresh(shape, directory) for _ in range(FRESH_PROCESSES)
                ]
    finally:
        if saved is None:
            os.environ.pop("EC2_EXECUTOR_CACHE_DIR", None)
        else:
            os.environ["EC2_EXECUTOR_CACHE_DIR"] = saved
    targets, rows = [], []
    for key, r in results.items():
        c = Stat.of(r["cold"])
        w = Stat.of(r["warm"])
        f = Stat.of([x["call"] for x in r["fresh"]])
        imports = median([x["import"] for x in r["fresh"]])
        process = median([x["process"] for x in r["fresh"]])
        cdk = any(x["aws_cdk"] or x["jsii"] for x in r["fresh"])
        size = r["fresh"][0]["bytes"]
        ratio = c.median / f.median
        rows.append(
            (
                f"`{key}`",
                c.s(),
                w.ms(),
                f.ms(),
                fmt_s(imports),
                fmt_s(process),
                "yes" if cdk else "no",
                f"{size:,} B",
                f"{ratio:,.0f}x / {c.median / w.median:,.0f}x",
            )
        )
        targets.append(
            Target(
                f"`{key}`: cache hit, first call in a fresh process",
                f"{f.median * 1e3:.1f} ms (warm in-process: {w.median * 1e3:.2f} ms)",
                f"< {HIT_TARGET * 1e3:.0f} ms",
                f.median < HIT_TARGET and not cdk,
            )
        )
        targets.append(
            Target(
                f"`{key}`: cold / hit",
                f"{ratio:,.0f}x (cold {fmt_s(c.median)} / fresh-process hit)",
                f"≥ {RATIO_TARGET:.0f}x",
                ratio >= RATIO_TARGET,
            )
        )
    section.targets = targets
    section.data = results
    section.body = f"""
Per shape (`cdk_stacks.shape.ALL_SHAPES`) and repeat: `cdk_stacks.templates.template_for(shape)`
with `EC2_EXECUTOR_CACHE_DIR` pointing at a new, empty directory (cold: a `python -m
cdk_stacks.synth` child process with jsii/Node, then an atomic write), then {WARM_CALLS} calls
in this process against that now-warm cache, then {FRESH_PROCESSES} fresh
`python -c` processes that import `cdk_stacks.templates` and time just the `template_for` call
(the first in their process: it also computes the cache key, the package versions and a hash
of the stack's sources). {repeats} repeats, shapes alternating. Medians (min-max).

{
        table(
            (
                "Shape",
                "cold",
                "hit, warm, in-process",
                "hit, first call in a fresh process",
                "import `cdk_stacks.templates`",
                "whole `python -c` process",
                "imported aws_cdk/jsii?",
                "template",
                "cold / hit (fresh process / warm)",
            ),
            rows,
        )
    }

A hit reads one JSON file; its first call in a process also hashes the stack's sources and
reads two package versions (the `fingerprint`, cached for the process after that). aws_cdk and
jsii are never imported on a hit: the import column is `cdk_stacks.templates` alone.
"""
    return section


def main() -> None:
    benchmark_main(KEY, run, __doc__ or "")


if __name__ == "__main__":
    main()
    sys.exit(0)
