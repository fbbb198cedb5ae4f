"""A sweep at scale: 1, 16, 64 and 200 trivial electrons at once, side by side, on the timed
cloud with AWS's rate limits (tests/harness/timed_cloud.py: EC2's published token buckets,
CloudFormation's at 5 calls per second per action, burst 10, AWS's own throttling answers).

python -m bench.sweep [--sizes 1,16,64,200] [--scale 1.0] [--quota 32] [--json FILE]

Each sweep is one lattice's fan-out: N executors on one event loop (`asyncio.gather`, as
Covalent runs an electron's setup, run and teardown), against a fresh cloud with full buckets.
Every call is read from the cloud's side (action, time, answer); instances at once from the
emulated boot's records; what is left from moto once the background deletions are done.
`--sizes 1,4 --scale 0.1` is the smoke run the tests make.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from harness import patched_environ
from harness.boot import Delays
from harness.cloud_state import live_instances, live_stacks
from harness.timed_cloud import THROTTLED, AwsSeconds, Call, RateLimits, TimedCloud

from bench.common import Section, Target, benchmark_main, fmt_s, progress, table
from bench.loopback import Harness, background_work, harness, light_instances, timed_execute

SIZES = (1, 16, 64, 200)
PEAK_GOAL = 2.0
"""At the largest sweep, peak calls per second at most twice those at 16 electrons."""
QUOTA_VCPUS = 32
"""The timed cloud's vCPU quota (when it has one): below the larger sweeps, so they queue."""
QUOTA_REFUSED = "vcpu-limit"
"""The timed cloud's record of a CreateStack whose launch its vCPU quota refused."""
WINDOW = 5.0
SATURATED = 0.9
"""The machine's busy share (all users) above which its CPU, not the pacing, sets the pace."""
PROVISION_TIMEOUT = 900
"""Seconds an electron may wait for its instance's SSH: on two shared cores, the emulated
instances' boots queue for CPU far longer than on AWS, where each brings its own."""
"""Seconds per bin of the CreateStack timeline."""


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return float(sum(values) - idle), float(sum(values))


def own_cpu(h: Harness) -> float:
    """CPU seconds of this process, its reaped children and the moto process."""
    me, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime + h.moto_cpu()


def peak_per_second(times: Sequence[float]) -> int:
    """The most calls in any one-second window."""
    ordered, most, first = sorted(times), 0, 0
    for last, at in enumerate(ordered):
        while at - ordered[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def within_bucket(times: Sequence[float], per_second: float, burst: float) -> bool:
    """Whether calls at `times` all find a token in a bucket that starts full."""
    tokens, previous = burst, None
    for at in sorted(times):
        if previous is not None:
            tokens = min(burst, tokens + (at - previous) * per_second)
        previous = at
        if tokens < 1.0 - 1e-9:
            return False
        tokens -= 1.0
    return True


def at_once(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals (start, end) overlapping at any moment."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = count = 0
    for _, step in edges:
        count += step
        most = max(most, count)
    return most


def at_scale() -> bool:
    """Whether this harness can take the largest sweep on two cores: light emulated instances
    (sshd alone, no bootstrap or warm worker)."""
    return light_instances()


def default_sizes() -> list[int]:
    return list(SIZES) if at_scale() else list(SIZES[:-1])


NOT_AT_SCALE = (
    f"The {SIZES[-1]}-electron sweep was not run: this harness has no light instances, and "
    f"{SIZES[-1]} full emulated instances (sshd, bootstrap, warm worker) would not fit at once "
    "on this shared machine."
)


def timed_cloud_settings(quota: int) -> dict[str, Any]:
    """The vCPU quota, when this harness's timed cloud has one."""
    fields = {f.name for f in dataclasses.fields(TimedCloud)}
    return {"vcpu_quota": quota} if "vcpu_quota" in fields else {}


@contextmanager
def rate_limited(h: Harness, aws: AwsSeconds, quota: int) -> Iterator[TimedCloud]:
    """A fresh timed cloud with full buckets; the executor's clients (and pacer) are new."""
    h.boot.delays = Delays(boot=aws.boot)
    settings = timed_cloud_settings(quota)
    with (
        TimedCloud(h.moto.url, aws.timeline(), limits=RateLimits(), **settings) as cloud,
        patched_environ({"AWS_ENDPOINT_URL": cloud.url}, unset=()),
    ):
        yield cloud


async def sweep(h: Harness, n: int, tag: str) -> dict[str, Any]:
    """`n` electrons at once; each one's outcome and the batch's wall time."""
    from ec2_executor.ec2 import EC2Executor

    executors = [EC2Executor(**h.options(provision_timeout=PROVISION_TIMEOUT)) for _ in range(n)]
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(timed_execute(e, tag, node_id=i) for i, e in enumerate(executors)),
        return_exceptions=True,
    )
    wall = time.monotonic() - started
    await background_work()
    failures = [f"{type(o).__name__}: {o}"[:300] for o in outcomes if isinstance(o, BaseException)]
    totals = [o["total"] for o in outcomes if isinstance(o, dict)]
    return {"started": started, "wall": wall, "failures": failures, "totals": totals}


def measure_one(h: Harness, n: int, aws: AwsSeconds, quota: int) -> dict[str, Any]:
    before_load, busy_before, cpu_before = load(), cpu_busy(), own_cpu(h)
    known = {r.instance_id for r in h.boot.instances}
    with rate_limited(h, aws, quota) as cloud:
        outcome = asyncio.run(sweep(h, n, f"sweep-{n}"))
        calls = list(cloud.calls)
    h.settle()
    busy_after, cpu_after = cpu_busy(), own_cpu(h)
    records = [r for r in h.boot.instances if r.instance_id not in known]
    start = outcome["started"]
    left = {
        "stacks": live_stacks(h.moto),
        "instances": live_instances(h.moto),
        "security groups": [
            g["GroupName"]
            for g in h.moto.client("ec2").describe_security_groups()["SecurityGroups"]
            if g["GroupName"] != "default"
        ],
    }
    h.fresh_cloud()
    wall = outcome["wall"]
    return {
        "electrons": n,
        "load": [before_load, load()],
        "wall": wall,
        "completed": len(outcome["totals"]),
        "failures": outcome["failures"],
        "calls": [[c.service, c.action, c.at - start, c.answer] for c in calls],
        "instances": [
            [r.seen_running_at - start, (r.stopped_at or time.monotonic()) - start] for r in records
        ],
        "quota_vcpus": quota if timed_cloud_settings(quota) else None,
        "own_cpu": cpu_after - cpu_before,
        "machine_busy": (busy_after[0] - busy_before[0]) / max(1.0, busy_after[1] - busy_before[1]),
        "left": left,
    }


def measure(sizes: Sequence[int], aws: AwsSeconds, quota: int) -> list[dict[str, Any]]:
    results = []
    with harness(light=True) as h:
        for n in sizes:
            progress(f"sweep: {n} electron(s) at once (load {load()})")
            results.append(measure_one(h, n, aws, quota))
            found = results[-1]
            progress(
                f"sweep: {n}: {found['completed']} completed, {len(found['failures'])} failed "
                f"in {found['wall']:.1f} s"
            )
    return results


# --- the section ---------------------------------------------------------------------------


def _calls(result: dict[str, Any]) -> list[Call]:
    return [Call(*c) for c in result["calls"]]


def _by_action(result: dict[str, Any]) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for call in _calls(result):
        found.setdefault(call.action, []).append(call.at)
    return found


def _throttled(result: dict[str, Any]) -> Counter[str]:
    return Counter(c.action for c in _calls(result) if c.answer in THROTTLED)


def create_stack_timeline(result: dict[str, Any]) -> str:
    """CreateStack calls per `WINDOW` seconds, from the first electron's start."""
    times = _by_action(result).get("CreateStack", [])
    if not times:
        return "-"
    bins = Counter(int(t // WINDOW) for t in times)
    return " ".join(str(bins.get(i, 0)) for i in range(max(bins) + 1))


def pacing_floor(n: int, one: float) -> float:
    """One electron's wall time plus what the executor's CloudFormation pace makes the last
    CreateStack wait: the wall time no CPU could shorten."""
    from ec2_executor.cloud.pacing import CLOUDFORMATION

    return one + max(0.0, n - CLOUDFORMATION.burst) / CLOUDFORMATION.per_second


def bound_by(result: dict[str, Any], one: float) -> str:
    """CPU when the machine had no idle core left and the sweep took longer than the pacing
    alone makes it; else the pacing (or nothing: a sweep within its pacing floor)."""
    pace = pacing_floor(result["electrons"], one)
    saturated = result["machine_busy"] >= SATURATED
    if result["wall"] <= pace * 1.2:
        return "pacing" if result["electrons"] > 1 else "-"
    return "CPU (machine saturated)" if saturated else "neither (see the phases)"


def per_size_table(results: list[dict[str, Any]]) -> str:
    one = results[0]["wall"]
    cores = os.cpu_count() or 1
    rows: list[tuple[Any, ...]] = []

    def row(name: str, cell: Any) -> None:
        rows.append((name, *(cell(r) for r in results)))

    row("completed / failed", lambda r: f"{r['completed']} / {len(r['failures'])}")
    row("AWS calls per electron", lambda r: f"{len(r['calls']) / r['electrons']:.1f}")
    row("peak calls/s, all APIs", lambda r: peak_per_second([c[2] for c in r["calls"]]))
    row("throttled calls", lambda r: sum(_throttled(r).values()) or 0)
    row(f"CreateStack per {WINDOW:.0f} s", create_stack_timeline)
    row(
        "CreateStack within the bucket",
        lambda r: "yes" if _create_within(r) else "**no**",
    )
    row("wall time", lambda r: fmt_s(r["wall"]))
    row("wall / one electron's", lambda r: f"{r['wall'] / one:.1f}x")
    row(
        "pacing floor (one + CreateStacks past the burst)",
        lambda r: fmt_s(pacing_floor(r["electrons"], one)),
    )
    row(
        f"CPU of ours that ended (lower bound) / {cores} cores",
        lambda r: fmt_s(r["own_cpu"] / cores),
    )
    row("machine busy (all users)", lambda r: f"{r['machine_busy']:.0%}")
    row("wall time bound by", lambda r: bound_by(r, one))
    row(
        "instances at once / quota",
        lambda r: (
            f"{at_once(r['instances'])} / "
            + (f"{r['quota_vcpus']} vCPUs" if r["quota_vcpus"] else "none")
        ),
    )
    row(
        "launches the quota refused (then queued)",
        lambda r: sum(c.answer == QUOTA_REFUSED for c in _calls(r)),
    )
    row("left (stacks, instances, groups)", _left_text)
    row("load at start, end", lambda r: " → ".join(r["load"]))
    headers = ("Sweep", *(f"{r['electrons']} electron(s)" for r in results))
    return table(headers, rows)


def _create_within(result: dict[str, Any]) -> bool:
    limits = RateLimits()
    times = _by_action(result).get("CreateStack", [])
    thrown = _throttled(result).get("CreateStack", 0)
    return thrown == 0 and within_bucket(
        times, limits.cloudformation_per_second, limits.cloudformation_burst
    )


def _left_text(result: dict[str, Any]) -> str:
    counts = [len(v) for v in result["left"].values()]
    return "nothing" if not any(counts) else " / ".join(str(c) for c in counts)


def per_api_table(results: list[dict[str, Any]]) -> str:
    actions = sorted({c[1] for r in results for c in r["calls"]})
    rows = []
    for action in actions:
        cells = []
        for r in results:
            times = _by_action(r).get(action, [])
            thrown = _throttled(r).get(action, 0)
            cell = f"{len(times) / r['electrons']:.1f} / {peak_per_second(times)}"
            cells.append(cell + (f" ({thrown} throttled)" if thrown else ""))
        rows.append((action, *cells))
    headers = ("API: calls per electron / peak per s", *(str(r["electrons"]) for r in results))
    return table(headers, rows)


def section(results: list[dict[str, Any]], aws: AwsSeconds, scale: float) -> Section:
    sizes = [r["electrons"] for r in results]
    s = Section(
        "sweep",
        "Sweeps on the rate-limited timed cloud",
        f"python -m bench.sweep --sizes {','.join(map(str, sizes))} --scale {scale:g}",
    )
    by_size = {r["electrons"]: r for r in results}
    largest, one = by_size[max(sizes)], results[0]["wall"]
    if 16 in by_size and max(sizes) > 16:
        peaks = {n: peak_per_second([c[2] for c in by_size[n]["calls"]]) for n in (16, max(sizes))}
        ratio = peaks[max(sizes)] / max(1, peaks[16])
        s.targets.append(
            Target(
                f"peak calls/s at {max(sizes)} electrons / at 16",
                f"{ratio:.2f} ({peaks[max(sizes)]} vs {peaks[16]})",
                f"≤ {PEAK_GOAL:.0f}",
                ratio <= PEAK_GOAL,
            )
        )
    failed = sum(len(r["failures"]) for r in results)
    left = [f"{r['electrons']}: {_left_text(r)}" for r in results if _left_text(r) != "nothing"]
    s.targets.append(
        Target(
            "electrons failed, resources left",
            f"{failed} failed, {'; '.join(left) or 'nothing'} left",
            "none, nothing",
            failed == 0 and not left,
        )
    )
    s.targets.append(
        Target(
            "CreateStack within CloudFormation's bucket (5/s, burst 10)",
            ", ".join(f"{r['electrons']}: {'yes' if _create_within(r) else 'no'}" for r in results),
            "all",
            all(_create_within(r) for r in results),
        )
    )
    s.targets.append(
        Target(
            f"{largest['electrons']} electrons: wall time / one electron's",
            f"{largest['wall'] / one:.1f}x, bound by {bound_by(largest, one)}",
            "report",
            None,
        )
    )
    s.table = per_size_table(results) + "\n\n" + per_api_table(results)
    failures = [f"{r['electrons']}: {f}" for r in results for f in r["failures"][:3]]
    s.note = (
        f"Timeline (scale {scale:g}) from CreateStack: instance at {aws.instance_after:g} s, "
        f"sshd at {aws.boot:g} s, CREATE_COMPLETE at {aws.complete_after:g} s; a `lambda: 1` "
        "task. Calls are counted at the cloud, over the whole sweep (background deletions "
        "included); peaks are the most calls in any one-second window. The pacing floor is one "
        "electron's wall time plus the wait the executor's CloudFormation pace puts on the last "
        "CreateStack. A sweep is bound by this machine's CPU when it took longer than that "
        f"floor while the machine (all its users) was at least {SATURATED:.0%} busy: every "
        "emulated instance's sshd, bootstrap and task share its cores, where on AWS each "
        "brings its own. Our CPU counts this process, moto and the processes it has reaped, "
        f"so it is a lower bound. `provision_timeout` is {PROVISION_TIMEOUT} s here, for "
        "boots that queue for CPU."
        + ("" if SIZES[-1] in sizes or at_scale() else f" {NOT_AT_SCALE}")
        + (f"\n\nFailures (first ones): {'; '.join(failures)}" if failures else "")
    )
    s.data = {"scale": scale, "seconds": dataclasses.asdict(aws), "results": results}
    return s


def run(args: argparse.Namespace) -> Section:
    sizes = [int(n) for n in args.sizes.split(",")] if args.sizes else default_sizes()
    aws = AwsSeconds().scaled(args.scale)
    return section(measure(sizes, aws, args.quota), aws, args.scale)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        default="",
        help=f"electrons per sweep, comma-separated (default {','.join(map(str, SIZES))}; "
        f"without {SIZES[-1]} on a harness whose timed cloud has no vCPU quota)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="times AWS's published timeline")
    parser.add_argument("--quota", type=int, default=QUOTA_VCPUS, help="the cloud's vCPU quota")


if __name__ == "__main__":
    benchmark_main("sweep", run, __doc__ or "", arguments)
