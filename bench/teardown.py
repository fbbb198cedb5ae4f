"""How long `teardown` keeps an electron from completing, on the loopback harness, and how the
stack waits poll CloudFormation (the real `delete_and_wait`/`wait_for_creation` code run
against a virtual clock, since moto creates and deletes synchronously).

python -m bench.teardown [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

from bench.common import (
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
    option_exists,
    progress,
    table,
    timed_execute,
)

KEY = "teardown"
TITLE = "5. Teardown: what holds the electron, and polling CloudFormation"
COMMAND = "python -m bench.teardown"
API_LATENCY = 0.1
"""Virtual seconds each simulated CloudFormation call takes (a typical in-region API call)."""
DELETE_SECONDS = (30.0, 60.0, 90.0, 180.0)
CREATE_SECONDS = (20.0, 30.0, 45.0, 60.0)


# --- on the harness --------------------------------------------------------------------------


async def one(h: Harness, recorder: Recorder, tag: str, wait: bool) -> dict[str, Any]:
    from ec2_executor.ec2 import EC2Executor

    overrides = {"wait_for_deletion": True} if wait else {}
    executor = EC2Executor(**h.options(**overrides))
    known = {r.instance_id for r in h.boot.instances}
    recorder.reset()
    result, times = await timed_execute(executor, TRIVIAL, [], dispatch_id=tag)
    if result != 1:
        raise RuntimeError(f"{tag}: the task returned {result!r}")
    teardown_returned = time.monotonic()
    recorder.label = "background"
    background = await drain_background()
    snap = recorder.snapshot()
    await asyncio.to_thread(h.settle)
    record = next((r for r in h.boot.instances if r.instance_id not in known), None)
    calls = snap["calls"]
    in_teardown = [c for c in calls if c.label == "delete stack"]
    in_background = [c for c in calls if c.label == "background"]
    return {
        "teardown": times["teardown"],
        "delete_phase": next(
            (s.seconds for s in snap["phases"][0] if s.name == "delete stack"), float("nan")
        ),
        "background": background,
        "teardown_calls": [c.operation for c in in_teardown],
        "background_calls": [c.operation for c in in_background],
        "polls": sum(1 for c in in_teardown + in_background if c.operation == "DescribeStacks"),
        "instance_stopped_after": (record.stopped_at - teardown_returned)
        if record is not None and record.stopped_at is not None
        else float("nan"),
    }


# --- the waits against a virtual clock -------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class _FakeStacks:
    """Answers like CloudFormation for a stack that takes `seconds` to create or delete."""

    def __init__(self, clock: _Clock, seconds: float, kind: str) -> None:
        self.clock, self.seconds, self.kind = clock, seconds, kind
        self.calls: dict[str, int] = {}
        self.done_at = seconds

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.clock.now += API_LATENCY

    def delete(self, name: str) -> None:
        self._call("DeleteStack")

    def events(self, name: str) -> list[Any]:
        self._call("DescribeStackEvents")
        return []

    def describe(self, name: str) -> dict[str, Any] | None:
        self._call("DescribeStacks")
        finished = self.clock.now >= self.done_at
        if self.kind == "delete":
            return None if finished else {"StackStatus": "DELETE_IN_PROGRESS"}
        status = "CREATE_COMPLETE" if finished else "CREATE_IN_PROGRESS"
        return {"StackStatus": status, "Outputs": []}


@contextlib.contextmanager
def virtual_time(clock: _Clock) -> Iterator[None]:
    """`ec2_executor.blocking`'s `time` and `asyncio.sleep` on the virtual clock."""
    from ec2_executor import blocking

    async def sleep(seconds: float) -> None:
        clock.now += max(0.0, seconds)
        await asyncio.sleep(0)

    fake_time = types.SimpleNamespace(monotonic=clock.monotonic)
    fake_asyncio = types.SimpleNamespace(sleep=sleep, get_running_loop=asyncio.get_running_loop)
    saved = blocking.__dict__["time"], blocking.__dict__["asyncio"]
    blocking.time, blocking.asyncio = fake_time, fake_asyncio  # type: ignore[assignment]
    try:
        yield
    finally:
        blocking.time, blocking.asyncio = saved  # type: ignore[assignment]


def simulate(kind: str, seconds: float) -> dict[str, Any]:
    """Run the real wait (`delete_and_wait` or `wait_for_creation`, with `poll`'s own backoff)
    for a stack that CloudFormation finishes after `seconds`."""
    from ec2_executor.blocking import Deadline
    from ec2_executor.stack import EventLog, delete_and_wait, wait_for_creation

    clock = _Clock()
    stacks = _FakeStacks(clock, seconds, kind)
    events = EventLog("simulated", logger=lambda _message: None)
    with virtual_time(clock):

        async def wait() -> None:
            deadline = Deadline(3600)
            if kind == "delete":
                await delete_and_wait(stacks, "simulated", deadline=deadline, events=events)  # type: ignore[arg-type]
            else:
                await wait_for_creation(
                    stacks,  # type: ignore[arg-type]
                    "simulated",
                    "simulated",
                    deadline=deadline,
                    events=events,
                )

        asyncio.run(wait())
    return {
        "seconds": seconds,
        "noticed_after": clock.now,
        "lag": clock.now - seconds,
        "polls": stacks.calls.get("DescribeStacks", 0),
        "calls": dict(stacks.calls),
    }


# --- the benchmark ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Section:
    repeats = args.repeats or 5
    section = Section(KEY, TITLE, COMMAND)
    variants = [("default", False)]
    if option_exists("wait_for_deletion"):
        variants.append(("wait_for_deletion=True", True))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    recorder = Recorder()
    with harness(moto_in_process=args.moto_in_process) as h:
        recorder.install()
        try:

            async def all_runs() -> None:
                progress("teardown: warm-up electron")
                await one(h, recorder, "bench-teardown-warm", False)
                await asyncio.to_thread(h.fresh_cloud)
                for i in range(repeats):
                    order = variants if i % 2 == 0 else list(reversed(variants))
                    for name, wait in order:
                        progress(f"teardown: repeat {i + 1}/{repeats}, {name}")
                        results[name].append(
                            await one(h, recorder, f"bench-teardown-{i}-{int(wait)}", wait)
                        )
                        await asyncio.to_thread(h.fresh_cloud)

            asyncio.run(all_runs())
        finally:
            recorder.uninstall()
        left = h.stacks_left()
    deletes = [simulate("delete", s) for s in DELETE_SECONDS]
    creates = [simulate("create", s) for s in CREATE_SECONDS]
    default = Stat.of([r["teardown"] for r in results["default"]])
    section.targets = [
        Target(
            "teardown holds the electron (default)",
            f"{fmt_s(default.median)} median of {default.n} on moto",
            "report (no target given)",
            None,
        )
    ]
    section.data = {"results": results, "deletes": deletes, "creates": creates, "left": left}
    section.body = render(results, deletes, creates, left)
    return section


def render(
    results: dict[str, list[dict[str, Any]]],
    deletes: list[dict[str, Any]],
    creates: list[dict[str, Any]],
    left: int,
) -> str:
    rows = []
    for name, runs in results.items():
        rows.append(
            (
                f"`{name}`",
                Stat.of([r["teardown"] for r in runs]).ms(),
                fmt_s(median([r["background"] for r in runs])),
                ", ".join(runs[-1]["teardown_calls"]) or "-",
                ", ".join(runs[-1]["background_calls"]) or "-",
                f"{median([r['polls'] for r in runs]):.0f}",
                fmt_s(median([r["instance_stopped_after"] for r in runs])),
            )
        )
    harness_table = table(
        (
            "Teardown on the harness",
            "holds the electron (median, min-max)",
            "background wait after it",
            "AWS calls in teardown",
            "AWS calls in the background",
            "DescribeStacks polls",
            "harness stopped the instance, after teardown returned",
        ),
        rows,
    )
    default_runs = results.get("default", [])
    again = any("DeleteStack" in r["background_calls"] for r in default_runs)
    background_text = (
        "There `delete_and_wait` sends `DeleteStack` a second time before polling: harmless "
        "(idempotent), but a repeated call."
        if again
        else "There it only polls: `DeleteStack` is sent once."
    )
    delete_60 = next((d for d in deletes if d["seconds"] == 60.0), deletes[0])
    delete_table, create_table = _lag_table("deletion", deletes), _lag_table("creation", creates)
    return f"""
On the harness of benchmark 2, one electron (`lambda: 1`) at a time, the variants alternating,
teardown timed around `EC2Executor.teardown` (the time between the task's result and the
electron's completion). moto deletes a stack synchronously inside `DeleteStack` (instance
terminated, security group gone), so here the first `DescribeStacks` already answers "gone":
the numbers below are the executor's own cost, not the cloud's. Stacks left: {left}.

{harness_table}

By default teardown returns once CloudFormation has accepted `DeleteStack`; the wait for
`DELETE_COMPLETE` goes on in the background (`Electron.destroy`). {background_text}

**The waits against the real cloud's timing.** The real `delete_and_wait` and
`wait_for_creation` (with `ec2_executor.blocking.poll`'s backoff: first 0.5 s, x1.5, at most
5 s) run against a stub CloudFormation that finishes after a given time, on a virtual clock
(each call costs {API_LATENCY:.1f} s), so these cost no waiting:

{delete_table}

{create_table}

A stack is noticed at most one poll interval (5 s, plus a call) after it finishes, about half
of that on average, and a {fmt_s(delete_60["seconds"])} deletion costs {delete_60["polls"]}
`DescribeStacks` polls (with as many `DescribeStackEvents`): far below CloudFormation's API
limits, and in the background by default.
"""


def _lag_table(what: str, polled: list[dict[str, Any]]) -> str:
    """How late the executor's poll noticed a stack's `what` that took a known time."""
    return table(
        (f"Stack {what} takes", "noticed after", "lag", "DescribeStacks polls", "all calls"),
        [
            (
                fmt_s(r["seconds"]),
                fmt_s(r["noticed_after"]),
                fmt_s(r["lag"]),
                r["polls"],
                ", ".join(f"{k} {v}" for k, v in r["calls"].items()),
            )
            for r in polled
        ],
    )


def main() -> None:
    benchmark_main(KEY, run, __doc__ or "")


if __name__ == "__main__":
    main()
    sys.exit(0)
