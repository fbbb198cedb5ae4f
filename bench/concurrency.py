"""Sixteen electrons at once (`asyncio.gather` of 16 executors on one event loop) against one,
on the loopback harness, alternating, several repeats.

python -m bench.concurrency [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from collections.abc import Callable
from typing import Any

from bench.common import Section, Target, benchmark_main, fmt_s, median, progress, spread, table
from bench.loopback import Harness, Probe, background_work, harness, timed_execute

N = 16
GOAL = 3.0


def cpu() -> tuple[float, float]:
    me, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


async def batch(h: Harness, probe: Probe, n: int, tag: str) -> dict[str, Any]:
    from ec2_executor.ec2 import EC2Executor

    executors = [EC2Executor(**h.options()) for _ in range(n)]
    before, moto_before = cpu(), h.moto_cpu()
    started = time.monotonic()
    await asyncio.gather(*(timed_execute(e, tag, node_id=i) for i, e in enumerate(executors)))
    wall = time.monotonic() - started
    await background_work()
    await asyncio.to_thread(h.settle)
    after = cpu()
    phases, calls = probe.take()
    await asyncio.to_thread(h.fresh_cloud)
    return {
        "wall": wall,
        "phases": list(phases.values()),
        "calls": len(calls),
        "cpu": (after[0] - before[0], after[1] - before[1], h.moto_cpu() - moto_before),
    }


def run(args: argparse.Namespace) -> Section:
    repeats = args.repeats or 5
    results: dict[int, list[dict[str, Any]]] = {1: [], N: []}
    with harness(moto_in_process=args.moto_in_process) as h, Probe().installed() as probe:

        async def all_runs() -> None:
            await batch(h, probe, 1, "bench-concurrency-warm-up")
            for i in range(repeats):
                for n in (1, N) if i % 2 == 0 else (N, 1):  # back to back, order flipping
                    progress(f"concurrency: repeat {i + 1}/{repeats}, {n} electron(s)")
                    results[n].append(await batch(h, probe, n, f"bench-concurrency-{i}-{n}"))

        asyncio.run(all_runs())
        left = h.stacks_left
    ratios = [g["wall"] / s["wall"] for s, g in zip(results[1], results[N], strict=True)]
    one, many = median([s["wall"] for s in results[1]]), median([g["wall"] for g in results[N]])
    title = f"Concurrency: {N} electrons at once vs one"
    section = Section("concurrency", title, "python -m bench.concurrency")
    measured = f"{median(ratios):.1f}x ({N}: {fmt_s(many)}, one: {fmt_s(one)})"
    name = f"{N} electrons at once / one electron, wall time"
    section.targets = [Target(name, measured, f"≤ {GOAL:.0f}x", median(ratios) <= GOAL)]
    section.table = batch_table(results)
    section.note = (
        f"Ratios per repeat: {', '.join(f'{r:.1f}x' for r in ratios)}; stacks left: {left}. "
        f"Everything shares this machine's {os.cpu_count()} cores ({N} sshd, {N} task "
        "interpreters, moto, the executor): the last row is the wall-time floor that leaves, "
        "whatever the executor does. On AWS each instance brings its own CPU."
    )
    section.data = {"results": results, "stacks_left": left}
    return section


def batch_table(results: dict[int, list[dict[str, Any]]]) -> str:
    def phase(n: int, name: str, pick: Any) -> str:
        return fmt_s(median([pick([p.get(name, 0.0) for p in r["phases"]]) for r in results[n]]))

    def each(n: int, value: Callable[[dict[str, Any]], float]) -> float:
        return median([value(r) for r in results[n]])

    rows: list[tuple[Any, ...]] = [
        (name, phase(1, name, median), phase(N, name, median), phase(N, name, max))
        for name in results[1][-1]["phases"][0]
    ]
    cores = os.cpu_count() or 1
    cpu: dict[str, Callable[[dict[str, Any]], float]] = {
        "CPU: this process (executor, boot thread)": lambda r: r["cpu"][0],
        "CPU: sshd, bootstraps": lambda r: r["cpu"][1],
        "CPU: moto": lambda r: r["cpu"][2],
        f"all CPU / {cores} cores": lambda r: sum(r["cpu"]) / cores,
    }
    rows += [(what, *(fmt_s(each(n, value)) for n in (1, N)), "") for what, value in cpu.items()]
    rows.append(("AWS calls", *(f"{each(n, lambda r: r['calls']):.0f}" for n in (1, N)), ""))
    rows.append(("wall time", *(spread([r["wall"] for r in results[n]]) for n in (1, N)), ""))
    headers = ("Phase, or the whole batch", "one electron", f"{N} at once: median")
    return table((*headers, f"{N}: slowest"), rows)


if __name__ == "__main__":
    benchmark_main("concurrency", run, __doc__ or "")
