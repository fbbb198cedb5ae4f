"""Cold start on a cloud that takes its time: dispatch to task start, as a ratio to the floor.

python -m bench.cold_start [--repeats 2] [--scale 1.0] [--json FILE]

The timed cloud (tests/harness/timed_cloud.py) replays AWS's timeline for one stack, the
published figures (`AwsSeconds`) scaled by `--scale`: the instance launched 5 s into the stack,
sshd answering at 20 s, CREATE_COMPLETE at 40 s, and on a stock image the bootstrap's installs
50 s more. The floor is CreateStack to sshd answering, read per electron; each path's time runs
from the start of setup to the task's first instruction on the instance (the task returns
`time.monotonic()`, one clock for the whole machine). Paths, side by side, in turn: on a stock
image, waiting for CREATE_COMPLETE with the earlier probes (10 s connect timeout, up to 3 s
between probes), connecting once the instance has an address, and the short probes as well;
then the product's defaults on an image `ec2-executor bake` made on the harness; then a warm
instance (`keep_warm_minutes`), the second electron of its kind.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import EmulatedBoot, MotoServer, create_loopback_network, patched_environ
from harness.boot import BootedInstance, Delays, Image
from harness.timed_cloud import AwsSeconds, TimedCloud
from integration.executor_support import execute, harness_options

from bench.common import Section, Target, benchmark_main, median, progress, scratch, table
from ec2_executor.cli.bake import bake
from ec2_executor.cloud.stacks import stack_name
from ec2_executor.ec2 import EC2Executor
from ec2_executor.electron import Electron, Host, Launched, Pace, launch, new_host, run_task
from ec2_executor.options import build
from ec2_executor.warm.pool import retire_all_idle

GOAL = 1.3
"""The baked path within 1.3 times the floor (issue 15)."""
STOCK = {"use_baked_image": False}


@dataclass(frozen=True)
class ColdPath:
    pace: Pace
    options: dict[str, Any] = field(default_factory=dict)


PATHS = {
    "stock image, wait for CREATE_COMPLETE, earlier probes": ColdPath(
        Pace(connect_before_complete=False, probe_timeout=10.0, probe_ceiling=3.0), STOCK
    ),
    "stock image, + SSH before CREATE_COMPLETE": ColdPath(
        Pace(probe_timeout=10.0, probe_ceiling=3.0), STOCK
    ),
    "stock image, + short probes": ColdPath(Pace(), STOCK),
    "+ baked image (the defaults)": ColdPath(Pace()),
}
BAKED = "+ baked image (the defaults)"
WARM = "warm instance (keep_warm_minutes 5), the second electron"


@dataclass
class Run:
    took: float
    """Setup's start to the task's start."""
    floor: float
    """CreateStack to sshd answering, for the instance the electron ran on."""
    marks: dict[str, float] = field(default_factory=dict)
    """Seconds from setup's start to each step (baked path)."""


def _mtime(path: Path) -> float:
    """A file's modification time on the monotonic clock, NaN when it is missing."""
    try:
        return path.stat().st_mtime - (time.time() - time.monotonic())
    except FileNotFoundError:
        return float("nan")


def _new_instance(boot: EmulatedBoot, before: set[str]) -> BootedInstance:
    (record,) = [r for r in boot.instances if r.instance_id not in before]
    return record


async def one_electron(
    options: dict[str, Any], pace: Pace, dispatch: str, cloud: TimedCloud, boot: EmulatedBoot
) -> Run:
    electron = Electron(build(options), {"dispatch_id": dispatch, "node_id": 0}, pace=pace)
    before = {r.instance_id for r in boot.instances}
    started = time.monotonic()
    launched: Launched | None = None
    host: Host | None = None
    try:
        launched = await launch(electron)
        host = new_host(electron, launched)
        outcome = await run_task(electron, launched, host, (time.monotonic, [], {}))
    finally:
        await electron.destroy(launched, host)
    task_start = float(outcome.result)
    record = _new_instance(boot, before)
    created = cloud.created_at(stack_name(dispatch, 0))
    assert created is not None and record.booted_at is not None
    seconds = electron.phases.seconds
    client = ("plan", "template", "create stack", "wait for stack", "wait for SSH")
    marks = {
        "plan": seconds["plan"],
        "template": seconds["plan"] + seconds["template"],
        "CreateStack received": created - started,
        "create call returned": sum(seconds[p] for p in client[:3]),
        "instance address known": sum(seconds[p] for p in client[:4]),
        "sshd answering": record.booted_at - started,
        "bootstrap started": (record.bootstrap_started_at or float("nan")) - started,
        "worker has imported covalent": _mtime(record.prefix / "worker" / "pid") - started,
        "ready": _mtime(record.ready_file) - started,
        "SSH connected": sum(seconds[p] for p in client),
        "task started": task_start - started,
    }
    return Run(took=task_start - started, floor=record.booted_at - created, marks=marks)


async def warm_electron(
    options: dict[str, Any], dispatch: str, cloud: TimedCloud, boot: EmulatedBoot
) -> Run:
    """A first electron leaves its instance warm; the second one's dispatch to task start."""
    kept = {**options, "keep_warm_minutes": 5}
    before = {r.instance_id for r in boot.instances}
    await execute(EC2Executor(**kept), time.monotonic, [], {}, dispatch_id=dispatch)
    record = _new_instance(boot, before)
    created = cloud.created_at(stack_name(dispatch, 0))
    assert created is not None and record.booted_at is not None
    started = time.monotonic()
    task_start = await execute(
        EC2Executor(**kept), time.monotonic, [], {}, dispatch_id=dispatch, node_id=1
    )
    took = float(task_start) - started
    assert len(boot.instances) == len(before) + 1, "the second electron got an instance of its own"
    await retire_all_idle()
    return Run(took=took, floor=record.booted_at - created)


@contextmanager
def timed_harness(aws: AwsSeconds) -> Iterator[tuple[TimedCloud, EmulatedBoot, dict[str, Any]]]:
    """moto behind the timed cloud, emulated boots with `aws`'s delays, and a baked image
    (made by `bake` before the delays apply: its own time is not measured)."""
    base = scratch("cold-start")
    moto = MotoServer.start()
    try:
        with patched_environ(moto.environment(base / "aws")):
            network = create_loopback_network(moto.client("ec2"))
            image = Image.local(base / "image")
            boot = EmulatedBoot(moto.url, image=image, base_dir=base / "instances")
            options = harness_options(network.subnet_id, str(base / "cache"))
            with boot:
                progress("baking an image on the harness")
                baked = asyncio.run(bake(build(options)))
                progress(f"baked {baked.image.image_id}")
                boot.delays = Delays(boot=aws.boot, install=aws.install)
                with (
                    TimedCloud(moto.url, aws.timeline()) as cloud,
                    patched_environ({"AWS_ENDPOINT_URL": cloud.url}, unset=()),
                ):
                    yield cloud, boot, options
    finally:
        moto.stop()


def measure(repeats: int, aws: AwsSeconds) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {name: [] for name in (*PATHS, WARM)}
    with timed_harness(aws) as (cloud, boot, options):
        for i in range(repeats):
            for name, path in PATHS.items():
                progress(f"repeat {i + 1}/{repeats}: {name}")
                dispatch = f"cold-{i}-{list(PATHS).index(name)}"
                run = one_electron({**options, **path.options}, path.pace, dispatch, cloud, boot)
                runs[name].append(asyncio.run(run))
            progress(f"repeat {i + 1}/{repeats}: {WARM}")
            runs[WARM].append(asyncio.run(warm_electron(options, f"warm-{i}", cloud, boot)))
    return runs


def ratio_text(runs: list[Run]) -> str:
    ratios = sorted(r.took / r.floor for r in runs)
    digits = 2 if ratios[0] >= 0.1 else 3  # a warm instance's ratio is a few thousandths
    return f"{median(ratios):.{digits}f} ({ratios[0]:.{digits}f}-{ratios[-1]:.{digits}f})"


def breakdown(runs: list[Run]) -> str:
    """Where the baked path's time goes: each step's median time from setup's start."""
    rows = []
    for mark in runs[0].marks:
        at = median([r.marks[mark] for r in runs])
        rows.append((mark, f"{at:.2f} s"))
    return table(("baked path: step", "at (from setup's start, median)"), rows)


def run(args: argparse.Namespace) -> Section:
    repeats = args.repeats or 2
    aws = AwsSeconds().scaled(args.scale)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = measure(repeats, aws)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    baked = median([r.took / r.floor for r in runs[BAKED]])
    above = median([r.took - r.floor for r in runs[BAKED]])
    floor = median([r.floor for r in runs[BAKED]])
    section = Section(
        "cold_start",
        "Cold start on a cloud that takes its time",
        f"python -m bench.cold_start --repeats {repeats} --scale {args.scale:g}",
    )
    section.targets = [
        Target(
            "baked path: dispatch to task start / floor",
            f"{baked:.2f} ({above:.2f} s above a {floor:.2f} s floor)",
            f"<= {GOAL}",
            baked <= GOAL,
        )
    ]
    section.table = table(
        (
            "Path",
            "dispatch to task start",
            "floor (stack created to SSH)",
            "above the floor",
            "ratio to the floor",
        ),
        [
            (
                name,
                f"{median([r.took for r in found]):.2f} s",
                f"{median([r.floor for r in found]):.2f} s",
                f"{median([r.took - r.floor for r in found]):.2f} s",
                ratio_text(found),
            )
            for name, found in runs.items()
        ],
    )
    section.note = (
        f"Timeline (scale {args.scale:g}), from CreateStack: instance launched at "
        f"{aws.instance_after:.2f} s, sshd answering at {aws.boot:.2f} s, CREATE_COMPLETE at "
        f"{aws.complete_after:.2f} s; a stock image's installs {aws.install:.2f} s after sshd. "
        f"Medians of {repeats}, ratios per electron (min-max). Load average {load} at the "
        f"start, {load_after} at the end. The warm row's floor is that of the stack its first "
        f"electron created.\n\n" + breakdown(runs[BAKED])
    )
    section.data = {
        "scale": args.scale,
        "seconds": dataclasses.asdict(aws),
        "load": [load, load_after],
        "runs": {name: [dataclasses.asdict(r) for r in found] for name, found in runs.items()},
    }
    return section


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", type=float, default=1.0, help="times the published figures")


if __name__ == "__main__":
    benchmark_main("cold_start", run, __doc__ or "", arguments)
