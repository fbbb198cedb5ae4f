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
from typing import Any

from bench.common import (
    Harness,
    Probe,
    Section,
    Target,
    background_work,
    benchmark_main,
    fmt_s,
    harness,
    median,
    progress,
    spread,
    table,
    timed_execute,
)

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
    section = Section(
        "concurrency",
        f"4. Concurrency: {N} electrons at once vs one",
        "python -m bench.concurrency",
    )
    section.targets = [
        Target(
            f"{N} electrons at once / one electron, wall time",
            f"{median(ratios):.1f}x ({N}: {fmt_s(many)}, one: {fmt_s(one)})",
            f"≤ {GOAL:.0f}x",
            median(ratios) <= GOAL,
        )
    ]
    section.table = batch_table(results)
    section.note = (
        f"Ratios per repeat: {', '.join(f'{r:.1f}x' for r in ratios)}; stacks left: {left}. "
        f"Everything shares this machine's {os.cpu_count()} cores ({N} sshd, {N} task "
        "interpreters, moto, the executor): the last row is the wall-time floor that leaves, "
        "whatever the executor does. On AWS each instance brings its own CPU."
    )
    section.data = {"ratios": ratios, "wall": {"1": one, str(N): many}, "stacks_left": left}
    return section


def batch_table(results: dict[int, list[dict[str, Any]]]) -> str:
    def phase(runs: list[dict[str, Any]], name: str, pick: Any) -> str:
        return fmt_s(median([pick([p.get(name, 0.0) for p in r["phases"]]) for r in runs]))

    rows: list[tuple[Any, ...]] = [
        (
            name,
            phase(results[1], name, median),
            phase(results[N], name, median),
            phase(results[N], name, max),
        )
        for name in results[1][-1]["phases"][0]
    ]
    cores = os.cpu_count() or 1
    for i, what in enumerate(
        (
            "CPU of this process (executor, boot thread)",
            "CPU of child processes (sshd, bootstraps)",
            "CPU of the moto server",
        )
    ):
        rows.append((what, *(fmt_s(median([r["cpu"][i] for r in results[n]])) for n in (1, N)), ""))
    rows.append(
        ("AWS calls", *(f"{median([r['calls'] for r in results[n]]):.0f}" for n in (1, N)), "")
    )
    rows.append(("wall time", *(spread([r["wall"] for r in results[n]]) for n in (1, N)), ""))
    floor = [median([sum(r["cpu"]) / cores for r in results[n]]) for n in (1, N)]
    rows.append((f"all CPU / {cores} cores", *(fmt_s(f) for f in floor), ""))
    return table(
        ("Phase, or the whole batch", "one electron", f"{N} at once: median", f"{N}: slowest"), rows
    )


if __name__ == "__main__":
    benchmark_main("concurrency", run, __doc__ or "")
