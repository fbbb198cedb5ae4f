"""Executor overhead per electron on the loopback harness: time per phase, AWS calls per phase,
and the total the executor adds around a trivial task (`lambda: 1`, shipped by value).

python -m bench.overhead [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
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
    calls_by_label,
    drain_background,
    fmt_s,
    harness,
    median,
    progress,
    table,
    timed_execute,
)
from bench.fixes import Fix

KEY = "overhead"
TITLE = "2. Executor overhead per electron (loopback harness)"
COMMAND = "python -m bench.overhead"
TARGET_SECONDS = 2.0

AS_IS = "as in the code"


def _proposed_label(found: list[Fix]) -> str:
    return "what-if: " + " + ".join(f.name for f in found if not f.in_code)


def variant_patches(found: list[Fix]) -> dict[str, list[Callable[[], Any]]]:
    """The code as it is; with every fix it lacks patched in (the "proposed" variant); and,
    for each fix it has, that fix patched out on top of the proposed variant, so that a fix the
    code lacks (the bootstrap wait's tick, say) does not blur what the others are worth."""
    pending = [f.apply for f in found if not f.in_code]
    variants: dict[str, list[Callable[[], Any]]] = {AS_IS: []}
    if pending:
        variants[_proposed_label(found)] = list(pending)
    for fix in found:
        if fix.in_code and fix.revert is not None:
            label = fix.label + (", with the what-ifs" if pending else "")
            variants[label] = [*pending, fix.revert]
    return variants


def comparison(found: list[Fix], fix: Fix) -> tuple[str, str] | None:
    """(without the fix, with it): the two variants whose difference is this fix."""
    proposed = _proposed_label(found) if any(not f.in_code for f in found) else AS_IS
    if not fix.in_code:
        return (AS_IS, proposed)
    if fix.revert is None:
        return None
    return (fix.label + (", with the what-ifs" if proposed != AS_IS else ""), proposed)


async def one_electron(h: Harness, recorder: Recorder, index: int) -> dict[str, Any]:
    from ec2_executor.ec2 import EC2Executor

    executor = EC2Executor(**h.options())
    known = {r.instance_id for r in h.boot.instances}
    recorder.reset()
    wall_offset = time.time() - time.monotonic()
    result, times = await timed_execute(
        executor, TRIVIAL, [], dispatch_id=f"bench-overhead-{index}"
    )
    if result != 1:
        raise RuntimeError(f"the task returned {result!r}")
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
            "wait for SSH: from sshd listening to connected": phase["wait for SSH"].end
            - record.booted_at,
            "bootstrap phase: waiting for the script to finish": max(
                0.0, ready_at - phase["bootstrap"].start
            ),
        }
    return times


def remote_python_startup(h: Harness, repeats: int = 5) -> float:
    """What a fresh interpreter (the command's fallback when no warm worker waits) costs: the
    image venv's python, PYTHONPATH as in the SSH sessions, running `lambda: 1`."""
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
    """A new boto3 session and its three clients (what an electron builds when nothing is
    shared) against the same three clients from an `AWS` object that already has them."""
    from ec2_executor import aws as aws_module
    from ec2_executor.options import Options

    options = Options()
    services = ("sts", "ec2", "cloudformation")
    kept = aws_module.AWS(options)
    for service in services:
        kept.client(service)
    fresh, reused = [], []
    for _ in range(repeats):
        t = time.monotonic()
        session = aws_module._session(options)
        for service in services:
            session.client(service, region_name=options.region, config=aws_module.CLIENT_CONFIG)
        fresh.append(time.monotonic() - t)
        t = time.monotonic()
        for service in services:
            kept.client(service)
        reused.append(time.monotonic() - t)
    return {"fresh": median(fresh), "reused": median(reused)}


def run(args: argparse.Namespace) -> Section:
    repeats = args.repeats or 7
    section = Section(KEY, TITLE, COMMAND)
    recorder = Recorder()
    with harness(moto_in_process=args.moto_in_process) as h:
        recorder.install()
        try:

            async def all_runs() -> tuple[dict[str, Any], list[Fix], dict[str, list[Any]]]:
                progress("overhead: warm-up electron (first in this process)")
                first = await one_electron(h, recorder, 0)
                await asyncio.to_thread(h.fresh_cloud)
                found = fixes.detect()
                switches = variant_patches(found)
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in switches}
                for i in range(1, repeats + 1):
                    # Every variant once per repeat; the order reverses every other repeat.
                    names = list(switches) if i % 2 else list(reversed(switches))
                    for number, name in enumerate(names):
                        progress(f"overhead: electron {i}/{repeats}, {name}")
                        with contextlib.ExitStack() as patches:
                            for patch in switches[name]:
                                patches.enter_context(patch())
                            runs[name].append(await one_electron(h, recorder, 100 * number + i))
                        await asyncio.to_thread(h.fresh_cloud)
                return first, found, runs

            first, found, variants = asyncio.run(all_runs())
            runs = variants[AS_IS]
        finally:
            recorder.uninstall()
        left = h.stacks_left()
        startup = remote_python_startup(h)
        sessions = session_cost()
        harness_setup = dict(h.setup_seconds)
    section.data = {
        "repeats": repeats,
        "first": _plain(first),
        "runs": [_plain(r) for r in runs],
        "variants": {name: [_plain(r) for r in got] for name, got in variants.items()},
        "fixes": [
            {
                "key": f.key,
                "name": f.name,
                "where": f.where,
                "in_code": f.in_code,
                "label": f.label,
                "compare": comparison(found, f),
            }
            for f in found
        ],
        "bootstrap_tick": fixes.bootstrap_tick(),
        "remote_python_startup": startup,
        "session_cost": sessions,
        "stacks_left": left,
    }
    section.body = render(
        args.moto_in_process, first, variants, found, startup, sessions, harness_setup, left
    )
    total = Stat.of([r["total"] for r in runs])
    section.data["total_median"] = total.median
    section.data["phase_medians"] = {
        name: median([r["phases"].get(name, 0.0) for r in runs]) for name in PHASES
    }
    section.data["variant_total_medians"] = {
        name: median([r["total"] for r in got]) for name, got in variants.items()
    }
    section.data["variant_plan_medians"] = {
        name: median([r["phases"].get("plan", 0.0) for r in got]) for name, got in variants.items()
    }
    section.data["slow_bootstrap_waits"] = {
        name: sum(1 for r in got if r["phases"].get("bootstrap", 0.0) > 0.3)
        for name, got in variants.items()
    }
    section.targets = [
        Target(
            "executor overhead per electron (setup+run+teardown - task)",
            f"{total.median:.2f} s median of {len(runs)} ({total.low:.2f}-{total.high:.2f})",
            f"< {TARGET_SECONDS:.0f} s",
            total.median < TARGET_SECONDS,
        ),
        Target(
            "no AWS call made twice for one electron (polls aside)",
            _repeats_text(runs[-1]["calls"]),
            "each call once",
            not _repeated(runs[-1]["calls"]),
        ),
    ]
    return section


POLLS = frozenset({"DescribeStacks", "DescribeStackEvents"})
"""The waits' polls: repeating them is their job (on moto each runs once anyway)."""


def _repeated(calls: list[Any]) -> dict[str, int]:
    """Calls other than polls made more than once for one electron (background included)."""
    counts: dict[str, list[str]] = {}
    for call in calls:
        if call.operation not in POLLS:
            counts.setdefault(call.operation, []).append(call.label)
    return {op: len(labels) for op, labels in counts.items() if len(labels) > 1}


def _repeats_text(calls: list[Any]) -> str:
    repeated = _repeated(calls)
    if not repeated:
        return "none repeated"
    where: dict[str, list[str]] = {}
    for call in calls:
        if call.operation in repeated:
            where.setdefault(call.operation, []).append(call.label)
    return "; ".join(f"{op} x{n} ({' + '.join(where[op])})" for op, n in repeated.items())


def _plain(run: dict[str, Any]) -> dict[str, Any]:
    out = dict(run)
    out["calls"] = [(c.label, c.operation, round(c.seconds, 4)) for c in run["calls"]]
    return out


def render(
    moto_in_process: bool,
    first: dict[str, Any],
    variants: dict[str, list[dict[str, Any]]],
    found: list[Fix],
    startup: float,
    sessions: dict[str, float],
    harness_setup: dict[str, float],
    stacks_left: int,
) -> str:
    runs = variants[AS_IS]
    whatifs = [name for name in variants if name != AS_IS]
    n = len(runs)
    last_calls = runs[-1]["calls"]
    by_label = calls_by_label(last_calls)
    rows = []
    for name in PHASES:
        values = [r["phases"][name] for r in runs if name in r["phases"]]
        if not values:
            continue
        aws_time = median([sum(c.seconds for c in r["calls"] if c.label == name) for r in runs])
        ops = by_label.get(name, {})
        ops_text = ", ".join(f"{op}" + (f" x{k}" if k > 1 else "") for op, k in ops.items())
        rows.append(
            (
                name,
                fmt_s(median(values)),
                fmt_s(first["phases"].get(name, float("nan"))),
                ops_text or "-",
                fmt_s(aws_time) if ops else "-",
                *(
                    fmt_s(median([r["phases"].get(name, float("nan")) for r in variants[w]]))
                    for w in whatifs
                ),
            )
        )

    def outside(r: dict[str, Any]) -> float:
        return float(r["total"] - sum(r["phases"].values()))

    rows.append(
        (
            "(outside phases: executor object, keys, run/teardown glue)",
            fmt_s(median([outside(r) for r in runs])),
            fmt_s(outside(first)),
            "-",
            "-",
            *(fmt_s(median([outside(r) for r in variants[w]])) for w in whatifs),
        )
    )
    background_ops = calls_by_label(last_calls).get("background, after teardown returned", {})
    rows.append(
        (
            "(background deletion wait, after the electron completed)",
            fmt_s(median([r["background"] for r in runs])),
            fmt_s(first["background"]),
            ", ".join(f"{op}" + (f" x{k}" if k > 1 else "") for op, k in background_ops.items())
            or "-",
            fmt_s(
                median(
                    [
                        sum(c.seconds for c in r["calls"] if c.label.startswith("background"))
                        for r in runs
                    ]
                )
            ),
            *(fmt_s(median([r["background"] for r in variants[w]])) for w in whatifs),
        )
    )
    total = Stat.of([r["total"] for r in runs])
    rows.append(
        (
            "**total (setup+run+teardown)**",
            f"**{fmt_s(total.median)}**",
            fmt_s(first["total"]),
            "",
            fmt_s(
                median(
                    [
                        sum(c.seconds for c in r["calls"] if not c.label.startswith("background"))
                        for r in runs
                    ]
                )
            ),
            *(f"**{fmt_s(median([r['total'] for r in variants[w]]))}**" for w in whatifs),
        )
    )
    phase_table = table(
        (
            "Phase",
            f"Median of {n}",
            "First electron in the process",
            "AWS calls in the phase",
            "of which AWS calls (moto)",
            *whatifs,
        ),
        rows,
    )
    parts = (
        Stat.of([r["setup"] for r in runs]),
        Stat.of([r["run"] for r in runs]),
        Stat.of([r["teardown"] for r in runs]),
    )
    harness_rows = []
    keys = list(runs[-1].get("harness", {}))
    for key in keys:
        harness_rows.append(
            (key, fmt_s(median([r["harness"][key] for r in runs if "harness" in r])))
        )
    harness_table = table(
        ("Inside the phases (from the harness's own clocks)", "Median"), harness_rows
    )
    handshake = median([r["handshake"] for r in runs])
    attempts = median([r["connect_attempts"] for r in runs])
    executes = runs[-1]["executes"]
    client_creation = median([r["client_creation"] for r in runs])
    slow = {
        name: sum(1 for r in got if r["phases"].get("bootstrap", 0.0) > 0.3)
        for name, got in variants.items()
    }
    fix_text = "; ".join(
        f"{f.name} ({f.where}): {'in the code' if f.in_code else 'not in the code'}" for f in found
    )
    setup_text = ", ".join(f"{k} {fmt_s(v)}" for k, v in harness_setup.items())
    where = (
        "in this process, as the tests run it"
        if moto_in_process
        else "`python -m moto.server` in its own process, so that its CPU time does not compete "
        "with the executor for this process's GIL (`--moto-in-process` runs it as the tests do)"
    )
    gil = (
        "moto runs in this process here, so its CPU time also competes with the executor for "
        "the GIL."
        if moto_in_process
        else "The emulated boot (a polling thread) still runs in this process."
    )
    return f"""
Setup: a moto server ({where}), a loopback VPC/subnet, emulated boots with a
real `sshd` on 127.0.2.x (`EmulatedBoot(poll_interval=0.2, image_venv=build_image_venv(...),
bootstrap_env={{"EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1"}}, python_path=current_site_packages())`),
a warm template cache, and `EC2Executor(**harness_options(...))` driven directly (setup, run,
teardown, as `AsyncBaseExecutor.execute` does, without a Covalent server) on one event loop. One
warm-up electron, then {n} electrons one after the other (between two electrons the harness
stops the instance, then moto is emptied and the loopback network made again, so that the
harness's own polling does not grow over the run). The task is `lambda: 1`: its own time is
well under a millisecond, so the overhead is the wall time. Phase times come from
`Electron.phases` (a recording subclass of `ec2_executor.phases.Phases` patched into
`ec2_executor.electron`); AWS calls are counted and timed with botocore's
`before-call`/`after-call` events on every client the executor makes, labelled with the phase
in progress. Harness start-up (not measured): {setup_text}.

Setup / run / teardown medians: {parts[0].s()} / {parts[1].s()} / {parts[2].s()}.

{phase_table}

The AWS column is the wall time of the botocore calls (signing, loopback HTTP, moto, parsing):
with moto this is all of *create stack* (moto's `CreateStack` builds the security group and
runs the instance synchronously inside the call), all of *wait for stack* (the first poll
already sees `CREATE_COMPLETE`) and all of *delete stack* (`DeleteStack` is synchronous too).
{gil}

{harness_table}

- SSH: {attempts:.0f} connection attempt(s) per electron (the first ones are refused while
  the harness starts sshd); the successful connect (TCP, key exchange, auth) takes
  {fmt_s(handshake)}. SSH round trips per electron: 1 connection + {len(executes)} commands
  ({", ".join(f"{fmt_s(s)}" for s, _ in executes)}).
- The task runs in the warm worker the bootstrap started (runner.py `--serve`); a fresh
  interpreter, the command's fallback when no worker waits (`python -c <runner>` with
  cloudpickle, the image venv, `lambda: 1`), would take {fmt_s(startup)} by itself. The
  *bootstrap* phase is the wait for the ready file, measured on the instance inside the task's
  one command and split off *upload, run, fetch*.
- boto3: time spent building sessions and clients inside an electron's phases (median):
  {fmt_s(client_creation)} (nothing once the process has them, when the code shares them).
  Side by side in this run: a new session + 3 clients {fmt_s(sessions["fresh"])}, the same
  3 clients from an `AWS` object that has them {fmt_s(sessions["reused"])}.
- The last columns: the same electron with fixes switched from the benchmark
  (`bench/fixes.py`), alternating with the code as it is, {n} runs each. *what-if*: the fixes
  the code lacks, patched in; *reverted, with the what-ifs*: on top of those, one fix the code
  has patched out (the code's earlier behaviour), so that each fix is measured against the
  same base. The fixes: {fix_text}. Electrons whose *bootstrap* phase took over 0.3 s (they
  reached the instance before its bootstrap had finished and waited for the wait loop's next
  tick):
  {", ".join(f"{name}: {slow[name]}/{len(got)}" for name, got in variants.items())}.
- Stacks left after the run: {stacks_left}.
"""


def main() -> None:
    benchmark_main(KEY, run, __doc__ or "")


if __name__ == "__main__":
    main()
    sys.exit(0)
