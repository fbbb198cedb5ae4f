"""Executor overhead per electron on the loopback harness: time and AWS calls per phase around
a trivial task (`lambda: 1`), electrons one after the other.

python -m bench.overhead [--repeats 7] [--moto-in-process]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench.common import Section, Target, benchmark_main, fmt_s, median, progress, spread, table
from bench.loopback import Harness, Probe, background_work, harness, repeated_calls, timed_execute

GOAL = 2.0
OVERHEAD = "executor overhead per electron (setup+run+teardown - task)"
REPEATS = "no AWS call made twice for one electron (polls aside)"


async def one_electron(h: Harness, probe: Probe, index: int) -> dict[str, Any]:
    from ec2_executor.ec2 import EC2Executor

    times = await timed_execute(EC2Executor(**h.options()), f"bench-overhead-{index}")
    probe.current = "background deletion wait"
    times["background"] = await background_work()
    phases, calls = probe.take()
    await asyncio.to_thread(h.fresh_cloud)
    (electron,) = phases.values()
    return {"times": times, "phases": electron, "calls": calls}


def run(args: argparse.Namespace) -> Section:
    repeats = args.repeats or 7
    with harness(moto_in_process=args.moto_in_process) as h, Probe().installed() as probe:

        async def all_runs() -> list[dict[str, Any]]:
            found = []
            for i in range(repeats + 1):  # the first is the process's first electron
                progress(f"overhead: electron {i}/{repeats}")
                found.append(await one_electron(h, probe, i))
            return found

        first, *runs = asyncio.run(all_runs())
        left = h.stacks_left
    where = "in the executor's process" if args.moto_in_process else "in its own process"
    section = Section(
        "overhead_moto_in_process" if args.moto_in_process else "overhead",
        f"Executor overhead per electron, moto {where}",
        "python -m bench.overhead" + (" --moto-in-process --repeats 5" * args.moto_in_process),
    )
    totals = [r["times"]["total"] for r in runs]
    twice = sorted({c for r in runs for c in repeated_calls(r["calls"])})
    overhead = f"{spread(totals)}, median of {len(runs)}"
    section.targets = [
        Target(OVERHEAD, overhead, f"< {GOAL:.0f} s", median(totals) < GOAL),
        Target(REPEATS, ", ".join(twice) or "none repeated", "each call once", not twice),
    ]
    section.table = phase_table(first, runs)
    section.note = (
        f"`EC2Executor(**harness_options(...))` driven directly (setup, run, teardown, as "
        f"`AsyncBaseExecutor.execute` does), moto {where}, a real sshd per emulated instance. "
        "Phases from the executor's log lines, AWS calls from botocore's events on its clients; "
        f"moto answers `CreateStack` and `DeleteStack` synchronously. Stacks left: {left}."
    )
    section.data = {"first": first, "runs": runs, "stacks_left": left}
    return section


def phase_table(first: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    def calls_in(run: dict[str, Any], phase: str) -> list[tuple[str, str, float]]:
        return [c for c in run["calls"] if c[0] == phase]

    rows = []
    for phase in [*runs[-1]["phases"], "background deletion wait"]:
        seconds = [r["phases"].get(phase, r["times"]["background"]) for r in runs]
        operations = dict.fromkeys(c[1] for c in calls_in(runs[-1], phase))
        aws = [sum(c[2] for c in calls_in(r, phase)) for r in runs]
        first_seconds = first["phases"].get(phase, first["times"]["background"])
        aws_time = fmt_s(median(aws)) if operations else "-"
        calls = ", ".join(operations) or "-"
        rows.append((phase, fmt_s(median(seconds)), fmt_s(first_seconds), calls, aws_time))
    outside = [r["times"]["total"] - sum(r["phases"].values()) for r in runs]
    rows.append(("(outside phases)", fmt_s(median(outside)), "", "", ""))
    total = fmt_s(median([r["times"]["total"] for r in runs]))
    rows.append(("**setup+run+teardown**", f"**{total}**", fmt_s(first["times"]["total"]), "", ""))
    headers = ("Phase (`lambda: 1`)", f"median of {len(runs)}", "first in the process")
    return table((*headers, "AWS calls", "their time"), rows)


if __name__ == "__main__":
    benchmark_main("overhead", run, __doc__ or "")
