"""Executor overhead per electron on the loopback harness: time per phase, AWS calls per phase,
and the total the executor adds around a trivial task (`lambda: 1`, shipped by value).

python -m bench.overhead [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Harness,
    Recorder,
    Section,
    Stat,
    Target,
    benchmark_main,
    calls_by_label,
    drain_background,
    fmt_s,
    harness,
    median,
    progress,
    table,
)

KEY = "overhead"
TITLE = "2. Executor overhead per electron (loopback harness)"
COMMAND = "python -m bench.overhead"
TARGET_SECONDS = 2.0
PHASE_ORDER = (
    "plan",
    "template",
    "create stack",
    "wait for stack",
    "wait for SSH",
    "bootstrap",
    "upload, run, fetch",
    "delete stack",
)

TRIVIAL = lambda: 1  # noqa: E731  (a lambda: cloudpickle always ships it by value)


async def timed_execute(executor: Any, dispatch_id: str) -> dict[str, float]:
    """`executor_support.execute` with each of setup, run and teardown timed."""
    executor._task_stdout, executor._task_stderr = io.StringIO(), io.StringIO()
    metadata = {"dispatch_id": dispatch_id, "node_id": 0, "results_dir": ""}
    times: dict[str, float] = {}
    started = time.monotonic()
    try:
        await executor.setup(metadata)
        times["setup"] = time.monotonic() - started
        t = time.monotonic()
        result = await executor.run(TRIVIAL, [], {}, metadata)
        times["run"] = time.monotonic() - t
    finally:
        t = time.monotonic()
        await executor.teardown(metadata)
        times["teardown"] = time.monotonic() - t
    times["total"] = time.monotonic() - started
    if result != 1:
        raise RuntimeError(f"the task returned {result!r}")
    return times


async def one_electron(h: Harness, recorder: Recorder, index: int) -> dict[str, Any]:
    from ec2_executor.ec2 import EC2Executor

    executor = EC2Executor(**h.options())
    known = {r.instance_id for r in h.boot.instances}
    recorder.reset()
    wall_offset = time.time() - time.monotonic()
    times = await timed_execute(executor, f"bench-overhead-{index}")
    recorder.label = "background, after teardown returned"
    times["background"] = await drain_background()
    snap = recorder.snapshot()
    spans = snap["phases"][0]
    new = [r for r in h.boot.instances if r.instance_id not in known]
    record = new[0] if new else None
    phase = {s.name: s for s in spans}
    times["phases"] = {s.name: s.seconds for s in spans}
    times["calls"] = snap["calls"]
    times["client_creation"] = sum(s.seconds for s in snap["client_creation"])
    connects = snap["connects"]
    times["connect_attempts"] = len(connects)
    ok = [span for span, outcome in connects if outcome == "ok"]
    times["handshake"] = ok[-1].seconds if ok else float("nan")
    times["executes"] = [(span.seconds, what) for span, what in snap["executes"]]
    times["round_trips"] = len(connects and ok) + len(snap["executes"])
    if record is not None and record.booted_at is not None and "create stack" in phase:
        ready_at = record.ready_file.stat().st_mtime - wall_offset
        times["harness"] = {
            # moto created the instance inside CreateStack; the harness polls every 0.2 s.
            "boot noticed after CreateStack returned": record.seen_running_at
            - phase["create stack"].end,
            "sshd started (harness)": record.booted_at - record.seen_running_at,
            "bootstrap script (harness, image venv fast path)": ready_at - record.booted_at,
            "SSH: sshd listening -> connected": phase["wait for SSH"].end - record.booted_at,
            "bootstrap: ready file -> phase end": phase["bootstrap"].end - ready_at,
        }
    return times


def remote_python_startup(h: Harness, repeats: int = 5) -> float:
    """What the instance spends in `upload, run, fetch` outside SSH: the runner's interpreter
    (the image venv's python, PYTHONPATH as in the SSH sessions) running `lambda: 1`."""
    import cloudpickle
    from harness import current_site_packages

    from ec2_executor.remote import RUNNER_SOURCE

    python = (h.image_venv / "bin" / "python").absolute()
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "payload.pkl"
        payload.write_bytes(cloudpickle.dumps((TRIVIAL, [], {})))
        env = {**os.environ, "PYTHONPATH": current_site_packages()}
        times = []
        for _ in range(repeats):
            t = time.monotonic()
            subprocess.run(
                [str(python), "-c", RUNNER_SOURCE, str(payload), f"{tmp}/result.pkl"],
                env=env,
                check=True,
                capture_output=True,
            )
            times.append(time.monotonic() - t)
    return median(times)


def session_cost(repeats: int = 5) -> dict[str, float]:
    """A fresh botocore session and its three clients (what each electron builds now) against
    the same clients from one session kept for the process."""
    from ec2_executor.aws import AWS
    from ec2_executor.options import Options

    options = Options()
    fresh, reused = [], []
    kept = AWS(options)
    for service in ("sts", "ec2", "cloudformation"):
        kept.client(service)
    for _ in range(repeats):
        t = time.monotonic()
        aws = AWS(options)
        for service in ("sts", "ec2", "cloudformation"):
            aws.client(service)
        fresh.append(time.monotonic() - t)
        t = time.monotonic()
        for service in ("sts", "ec2", "cloudformation"):
            kept.client(service)
        reused.append(time.monotonic() - t)
    return {"fresh": median(fresh), "reused": median(reused)}


def run(args: argparse.Namespace) -> Section:
    repeats = args.repeats or 7
    section = Section(KEY, TITLE, COMMAND)
    recorder = Recorder()
    with harness() as h:
        recorder.install()
        try:

            async def all_runs() -> tuple[dict[str, Any], list[dict[str, Any]]]:
                progress("overhead: warm-up electron (first in this process)")
                first = await one_electron(h, recorder, 0)
                await asyncio.to_thread(h.settle)
                runs = []
                for i in range(1, repeats + 1):
                    progress(f"overhead: electron {i}/{repeats}")
                    runs.append(await one_electron(h, recorder, i))
                    await asyncio.to_thread(h.settle)
                return first, runs

            first, runs = asyncio.run(all_runs())
        finally:
            recorder.uninstall()
        left = h.live_stacks()
        startup = remote_python_startup(h)
        sessions = session_cost()
        harness_setup = dict(h.setup_seconds)
    section.data = {
        "repeats": repeats,
        "first": _plain(first),
        "runs": [_plain(r) for r in runs],
        "remote_python_startup": startup,
        "session_cost": sessions,
        "stacks_left": len(left),
    }
    section.body = render(first, runs, startup, sessions, harness_setup, len(left))
    total = Stat.of([r["total"] for r in runs])
    section.data["total_median"] = total.median
    section.data["phase_medians"] = {
        name: median([r["phases"].get(name, 0.0) for r in runs]) for name in PHASE_ORDER
    }
    section.targets = [
        Target(
            "executor overhead per electron (setup+run+teardown − task)",
            f"{total.median:.2f} s median of {len(runs)} ({total.low:.2f}–{total.high:.2f})",
            f"< {TARGET_SECONDS:.0f} s",
            total.median < TARGET_SECONDS,
        ),
        Target(
            "no phase repeats an AWS call",
            _repeats_text(runs[-1]["calls"]),
            "each call once per phase",
            not _repeated(runs[-1]["calls"]),
        ),
    ]
    return section


def _repeated(calls: list[Any]) -> dict[str, dict[str, int]]:
    by = calls_by_label([c for c in calls if not c.label.startswith("background")])
    return {label: {op: n for op, n in ops.items() if n > 1} for label, ops in by.items() if any(
        n > 1 for n in ops.values()
    )}


def _repeats_text(calls: list[Any]) -> str:
    repeated = _repeated(calls)
    if not repeated:
        return "none repeated"
    return "; ".join(
        f"{label}: " + ", ".join(f"{op}×{n}" for op, n in ops.items())
        for label, ops in repeated.items()
    )


def _plain(run: dict[str, Any]) -> dict[str, Any]:
    out = dict(run)
    out["calls"] = [(c.label, c.operation, round(c.seconds, 4)) for c in run["calls"]]
    return out


def render(
    first: dict[str, Any],
    runs: list[dict[str, Any]],
    startup: float,
    sessions: dict[str, float],
    harness_setup: dict[str, float],
    stacks_left: int,
) -> str:
    n = len(runs)
    last_calls = runs[-1]["calls"]
    by_label = calls_by_label(last_calls)
    rows = []
    for name in PHASE_ORDER:
        values = [r["phases"][name] for r in runs if name in r["phases"]]
        if not values:
            continue
        aws_time = median(
            [sum(c.seconds for c in r["calls"] if c.label == name) for r in runs]
        )
        ops = by_label.get(name, {})
        ops_text = ", ".join(f"{op}" + (f" ×{k}" if k > 1 else "") for op, k in ops.items())
        rows.append(
            (
                name,
                fmt_s(median(values)),
                fmt_s(first["phases"].get(name, float("nan"))),
                ops_text or "–",
                fmt_s(aws_time) if ops else "–",
            )
        )
    between = [
        r["total"] - sum(r["phases"].values()) for r in runs
    ]
    rows.append(("(outside phases: executor object, keys, run/teardown glue)", fmt_s(median(between)),
                 fmt_s(first["total"] - sum(first["phases"].values())), "–", "–"))
    background_ops = calls_by_label(last_calls).get("background, after teardown returned", {})
    rows.append(
        (
            "(background deletion wait, after the electron completed)",
            fmt_s(median([r["background"] for r in runs])),
            fmt_s(first["background"]),
            ", ".join(f"{op}" + (f" ×{k}" if k > 1 else "") for op, k in background_ops.items())
            or "–",
            fmt_s(median([
                sum(c.seconds for c in r["calls"] if c.label.startswith("background"))
                for r in runs
            ])),
        )
    )
    total = Stat.of([r["total"] for r in runs])
    rows.append(("**total (setup+run+teardown)**", f"**{fmt_s(total.median)}**",
                 fmt_s(first["total"]), "", fmt_s(median([
                     sum(c.seconds for c in r["calls"] if not c.label.startswith("background"))
                     for r in runs]))))
    phase_table = table(
        ("Phase", f"Median of {n}", "First electron in the process", "AWS calls in the phase",
         "of which AWS calls (moto)"),
        rows,
    )
    parts = Stat.of([r["setup"] for r in runs]), Stat.of([r["run"] for r in runs]), Stat.of(
        [r["teardown"] for r in runs]
    )
    harness_rows = []
    keys = list(runs[-1].get("harness", {}))
    for key in keys:
        harness_rows.append((key, fmt_s(median([r["harness"][key] for r in runs if "harness" in r]))))
    harness_table = table(("Inside the phases (from the harness's own clocks)", "Median"), harness_rows)
    handshake = median([r["handshake"] for r in runs])
    attempts = median([r["connect_attempts"] for r in runs])
    executes = runs[-1]["executes"]
    client_creation = median([r["client_creation"] for r in runs])
    setup_text = ", ".join(f"{k} {fmt_s(v)}" for k, v in harness_setup.items())
    return f"""
Setup: a moto server in this process (threaded), a loopback VPC/subnet, emulated boots with a
real `sshd` on 127.0.2.x (`EmulatedBoot(poll_interval=0.2, image_venv=build_image_venv(...),
bootstrap_env={{"EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1"}}, python_path=current_site_packages())`),
a warm template cache, and `EC2Executor(**harness_options(...))` driven directly (setup, run,
teardown, as `AsyncBaseExecutor.execute` does, without a Covalent server) on one event loop. One
warm-up electron, then {n} electrons one after the other (the harness is left to stop each
instance before the next). The task is `lambda: 1`: its own time is well under a millisecond, so
the overhead is the wall time. Phase times come from `Electron.phases` (a recording subclass of
`ec2_executor.phases.Phases` patched into `ec2_executor.electron`); AWS calls are counted and
timed with botocore's `before-call`/`after-call` events on every client the executor makes,
labelled with the phase in progress. Harness start-up (not measured): {setup_text}.

Setup / run / teardown medians: {parts[0].s()} / {parts[1].s()} / {parts[2].s()}.

{phase_table}

The AWS column is the wall time of the botocore calls (signing, loopback HTTP, moto, parsing):
with moto this is all of *create stack* (moto's `CreateStack` builds the security group and
runs the instance synchronously inside the call), all of *wait for stack* (the first poll
already sees `CREATE_COMPLETE`) and all of *delete stack* (`DeleteStack` is synchronous too).
moto runs in this process, so its CPU time also competes with the executor for the GIL.

{harness_table}

- SSH: {attempts:.0f} connection attempt(s) per electron (the first ones are refused while
  the harness starts sshd); the successful connect (TCP, key exchange, auth) takes
  {fmt_s(handshake)}. SSH round trips per electron: 1 connection + {len(executes)} commands
  ({", ".join(f"{fmt_s(s)}" for s, _ in executes)}).
- The task's interpreter on the "instance" (`python -c <runner>` with cloudpickle, the
  image venv, `lambda: 1`) takes {fmt_s(startup)} of *upload, run, fetch* by itself.
- boto3: the executor builds a new botocore session and three clients (STS, EC2,
  CloudFormation) per electron: {fmt_s(client_creation)} per electron, measured inside the phases.
  Side by side in this run: a fresh session + 3 clients {fmt_s(sessions["fresh"])}, the same
  3 clients from a session kept for the process {fmt_s(sessions["reused"])}.
- Stacks left after the run: {stacks_left}.
"""


def main() -> None:
    benchmark_main(KEY, run, __doc__ or "")


if __name__ == "__main__":
    main()
    sys.exit(0)
