"""Warm instances on the loopback harness: ten trivial electrons in a row with
`keep_warm_minutes` 0 and 5, side by side in one run, and a trivial task's round trip on a warm
instance with Covalent's own wrapper around it.

python -m bench.warm [--repeats 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from functools import partial
from typing import Any

from bench.common import (
    TRIVIAL,
    Harness,
    Section,
    Stat,
    Target,
    benchmark_main,
    drain_background,
    fmt_s,
    harness,
    progress,
    table,
    timed_execute,
)

KEY = "warm"
TITLE = "Warm instances: ten electrons in a row, keep_warm_minutes 0 vs 5 (loopback harness)"
COMMAND = "python -m bench.warm"
ROUND_TRIP_TARGET = 0.100
OVERHEAD_RATIO_TARGET = 1 / 3


def covalent_task() -> Any:
    """The trivial task as Covalent ships it: `wrapper_fn` over a `TransportableObject`."""
    from covalent._workflow.transport import TransportableObject
    from covalent.executor.utils.wrappers import wrapper_fn

    return partial(wrapper_fn, TransportableObject(TRIVIAL), [], [])


async def in_a_row(h: Harness, keep: int, count: int, port: int, label: str) -> dict[str, Any]:
    from ec2_executor.ec2 import EC2Executor
    from ec2_executor.pool import retire_all_idle

    before = len(h.moto.client("cloudformation").list_stacks()["StackSummaries"])
    totals: list[float] = []
    started = time.monotonic()
    for node in range(count):
        ex = EC2Executor(**h.options(keep_warm_minutes=keep, ssh_port=port))
        result, times = await timed_execute(ex, TRIVIAL, [], dispatch_id=label, node_id=node)
        assert result == 1, result
        totals.append(times["total"])
    wall = time.monotonic() - started
    created = len(h.moto.client("cloudformation").list_stacks()["StackSummaries"]) - before
    await retire_all_idle()
    await drain_background()
    return {"keep": keep, "wall": wall, "totals": totals, "stacks": created}


async def round_trips(h: Harness, port: int, repeats: int) -> tuple[Stat, Stat]:
    """A warm instance's task round trip (run only: upload, run, fetch), with Covalent's
    wrapper and without it."""
    from ec2_executor.ec2 import EC2Executor
    from ec2_executor.pool import retire_all_idle

    wrapped, bare = covalent_task(), TRIVIAL
    seconds: dict[str, list[float]] = {"wrapped": [], "bare": []}
    for node in range(repeats * 2 + 1):
        ex = EC2Executor(**h.options(keep_warm_minutes=5, ssh_port=port))
        kind = "bare" if node % 2 else "wrapped"
        function = wrapped if kind == "wrapped" else bare
        _, times = await timed_execute(ex, function, [], dispatch_id="round-trip", node_id=node)
        if node:  # the first one is cold
            seconds[kind].append(times["run"])
    await retire_all_idle()
    await drain_background()
    return Stat.of(seconds["wrapped"]), Stat.of(seconds["bare"])


def run(args: argparse.Namespace) -> Section:
    from ec2_executor.pool import POOL

    count = args.repeats or 10
    POOL.idle_seconds = 600.0
    with harness(moto_in_process=args.moto_in_process) as h:
        from bench.common import free_port

        runs = []
        for keep in (0, 5):
            progress(f"{count} electrons in a row, keep_warm_minutes={keep}")
            runs.append(asyncio.run(in_a_row(h, keep, count, free_port(), f"row-{keep}")))
            h.fresh_cloud()
        progress("round trips on a warm instance")
        wrapped, bare = asyncio.run(round_trips(h, free_port(), max(5, count)))
        h.fresh_cloud()
        left = h.stacks_left()
    cold, warm = runs
    cold_each = Stat.of(cold["totals"])
    warm_each = Stat.of(warm["totals"][1:])
    ratio = warm_each.median / cold_each.median
    rows = [
        (
            r["keep"],
            r["stacks"],
            f"{r['wall']:.2f} s",
            Stat.of(r["totals"][:1]).s(),
            Stat.of(r["totals"][1:]).s(),
        )
        for r in runs
    ]
    body = "\n\n".join(
        [
            table(
                (
                    "keep_warm_minutes",
                    "stacks created",
                    f"wall time, {count} electrons",
                    "first electron",
                    "each later electron (median, range)",
                ),
                rows,
            ),
            f"An electron's time here is the executor's whole overhead (the task is `lambda: 1`): "
            f"setup, run and teardown as Covalent calls them. A warm electron costs "
            f"{fmt_s(warm_each.median)} against {fmt_s(cold_each.median)} for a cold one "
            f"({ratio:.2f} of it). A warm task's round trip (run only) is "
            f"{wrapped.ms()} with Covalent's `wrapper_fn` and `TransportableObject` around it, "
            f"{bare.ms()} bare; the fork server has imported covalent, so neither pays for it. "
            f"Stacks left after the run: {left}.",
        ]
    )
    return Section(
        key=KEY,
        title=TITLE,
        command=COMMAND,
        body=body,
        targets=[
            Target(
                "warm electron's overhead vs a cold one's",
                f"{ratio:.2f}",
                f"<= {OVERHEAD_RATIO_TARGET:.2f}",
                ratio <= OVERHEAD_RATIO_TARGET,
            ),
            Target(
                "trivial task round trip on a warm instance, with Covalent's wrapper",
                wrapped.ms(),
                f"< {fmt_s(ROUND_TRIP_TARGET)}",
                wrapped.median < ROUND_TRIP_TARGET,
            ),
            Target(
                f"stacks created for {count} electrons, 0 vs 5",
                f"{cold['stacks']} vs {warm['stacks']}",
                f"{count} vs 1",
                cold["stacks"] == count and warm["stacks"] == 1,
            ),
        ],
        data={"runs": runs, "wrapped": wrapped.__dict__, "bare": bare.__dict__, "left": left},
    )


if __name__ == "__main__":
    benchmark_main(KEY, run, __doc__ or "")
