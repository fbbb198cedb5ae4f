"""Warm instances on the loopback harness: ten trivial electrons in a row with
`keep_warm_minutes` 0 and 5, side by side in one run, and a trivial task's round trip on a warm
instance with Covalent's own wrapper around it.

python -m bench.warm [--repeats 10] [--moto-in-process]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from functools import partial
from typing import Any

from harness import free_port

from bench.common import Section, Target, benchmark_main, fmt_s, median, progress, spread, table
from bench.loopback import TRIVIAL, Harness, background_work, harness, timed_execute

ROUND_TRIP_GOAL = 0.100
OVERHEAD_RATIO_GOAL = 1 / 3


def covalent_task() -> Any:
    """The trivial task as Covalent ships it: `wrapper_fn` over a `TransportableObject`."""
    from covalent._workflow.transport import TransportableObject  # type: ignore[attr-defined]
    from covalent.executor.utils.wrappers import wrapper_fn

    return partial(wrapper_fn, TransportableObject(TRIVIAL), [], [])


def stacks_created(h: Harness) -> int:
    return len(h.moto.client("cloudformation").list_stacks()["StackSummaries"])


async def in_a_row(h: Harness, keep: int, count: int) -> dict[str, Any]:
    from ec2_executor.ec2 import EC2Executor
    from ec2_executor.warm.pool import retire_all_idle

    before, totals, started = stacks_created(h), [], time.monotonic()
    port = free_port()  # one port for the row: the same reuse key
    for node in range(count):
        progress(f"keep_warm_minutes={keep}: electron {node + 1}/{count}")
        ex = EC2Executor(**h.options(keep_warm_minutes=keep, ssh_port=port))
        totals.append((await timed_execute(ex, f"row-{keep}", node))["total"])
    wall = time.monotonic() - started
    await retire_all_idle()
    await background_work()
    return {"keep": keep, "wall": wall, "totals": totals, "stacks": stacks_created(h) - before}


async def round_trips(h: Harness, repeats: int) -> dict[str, list[float]]:
    """A warm instance's task round trip (run only: upload, run, fetch), with Covalent's
    wrapper and without it, in turn."""
    from ec2_executor.ec2 import EC2Executor
    from ec2_executor.warm.pool import retire_all_idle

    tasks = {"wrapped": covalent_task(), "bare": TRIVIAL}
    seconds: dict[str, list[float]] = {"wrapped": [], "bare": []}
    port = free_port()
    for node in range(repeats * 2 + 1):
        kind = "bare" if node % 2 else "wrapped"
        ex = EC2Executor(**h.options(keep_warm_minutes=5, ssh_port=port))
        times = await timed_execute(ex, "round-trip", node, tasks[kind])
        if node:  # the first one is cold
            seconds[kind].append(times["run"])
    await retire_all_idle()
    await background_work()
    return seconds


def run(args: argparse.Namespace) -> Section:
    from ec2_executor.warm.pool import POOL

    count = args.repeats or 10
    POOL.idle_seconds = 600.0
    with harness(moto_in_process=args.moto_in_process) as h:
        runs = []
        for keep in (0, 5):
            runs.append(asyncio.run(in_a_row(h, keep, count)))
            h.fresh_cloud()
        progress("round trips on a warm instance")
        trips = asyncio.run(round_trips(h, max(5, count)))
        h.fresh_cloud()
        left = h.stacks_left
    cold, warm = (r["totals"][1:] for r in runs)
    ratio = median(warm) / median(cold)
    wrapped = median(trips["wrapped"])
    section = Section(
        "warm",
        "Warm instances: ten electrons in a row, keep_warm_minutes 0 vs 5 (loopback harness)",
        "python -m bench.warm",
    )
    section.targets = [
        Target(
            "warm electron's overhead vs a cold one's",
            f"{ratio:.2f}",
            f"<= {OVERHEAD_RATIO_GOAL:.2f}",
            ratio <= OVERHEAD_RATIO_GOAL,
        ),
        Target(
            "trivial task round trip on a warm instance, with Covalent's wrapper",
            spread(trips["wrapped"]),
            f"< {fmt_s(ROUND_TRIP_GOAL)}",
            wrapped < ROUND_TRIP_GOAL,
        ),
        Target(
            f"stacks created for {count} electrons, 0 vs 5",
            f"{runs[0]['stacks']} vs {runs[1]['stacks']}",
            f"{count} vs 1",
            runs[0]["stacks"] == count and runs[1]["stacks"] == 1,
        ),
    ]
    headers = ("keep_warm_minutes", "stacks created", f"wall time, {count} electrons")
    section.table = table(
        (*headers, "first electron", "each later electron (median, range)"),
        [
            (
                r["keep"],
                r["stacks"],
                fmt_s(r["wall"]),
                fmt_s(r["totals"][0]),
                spread(r["totals"][1:]),
            )
            for r in runs
        ],
    )
    section.note = (
        f"An electron's time is the executor's whole overhead (the task is `lambda: 1`): setup, "
        f"run and teardown as Covalent calls them. A warm electron costs {fmt_s(median(warm))} "
        f"against {fmt_s(median(cold))} for a cold one ({ratio:.2f} of it). A warm task's round "
        f"trip (run only) is {spread(trips['wrapped'])} with Covalent's `wrapper_fn` and "
        f"`TransportableObject` around it, {spread(trips['bare'])} bare. Stacks left: {left}."
    )
    section.data = {"runs": runs, "round_trips": trips, "stacks_left": left}
    return section


if __name__ == "__main__":
    benchmark_main("warm", run, __doc__ or "")
