"""How long `teardown` keeps an electron from completing, by default (the deletion is awaited in
the background) and with `wait_for_deletion=True`, on the loopback harness.

python -m bench.teardown [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench.common import Section, Target, benchmark_main, fmt_s, median, progress, spread, table
from bench.loopback import Harness, Probe, background_work, harness, timed_execute

VARIANTS = {"default": {}, "wait_for_deletion=True": {"wait_for_deletion": True}}


async def one(h: Harness, probe: Probe, tag: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from ec2_executor.ec2 import EC2Executor

    times = await timed_execute(EC2Executor(**h.options(**overrides)), tag)
    probe.current = "background"
    background = await background_work()
    _, calls = probe.take()
    await asyncio.to_thread(h.fresh_cloud)
    return {
        "teardown": times["teardown"],
        "background": background,
        "in teardown": [c[1] for c in calls if c[0] == "delete stack"],
        "in the background": [c[1] for c in calls if c[0] == "background"],
    }


def run(args: argparse.Namespace) -> Section:
    repeats = args.repeats or 5
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    with harness(moto_in_process=args.moto_in_process) as h, Probe().installed() as probe:

        async def all_runs() -> None:
            await one(h, probe, "bench-teardown-warm-up", {})
            for i in range(repeats):
                for name in VARIANTS if i % 2 == 0 else reversed(VARIANTS):
                    progress(f"teardown: repeat {i + 1}/{repeats}, {name}")
                    tag = f"bench-teardown-{i}-{len(results[name])}-{name[:4]}"
                    results[name].append(await one(h, probe, tag, VARIANTS[name]))

        asyncio.run(all_runs())
        left = h.stacks_left
    section = Section("teardown", "Teardown: what holds the electron", "python -m bench.teardown")
    held = [r["teardown"] for r in results["default"]]
    measured = f"{fmt_s(median(held))} median of {len(held)} on moto"
    name = "teardown holds the electron (default)"
    section.targets = [Target(name, measured, "report (no goal given)", None)]
    rows = [
        (
            f"`{name}`",
            spread([r["teardown"] for r in runs]),
            fmt_s(median([r["background"] for r in runs])),
            ", ".join(runs[-1]["in teardown"]) or "-",
            ", ".join(runs[-1]["in the background"]) or "-",
        )
        for name, runs in results.items()
    ]
    headers = ("Teardown", "holds the electron", "background wait after it", "AWS calls in it")
    section.table = table((*headers, "AWS calls in the background"), rows)
    section.note = (
        "Timed around `EC2Executor.teardown`, `lambda: 1` electrons one at a time, the variants "
        "alternating. moto deletes a stack inside `DeleteStack`, so the first `DescribeStacks` "
        "already answers: this is the executor's own cost, not CloudFormation's. "
        f"Stacks left: {left}."
    )
    section.data = {"results": results, "stacks_left": left}
    return section


if __name__ == "__main__":
    benchmark_main("teardown", run, __doc__ or "")
