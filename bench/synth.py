"""Template synthesis per stack shape: cold (an empty `EC2_EXECUTOR_CACHE_DIR`) against a cache
hit, warm in this process and as the first call of a fresh process.

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
    Target,
    benchmark_main,
    fmt_s,
    median,
    progress,
    scratch,
    spread,
    table,
)

HIT_GOAL, RATIO_GOAL = 0.050, 100.0
WARM_CALLS, FRESH_PROCESSES = 200, 5
FRESH_HIT = """
import json, sys, time
from cdk_stacks.shape import NetworkMode, StackShape
from cdk_stacks.templates import template_for
started = time.perf_counter()
body = template_for(StackShape(network=NetworkMode(sys.argv[1])))
seconds = time.perf_counter() - started
print(json.dumps({"call": seconds, "bytes": len(body), "cdk": "aws_cdk" in sys.modules}))
"""


def timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def fresh_hit(shape: Any, directory: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", FRESH_HIT, shape.network.value],
        env={**os.environ, "EC2_EXECUTOR_CACHE_DIR": directory},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def run(args: argparse.Namespace) -> Section:
    from cdk_stacks.shape import ALL_SHAPES
    from cdk_stacks.templates import template_for

    repeats = args.repeats or 3
    found: dict[str, dict[str, list[Any]]] = {
        s.key: {"cold": [], "warm": [], "fresh": []} for s in ALL_SHAPES
    }
    for i in range(repeats):
        for shape in ALL_SHAPES if i % 2 == 0 else tuple(reversed(ALL_SHAPES)):
            progress(f"synth: {shape.key}, repeat {i + 1}/{repeats}")
            directory = str(scratch("templates"))
            os.environ["EC2_EXECUTOR_CACHE_DIR"] = directory
            result = found[shape.key]
            result["cold"].append(timed(lambda: template_for(shape)))  # noqa: B023
            result["warm"] += [timed(lambda: template_for(shape)) for _ in range(WARM_CALLS)]  # noqa: B023
            result["fresh"] += [fresh_hit(shape, directory) for _ in range(FRESH_PROCESSES)]
    section = Section("synth", "Template synthesis: cold vs cache hit", "python -m bench.synth")
    rows = []
    for key, result in found.items():
        hits = [x["call"] for x in result["fresh"]]
        cold, hit, cdk = (
            median(result["cold"]),
            median(hits),
            any(x["cdk"] for x in result["fresh"]),
        )
        times = (
            spread(result["cold"]),
            spread(result["warm"]),
            spread(hits),
            f"{cold / hit:,.0f}x",
        )
        rows.append(
            (f"`{key}`", *times, "yes" if cdk else "no", f"{result['fresh'][0]['bytes']:,} B")
        )
        fresh, goal = (
            f"`{key}`: cache hit, first call in a fresh process",
            f"< {HIT_GOAL * 1e3:.0f} ms",
        )
        section.targets.append(Target(fresh, fmt_s(hit), goal, hit < HIT_GOAL and not cdk))
        ratio, goal = f"{cold / hit:,.0f}x", f"≥ {RATIO_GOAL:.0f}x"
        section.targets.append(
            Target(f"`{key}`: cold / hit", ratio, goal, cold / hit >= RATIO_GOAL)
        )
    headers = ("Shape", "cold", "hit, warm", "hit, fresh process", "cold / hit")
    section.table = table((*headers, "aws_cdk imported on a hit", "template"), rows)
    section.note = (
        f"`cdk_stacks.templates.template_for(shape)`; {repeats} repeats, median (min-max): cold "
        f"with an empty cache directory, then {WARM_CALLS} warm calls in this process and "
        f"{FRESH_PROCESSES} fresh `python -c` processes timing their first call."
    )
    section.data = found
    return section


if __name__ == "__main__":
    benchmark_main("synth", run, __doc__ or "")
