"""Cold start on a cloud that takes its time: dispatch to task start, as a ratio to the floor.

python -m bench.cold_start [--repeats 2] [--scale 1.0] [--json FILE]

The timed cloud (tests/harness/timed_cloud.py) replays AWS's timeline for one stack, scaled by
`--scale`: the instance launched 5 s into the stack, sshd answering at 20 s, the stack
CREATE_COMPLETE at 40 s. The floor is CreateStack to sshd answering, read per electron; each
path's time is from the start of setup to the task's first instruction on the instance (the
task returns `time.monotonic()`, one clock for the whole machine). Paths, side by side, in
turn: waiting for CREATE_COMPLETE with the earlier probes (10 s connect timeout, up to 3 s
between probes), connecting once the instance has an address, and the short probes as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import bench  # noqa: F401  (puts tests/ on the path for the harness)
from ec2_executor.electron import Electron, Pace, launch, run_task
from ec2_executor.options import build
from ec2_executor.stack import stack_name

AWS_SECONDS = {"instance_after": 5.0, "boot": 20.0, "complete_after": 40.0}
PATHS = {
    "wait for CREATE_COMPLETE, earlier probes": Pace(
        connect_before_complete=False, probe_timeout=10.0, probe_ceiling=3.0
    ),
    "+ SSH before CREATE_COMPLETE": Pace(probe_timeout=10.0, probe_ceiling=3.0),
    "+ short probes (the code)": Pace(),
}


async def _never() -> bool:
    return False


async def one_electron(options: dict[str, Any], pace: Pace, dispatch_id: str) -> float:
    """Seconds from setup's start to the task's start on the instance."""
    electron = Electron(build(options), {"dispatch_id": dispatch_id, "node_id": 0}, pace=pace)
    started = time.monotonic()
    try:
        launched = await launch(electron)
        outcome = await run_task(
            electron, launched, (time.monotonic, [], {}), cancel_requested=_never
        )
    finally:
        await electron.destroy()
    return float(outcome.result) - started


def measure(repeats: int, scale: float) -> dict[str, Any]:
    from harness import EmulatedBoot, MotoServer, create_loopback_network, patched_environ
    from harness.boot import build_image_venv, current_site_packages
    from harness.timed_cloud import TimedCloud, Timeline
    from integration.executor_support import harness_options

    seconds = {k: v * scale for k, v in AWS_SECONDS.items()}
    timeline = Timeline(
        instance_after=seconds["instance_after"], complete_after=seconds["complete_after"]
    )
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in PATHS}
    with tempfile.TemporaryDirectory(prefix="ec2-executor-bench-") as tmp:
        base = Path(tmp)
        moto = MotoServer.start()
        try:
            with patched_environ(moto.environment(base / "aws")):
                network = create_loopback_network(moto.client("ec2"))
                boot = EmulatedBoot(
                    moto.url,
                    python_path=current_site_packages(),
                    bootstrap_env={"EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1"},
                    image_venv=build_image_venv(base / "image"),
                    base_dir=base / "instances",
                    boot_delay=seconds["boot"],
                )
                with (
                    boot,
                    TimedCloud(moto.url, timeline) as cloud,
                    patched_environ({"AWS_ENDPOINT_URL": cloud.url}, unset=()),
                ):
                    options = harness_options(network.subnet_id, str(base / "cache"))
                    for i in range(repeats):
                        for name, pace in PATHS.items():
                            dispatch = f"cold-{i}-{len(runs[name])}-{abs(hash(name)) % 997}"
                            took = asyncio.run(one_electron(options, pace, dispatch))
                            created = cloud.created_at(stack_name(dispatch, 0))
                            booted = [r.booted_at for r in boot.instances][-1]
                            assert created is not None and booted is not None
                            runs[name].append((took, booted - created))
        finally:
            moto.stop()
    return {"scale": scale, "repeats": repeats, "seconds": seconds, "runs": runs}


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Timeline (scale {result['scale']}), from CreateStack: instance launched at "
        f"{result['seconds']['instance_after']:.2f} s, sshd answering at "
        f"{result['seconds']['boot']:.2f} s, CREATE_COMPLETE at "
        f"{result['seconds']['complete_after']:.2f} s; medians of {result['repeats']}.",
        "",
        "| Path | dispatch to task start | floor (stack created to SSH) | ratio to the floor |",
        "|---|---|---|---|",
    ]
    for name, runs in result["runs"].items():
        took = statistics.median(t for t, _ in runs)
        floor = statistics.median(f for _, f in runs)
        ratios = sorted(t / f for t, f in runs)
        lines.append(
            f"| {name} | {took:.2f} s | {floor:.2f} s | {statistics.median(ratios):.2f} "
            f"({ratios[0]:.2f}-{ratios[-1]:.2f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.repeats, args.scale)
    if args.json:
        args.json.write_text(json.dumps(result))
    print(render(result))


if __name__ == "__main__":
    main()
