"""On real AWS, on paper: a phase-by-phase estimate of dispatch-to-task-start and teardown for
the default configuration, with the source of each figure. One figure is measured here: the
bootstrap's install of covalent into a fresh venv, with pip (what the bootstrap does on AL2023)
and with uv, cold caches, from the package registry.

python -m bench.paper [--results results.json] [--no-install]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import fmt_s, progress, scratch, table
from bench.fixes import bootstrap_installs_with_uv

KEY = "paper"
TITLE = "6. On real AWS, on paper"
COMMAND = "python -m bench.paper"

SOURCES = {
    "brev": (
        "brevdev/ec2-coldboot-research, docs/cold-baseline-results.md (2026, m7i.large, AL2023, "
        "3 runs): RunInstances 4.8 s, pending→running 17.8 s, boot→SSH 3.2 s, 25.8 s in all; "
        "https://github.com/brevdev/ec2-coldboot-research"
    ),
    "percival": (
        "C. Percival, EC2 boot time benchmarking (2021, c5.xlarge, medians of 9): RunInstances "
        "1.5 s, pending→running 4.9 s, running→port 22 answering 17 s + 5.6 s to open; "
        "http://www.daemonology.net/blog/2021-08-12-EC2-boot-time-benchmarking.html"
    ),
    "sweet": (
        "M. Sweet, EC2 Launch Times (Oct. 2023): AL2023 is the fastest general-purpose AMI to "
        "boot; EBS encryption slows launches; https://www.martysweet.co.uk/ec2-launch-times/"
    ),
    "stedi": (
        "Stedi, Relative performance tradeoffs of AWS-native provisioning methods (Feb. 2023): "
        "CloudFormation adds ~13 s over the direct service APIs; "
        "https://www.stedi.com/blog/relative-performance-tradeoffs-of-aws-native-provisioning-methods"
    ),
    "python": (
        "AWS, Python in AL2023: /usr/bin/python3 stays 3.9, python3.11-3.14 are separate "
        "packages; https://docs.aws.amazon.com/linux/al2023/ug/python.html"
    ),
    "billing": (
        "AWS, Troubleshoot instance termination: billing stops when the instance enters "
        "shutting-down; https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/"
        "TroubleshootingInstancesShuttingDown.html"
    ),
    "tf8613": (
        "hashicorp/terraform#8613 (2016): waiting for `terminated` is what lets the security "
        "group be deleted, and can take long; https://github.com/hashicorp/terraform/pull/8613"
    ),
}


# --- the one measurement: installing covalent, pip vs uv -------------------------------------


def _clean_env(cache: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # no local wheel directories, no machine-wide constraints
        PIP_CACHE_DIR=str(cache / "pip"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        UV_CACHE_DIR=str(cache / "uv"),
        UV_NO_CONFIG="1",
    )
    if "PIP_CERT" in os.environ:
        env["SSL_CERT_FILE"] = os.environ["PIP_CERT"]
        env["PIP_CERT"] = os.environ["PIP_CERT"]
    return env


def measure_covalent_import(repeats: int = 3) -> float:
    """CPU seconds of `import covalent` in a fresh interpreter of this venv (median): what
    unpickling a task as Covalent sends it (wrapped in covalent's own functions) costs on the
    instance before the task starts."""
    code = (
        "import covalent, resource; usage = resource.getrusage(resource.RUSAGE_SELF); "
        "print(usage.ru_utime + usage.ru_stime)"
    )
    times = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
        )
        times.append(float(done.stdout.split()[-1]))
    return sorted(times)[len(times) // 2]


def measure_install(timeout: float = 300) -> dict[str, Any]:
    """`python -m venv` + `pip install covalent==… cloudpickle==…` (the bootstrap's path on
    AL2023) against `uv venv` + `uv pip install` of the same, both with empty caches."""
    import importlib.metadata

    wanted = [
        f"covalent=={importlib.metadata.version('covalent')}",
        f"cloudpickle=={importlib.metadata.version('cloudpickle')}",
    ]
    base = scratch("install")
    python = getattr(sys, "_base_executable", sys.executable)
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    result: dict[str, Any] = {"packages": wanted}
    for tool in ("pip", "uv"):
        progress(f"paper: installing {' '.join(wanted)} with {tool}, cold cache")
        venv = base / f"venv-{tool}"
        env = _clean_env(base / f"cache-{tool}")
        if tool == "pip":
            steps = [
                [python, "-m", "venv", str(venv)],
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *wanted],
            ]
        else:
            steps = [
                [uv, "venv", "-q", "--python", python, str(venv)],
                [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *wanted],
            ]
        started = time.monotonic()
        try:
            for step in steps:
                subprocess.run(
                    step, env=env, check=True, capture_output=True, text=True, timeout=timeout
                )
            result[tool] = time.monotonic() - started
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            result[tool] = None
            result[f"{tool}_error"] = str(detail)[-500:]
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(base / f"cache-{tool}", ignore_errors=True)
    return result


# --- the estimate -----------------------------------------------------------------------------


def _get(results: dict[str, Any], *path: str, default: Any = None) -> Any:
    found: Any = results
    for key in path:
        if not isinstance(found, dict) or key not in found:
            return default
        found = found[key]
    return found


def render(results: dict[str, Any], install: dict[str, Any] | None, covalent_cpu: float) -> str:
    overhead = _get(results, "overhead", "data", default={}) or {}
    phase = overhead.get("phase_medians", {})
    plan_here = phase.get("plan")
    run_here = phase.get("upload, run, fetch")
    transport = _get(results, "transport", "data", "results", default={}) or {}

    def ours(condition: str) -> float | None:
        found = [r["seconds"] for r in transport.get(f"ours|trivial|{condition}", [])]
        return sorted(found)[len(found) // 2] if found else None

    far, near = ours("rtt50"), ours("loopback")
    rtts = f"~{(far - near) / 0.050:.0f} RTT" if far and near else "a few RTT"
    deletes = _get(results, "teardown", "data", "deletes", default=[]) or []
    creates = _get(results, "teardown", "data", "creates", default=[]) or []
    delete_60 = next((d for d in deletes if d["seconds"] == 60.0), None)
    create_30 = next((c for c in creates if c["seconds"] == 30.0), None)
    synth = _get(results, "synth", "data", default={}) or {}
    hits = [x["call"] for shape in synth.values() for x in shape.get("fresh", []) if "call" in x]
    hit = sorted(hits)[len(hits) // 2] if hits else None
    fixes = {f["key"]: f for f in overhead.get("fixes", [])}
    session_text = (
        "the boto3 session and clients are built once per process (~0.4-0.7 s of CPU, the "
        "first electron only)"
        if fixes.get("session", {}).get("in_code")
        else "plus building a boto3 session and 3 clients per electron (~0.4-0.7 s of CPU)"
    )
    uses_uv = bootstrap_installs_with_uv()
    installer = (
        "with **uv** (`get_uv` runs before the install step)"
        if uses_uv
        else "with **pip** (uv only when no Python was found)"
    )
    bootstrap_range = "30-70 s" if uses_uv else "45-120 s"
    pip_s = install.get("pip") if install else None
    uv_s = install.get("uv") if install else None
    install_text = (
        f"measured here: pip {fmt_s(pip_s)}, uv {fmt_s(uv_s)} (`python -m venv` + `pip install` "
        f"against `uv venv` + `uv pip install` of {' '.join(install['packages'])}, empty "
        f"caches, this machine's network and 2 cores)"
        if pip_s and uv_s
        else "not measured in this run (`--no-install`, or the registry was not reachable)"
    )
    lag_create = fmt_s(create_30["lag"]) if create_30 else "~2.5 s"
    lag_delete = fmt_s(delete_60["lag"]) if delete_60 else "~3 s"
    polls_delete = delete_60["polls"] if delete_60 else "~17"
    rows = [
        (
            "plan (STS, instance type, default VPC, its subnets, zone offerings; this "
            "machine's public IP from checkip.amazonaws.com)",
            "1-2 s",
            f"5-6 API calls at ~50-200 ms each from near the region, and an HTTPS request; "
            f"{session_text} (plan took {fmt_s(plan_here) if plan_here else '?'} on the "
            "harness, benchmark 2)",
        ),
        (
            "template",
            f"{fmt_s(hit) if hit else '< 10 ms'}",
            "benchmark 1: a cache hit (the first of a process); transfers as is",
        ),
        ("CreateStack call", "0.3-1 s", "one API call with a 12 KB template inline (estimate)"),
        (
            "stack → CREATE_COMPLETE (security group, then RunInstances and pending → running, "
            "then CloudFormation notices)",
            "25-45 s",
            "pending→running 5-18 s [percival, brev]; RunInstances 1.5-4.8 s [percival, brev]; "
            "CloudFormation adds ~13 s over direct APIs [stedi]; t2.micro is an older Xen type "
            f"and the root volume is encrypted, both slower [sweet]; then our poll notices "
            f"{lag_create} late on average (benchmark 5)",
        ),
        (
            "wait for SSH (boot → sshd answering)",
            "5-25 s",
            "AL2023 boot→SSH 3.2 s [brev]; older AMIs 17 s + 5.6 s [percival]; plus our retry: "
            "while the instance's network is not up a connect attempt waits out its 10 s "
            "`connect_timeout`, then the backoff (≤ 3 s) adds ~1-2 s",
        ),
        (
            "bootstrap (cloud-init runcmd: `dnf install python3.11 python3.11-pip`, venv, "
            "install covalent + cloudpickle)",
            bootstrap_range,
            "AL2023 has no python3.11 by default [python], so dnf installs it (estimate "
            "15-40 s on a t2.micro, repository metadata included); then the bootstrap installs "
            f"{installer}: {install_text}; a t2.micro has 1 vCPU",
        ),
        (
            "upload, run, fetch (`lambda: 1`)",
            "0.2-0.5 s",
            f"one command on the connection (benchmark 3: {rtts} in all with the connection, "
            "at 50 ms); the warm worker is already waiting, so no interpreter starts "
            f"({fmt_s(run_here) if run_here else '?'} on the loopback harness, benchmark 2)",
        ),
        (
            "the task as Covalent sends it: unpickling it imports covalent",
            f"{1.5 * covalent_cpu:.1f}-{3 * covalent_cpu:.1f} s",
            "Covalent wraps every task in its own functions (`wrapper_fn`, "
            "`TransportableObject`), so the instance imports covalent before the task starts: "
            f"{fmt_s(covalent_cpu)} of CPU here (`import covalent` in a fresh interpreter, "
            "median of 3); estimate 1.5-3 times that on a t2.micro's single burstable vCPU",
        ),
    ]
    teardown_rows = [
        (
            "DeleteStack (the electron completes here by default)",
            "0.2-0.5 s",
            "one API call; benchmark 5 measures the executor's side",
        ),
        (
            "stack → DELETE_COMPLETE (instance shutting-down → terminated, then the security "
            "group)",
            "30-90 s",
            "estimate: the security group can only go once the instance is terminated "
            f"[tf8613]; billing stops at shutting-down [billing]; our background wait notices "
            f"{lag_delete} late with {polls_delete} DescribeStacks polls for a 60 s deletion "
            "(benchmark 5)",
        ),
    ]
    uv_vs_pip = (
        f"uv {fmt_s(uv_s)} against pip {fmt_s(pip_s)} here"
        if pip_s and uv_s
        else "see the install measurement"
    )
    if uses_uv:
        install_advice = (
            f"The bootstrap already installs with uv ({uv_vs_pip}); fetching a standalone "
            "Python with `uv python install` instead of `dnf` would shorten it further "
            "(ec2_executor/bootstrap.sh)."
        )
    else:
        install_advice = (
            f"Without one, installing with **uv instead of pip** ({uv_vs_pip}) and fetching a "
            "standalone Python with `uv python install` instead of `dnf` would shorten it "
            "(ec2_executor/bootstrap.sh: `get_uv` first, then `uv venv`/`uv pip install`)."
        )
    total_range = "1-2.5 minutes" if uses_uv else "1.5-3 minutes"
    refs = "\n".join(f"- [{key}] {text}" for key, text in SOURCES.items())
    return f"""
Default configuration: `t2.micro`, Amazon Linux 2023, the default VPC (existing-network shape:
a security group and an instance), a dispatcher near the region. None of this was run on AWS:
the cloud figures come from the sources listed at the end, the executor's own figures from the
benchmarks above where they transfer. Ranges, not points: EC2 launch times vary by region,
type and hour.

**Dispatch to task start**

{table(("Phase", "Estimate", "Source / reasoning"), rows)}

In all: about **{total_range}** from dispatch to the task starting, of which the executor's own
work (planning, template, SSH, the task's round trip) is a few seconds; the rest is
CloudFormation, EC2 and the bootstrap's installs.

**Teardown**

{table(("Phase", "Estimate", "Source / reasoning"), teardown_rows)}

**The floor** is an instance booting to SSH: RunInstances + pending→running + boot→SSH,
~25 s for AL2023 on a current type [brev] (7-30 s across the sources), plus a task's round
trip. Everything above that floor is what the executor can still cut:

1. **An image with python3.11, covalent and cloudpickle preinstalled** (the `ami` option; the
   bootstrap's first check then finds the versions and writes `ready` at once): removes the
   {bootstrap_range} bootstrap, the largest item. {install_advice}
2. **Not waiting for CREATE_COMPLETE**: the instance's id is known from the stack's resources
   (`DescribeStackResource` on the instance's logical id) as soon as CloudFormation has called
   RunInstances; polling `DescribeInstances` for its address and probing SSH from then on
   overlaps CloudFormation's own ~10 s [stedi] and the poll's lag ({lag_create}) with the boot.
   The stack still owns the instance and is still deleted as before.
3. **Probing SSH with short timeouts**: a TCP connect with a 1-2 s timeout before the SSH
   handshake (instead of a 10 s `connect_timeout` per attempt while SYNs go unanswered), and a
   lower backoff ceiling (1 s instead of 3 s), in `Electron._connect`.
4. **Not waiting for the stack's deletion**: already the default (the electron completes once
   `DeleteStack` is accepted; billing stops at shutting-down [billing]).
5. **The warm worker importing covalent before the task arrives** (ec2_executor/runner.py
   `serve`): with an image that has covalent, the bootstrap is done before the executor
   connects, and the {fmt_s(covalent_cpu)} (here) of `import covalent` would be spent while the
   executor is still waiting for the stack and SSH. Not done yet: on the test harness every
   emulated instance would pay that CPU on the same two cores.
6. The executor's own costs from benchmarks 2-4 (one boto3 session per process, TCP_NODELAY
   and quick ACKs, the 0.5 s tick of the bootstrap wait, one command per task with a warm
   worker) are each well under a second per electron: they matter for many electrons at once
   and for short tasks, not for this floor.

Sources:

{refs}
"""


def run(results: dict[str, Any], *, install: bool) -> dict[str, Any]:
    measured = measure_install() if install else None
    progress("paper: import covalent, 3 fresh interpreters")
    covalent_cpu = measure_covalent_import()
    return {
        "install": measured,
        "covalent_import_cpu": covalent_cpu,
        "body": render(results, measured, covalent_cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.paper", description=__doc__)
    parser.add_argument("--results", type=Path, default=None, help="other sections' JSON")
    parser.add_argument("--no-install", action="store_true", help="skip the pip/uv install")
    parser.add_argument("--json", type=Path, default=None, help="also write the section here")
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results else {}
    started = time.monotonic()
    section = run(results, install=not args.no_install)
    section["seconds"] = time.monotonic() - started
    print(f"## {TITLE}\n\nCommand: `{COMMAND}` (took {section['seconds']:.0f} s).\n")
    print(section["body"])
    if args.json is not None:
        args.json.write_text(json.dumps(section, indent=1, default=str))


if __name__ == "__main__":
    main()
