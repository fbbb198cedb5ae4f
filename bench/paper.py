"""On real AWS, on paper: dispatch to task start for the default configuration (`t2.micro`,
Amazon Linux 2023, the default VPC), phase by phase, from public sources and two figures
measured here: installing covalent into a fresh venv with pip and with uv (cold caches, from the
package registry, as the bootstrap does), and the CPU of `import covalent`.

python -m bench.paper
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Section, benchmark_main, fmt_s, median, progress, scratch, table

SOURCES = (
    "[brev] https://github.com/brevdev/ec2-coldboot-research (2026, AL2023: RunInstances 4.8 s, "
    "pending→running 17.8 s, boot→SSH 3.2 s); [percival] "
    "http://www.daemonology.net/blog/2021-08-12-EC2-boot-time-benchmarking.html; [stedi] "
    "https://www.stedi.com/blog/relative-performance-tradeoffs-of-aws-native-provisioning-methods "
    "(CloudFormation adds ~13 s); [python] https://docs.aws.amazon.com/linux/al2023/ug/python.html "
    "(no python3.11 by default)."
)


def install_seconds(tool: str, base: Path) -> float | None:
    """`venv` + `pip install`, or `uv venv` + `uv pip install`, of covalent and cloudpickle."""
    wanted = [f"{d}=={importlib.metadata.version(d)}" for d in ("covalent", "cloudpickle")]
    python, venv = getattr(sys, "_base_executable", sys.executable), base / f"venv-{tool}"
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV"))
    }
    env = {**clean, "PIP_CACHE_DIR": str(base / "pip"), "UV_CACHE_DIR": str(base / "uv")}
    if tool == "pip":
        steps = [
            [python, "-m", "venv", str(venv)],
            [str(venv / "bin/python"), "-m", "pip", "install", "-q", *wanted],
        ]
    else:
        steps = [
            [uv, "venv", "-q", "--python", python, str(venv)],
            [uv, "pip", "install", "-q", "--python", str(venv / "bin/python"), *wanted],
        ]
    progress(f"paper: installing {' '.join(wanted)} with {tool}, cold cache")
    started = time.monotonic()
    try:
        for step in steps:
            subprocess.run(step, env=env, check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError):
        return None  # the registry is out of reach: reported as not measured
    return time.monotonic() - started


def import_cpu() -> float:
    code = "import covalent, resource; u = resource.getrusage(0); print(u.ru_utime + u.ru_stime)"
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(3)
    ]
    return median([float(done.stdout.split()[-1]) for done in runs])


def run(args: argparse.Namespace) -> Section:
    base = scratch("install")
    pip, uv = install_seconds("pip", base), install_seconds("uv", base)
    cpu = import_cpu()
    installs = f"pip {fmt_s(pip or float('nan'))}, uv {fmt_s(uv or float('nan'))} here"
    rows = [
        (
            "plan (STS, instance type, default VPC and subnets; this machine's public IP)",
            "1-2 s",
            "5-6 API calls at 50-200 ms, an HTTPS request",
        ),
        ("template, CreateStack", "0.3-1 s", "a cache hit (benchmark 1), one API call"),
        (
            "stack → CREATE_COMPLETE",
            "25-45 s",
            "RunInstances + pending→running 6-23 s [percival, brev]; "
            "CloudFormation ~13 s [stedi]; our poll, up to 5 s apart",
        ),
        (
            "wait for SSH",
            "5-25 s",
            "AL2023 boot→SSH 3.2 s [brev], older images 17-23 s [percival]; our retries",
        ),
        (
            "bootstrap: dnf python3.11, venv, covalent + cloudpickle with uv",
            "30-70 s",
            f"no python3.11 in AL2023 [python]; install: {installs}",
        ),
        ("the task's round trip", "0.2-0.5 s", "one command on one connection (benchmark 3)"),
        (
            "unpickling the task imports covalent",
            f"{1.5 * cpu:.1f}-{3 * cpu:.1f} s",
            f"{fmt_s(cpu)} of CPU here; a t2.micro is 1.5-3x slower",
        ),
    ]
    section = Section("paper", "6. On real AWS, on paper", "python -m bench.paper")
    section.table = table(("Dispatch to task start", "Estimate", "Basis"), rows)
    section.note = (
        "Not run on AWS. In all about 1-2.5 minutes, of which the executor's own work is a few "
        "seconds; an image with covalent preinstalled (`ami`) removes the bootstrap, the largest "
        f"item. Sources: {SOURCES}"
    )
    section.data = {"pip": pip, "uv": uv, "import_cpu": cpu}
    return section


if __name__ == "__main__":
    benchmark_main("paper", run, __doc__ or "")
