"""Sixteen electrons dispatched at once (asyncio.gather of 16 executor runs) against one, on the
loopback harness, alternating, several repeats.

python -m bench.concurrency [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
import time
from typing import Any

from bench import fixes
from bench.common import (
    PHASES,
    TRIVIAL,
    Harness,
    Recorder,
    Section,
    Stat,
    Target,
    benchmark_main,
    drain_background,
    fmt_s,
    harness,
    median,
    progress,
    table,
    timed_execute,
)
from bench.fixes import Fix

KEY = "concurrency"
TITLE = "4. Concurrency: 16 electrons at once vs one"
COMMAND = "python -m bench.concurrency"
N = 16
TARGET_RATIO = 3.0


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


async def batch(h: Harness, recorder: Recorder, n: int, tag: str) -> dict[str, Any]:
    from ec2_executor.ec2 import EC2Executor

    executors = [EC2Executor(**h.options()) for _ in range(n)]
    known = {r.instance_id for r in h.boot.instances}
    recorder.reset()
    cpu_before = _cpu()
    moto_before = h.moto_cpu()
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(
            timed_execute(executor, TRIVIAL, [], dispatch_id=tag, node_id=i)
            for i, executor in enumerate(executors)
        )
    )
    wall = time.monotonic() - started
    background = await drain_background()
    if [result for result, _ in outcomes] != [1] * n:
        raise RuntimeError(f"{tag}: wrong results")
    snap = recorder.snapshot()
    await asyncio.to_thread(h.settle)
    cpu_after = _cpu()
    moto_cpu = h.moto_cpu() - moto_before
    records = [r for r in h.boot.instances if r.instance_id not in known and r.booted_at]
    boots = sorted(r.booted_at for r in records if r.booted_at is not None)
    phases: dict[str, list[float]] = {}
    for spans in snap["phases"]:
        for span in spans:
            phases.setdefault(span.name, []).append(span.seconds)
    return {
        "n": n,
        "wall": wall,
        "totals": [times["total"] for _, times in outcomes],
        "phases": phases,
        "aws_calls": len(snap["calls"]),
        "aws_call_seconds": sum(c.seconds for c in snap["calls"]),
        "client_creation": sum(s.seconds for s in snap["client_creation"]),
        "connect_attempts": len(snap["connects"]),
        "background": background,
        "cpu_self": cpu_after[0] - cpu_before[0],
        "cpu_children": cpu_after[1] - cpu_before[1],
        "cpu_moto": moto_cpu,
        "sshd_spread": (boots[-1] - boots[0]) if len(boots) > 1 else 0.0,
    }


AS_IS = "as in the code"


def run(args: argparse.Namespace) -> Section:
    repeats = args.repeats or 5
    section = Section(KEY, TITLE, COMMAND)
    recorder = Recorder()
    results: dict[str, dict[int, list[dict[str, Any]]]] = {}
    with harness(moto_in_process=args.moto_in_process) as h:
        recorder.install()
        try:

            async def measure(name: str, fix: Fix | None, n: int, i: int) -> None:
                progress(f"concurrency: repeat {i + 1}/{repeats}, {n} electron(s), {name}")
                tag = f"bench-concurrency-{i}-{n}-{int(fix is not None)}"
                with fix.toggled() if fix else contextlib.nullcontext():
                    results[name][n].append(await batch(h, recorder, n, tag))
                await asyncio.to_thread(h.fresh_cloud)

            async def all_runs() -> None:
                progress("concurrency: warm-up (one electron)")
                await batch(h, recorder, 1, "bench-concurrency-warm")
                await asyncio.to_thread(h.fresh_cloud)
                session = next(f for f in fixes.detect() if f.key == "session")
                variants: list[tuple[str, Fix | None]] = [(AS_IS, None), (session.label, session)]
                for name, _ in variants:
                    results[name] = {1: [], N: []}
                for i in range(repeats):
                    # Each pair (one, then sixteen) back to back; the order flips every other
                    # repeat, and so does the order of the variants.
                    for name, fix in variants if i % 2 == 0 else list(reversed(variants)):
                        for n in (1, N) if i % 2 == 0 else (N, 1):
                            await measure(name, fix, n, i)

            asyncio.run(all_runs())
        finally:
            recorder.uninstall()
        left = h.stacks_left()
        moto_in_process = h.moto_in_process
    section.targets = []
    ratios: dict[str, list[float]] = {}
    for name in results:
        singles, groups = results[name][1], results[name][N]
        ratios[name] = [g["wall"] / s["wall"] for s, g in zip(singles, groups, strict=True)]
        ratio = median(ratios[name])
        single = Stat.of([s["wall"] for s in singles])
        group = Stat.of([g["wall"] for g in groups])
        section.targets.append(
            Target(
                f"{N} electrons at once / one electron, wall time ({name})",
                f"{ratio:.1f}x ({N}: {fmt_s(group.median)}, one: {fmt_s(single.median)})",
                f"≤ {TARGET_RATIO:.0f}x",
                ratio <= TARGET_RATIO,
            )
        )
    section.data = {"results": results, "ratios": ratios, "stacks_left": left}
    section.body = render(results, ratios, left, moto_in_process)
    return section


def render(
    results: dict[str, dict[int, list[dict[str, Any]]]],
    ratios: dict[str, list[float]],
    left: int,
    moto_in_process: bool,
) -> str:
    base, fixed = list(results)[:2]
    singles, groups = results[base][1], results[base][N]
    rows = []
    for name in PHASES:
        one = median([median(s["phases"].get(name, [0.0])) for s in singles])
        many = median([median(g["phases"].get(name, [0.0])) for g in groups])
        worst = median([max(g["phases"].get(name, [0.0])) for g in groups])
        many_fixed = median([median(g["phases"].get(name, [0.0])) for g in results[fixed][N]])
        rows.append(
            (name, fmt_s(one), fmt_s(many), fmt_s(worst), f"{many / one:.1f}x", fmt_s(many_fixed))
        )
    phase_table = table(
        (
            "Phase (as in the code, unless said)",
            "one electron",
            f"{N} at once: median electron",
            f"{N} at once: slowest electron",
            "median / one",
            f"{N} at once, {fixed}: median electron",
        ),
        rows,
    )

    def m(key: str, runs: list[dict[str, Any]]) -> float:
        return median([r[key] for r in runs])

    columns = [
        results[base][1],
        results[base][N],
        results[fixed][1],
        results[fixed][N],
    ]

    def row(label: str, cell: Any) -> tuple[str, ...]:
        return (label, *(cell(runs) for runs in columns))

    cpu_rows = [
        row("wall time", lambda r: Stat.of([x["wall"] for x in r]).s()),
        row(
            "CPU of this process (executor, paramiko, boto3, emulated-boot thread"
            + (", moto" if moto_in_process else "")
            + ")",
            lambda r: fmt_s(m("cpu_self", r)),
        ),
        row(
            "CPU of child processes (sshd and its sessions, bootstraps"
            + ("" if moto_in_process else "; moto's process not included")
            + ")",
            lambda r: fmt_s(m("cpu_children", r)),
        ),
        row("CPU of the moto server's process", lambda r: fmt_s(m("cpu_moto", r))),
        row(
            f"all of it / {os.cpu_count()} cores: the wall-time floor on this machine",
            lambda r: fmt_s(
                median([(x["cpu_self"] + x["cpu_children"] + x["cpu_moto"]) for x in r])
                / (os.cpu_count() or 1)
            ),
        ),
        row(
            "building boto3 sessions + clients (wall, summed over electrons)",
            lambda r: fmt_s(m("client_creation", r)),
        ),
        row(
            "AWS calls: count; summed call time",
            lambda r: f"{m('aws_calls', r):.0f}; {fmt_s(m('aws_call_seconds', r))}",
        ),
        row("SSH connection attempts", lambda r: f"{m('connect_attempts', r):.0f}"),
        row(
            "emulated boot: first to last sshd listening",
            lambda r: fmt_s(m("sshd_spread", r)) if r[0]["n"] > 1 else "-",
        ),
    ]
    cpu_table = table(("", "one", f"{N} at once", f"one, {fixed}", f"{N}, {fixed}"), cpu_rows)
    ratio_text = "; ".join(
        f"{name}: " + ", ".join(f"{r:.1f}x" for r in values) for name, values in ratios.items()
    )
    return f"""
The harness of benchmark 2 (moto {"in this process" if moto_in_process else "in its own process"},
emulated boots with a real sshd each, warm template cache). {N} `EC2Executor`s, each with its
own SSH port, run setup/run/teardown through `asyncio.gather` on one event loop, as
tests/integration/test_executor_lifecycle.py::test_ten_electrons_in_parallel_get_ten_stacks
does with ten; the task is `lambda: 1`. One warm-up electron, then per repeat: one electron and
{N} electrons back to back, for the code as it is and with the boto3-session fix switched from
the benchmark (`bench/fixes.py`: patched out when the code has it, in when it lacks it; here:
*{fixed}*); the orders flip every other repeat; between batches the harness stops every
instance and moto is emptied. A batch's wall time ends when its last electron's teardown
returns. Ratios per repeat: {ratio_text}. Stacks left: {left}.

{phase_table}

{cpu_table}

This machine has {os.cpu_count()} cores, and everything shares them: {N} sshd processes and
their sessions, {N} bootstrap checks, {N} task interpreters, moto, and the executor's own
Python (one GIL). On AWS each instance brings its own CPU; only the executor's process (first
CPU row) and the AWS API latency stay on the dispatcher's side. The emulated boot notices new
instances by polling moto every 0.2 s and starts the sshd of those it finds in one poll
together (the "first to last sshd" row: the spread of those starts on the shared cores); that
part of *wait for SSH* is the harness, not the executor.
"""


def main() -> None:
    benchmark_main(KEY, run, __doc__ or "")


if __name__ == "__main__":
    main()
    sys.exit(0)
