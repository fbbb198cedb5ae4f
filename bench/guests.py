"""The two stand-ins for an instance side by side, in one run: the bare-sshd emulation
(tests/harness/boot.py) and the real guest (tests/harness/guests.py: systemd-nspawn, Debian's
cloud-init). For each, `--count` instances of the product's stack are launched together in moto
and timed from the harness seeing them running to SSH answering and to the bootstrap's `ready`;
then CPU and memory per instance. `--tests` also times `pytest -m guest`.

    python -m bench.guests [--count 2] [--tests] [--json FILE]

Needs root, systemd-container and mmdebstrap (as the guest tests do).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import REPO, TESTS
from bench.common import Section, benchmark_main, table

sys.path.insert(0, str(TESTS / "integration"))

from guest_stack import deploy
from harness import (
    BootedInstance,
    EmulatedBoot,
    GuestBoot,
    GuestInstance,
    Image,
    MotoServer,
    create_guest_subnet,
    create_loopback_network,
    guest_network,
    guest_support,
    patched_environ,
)
from harness.boot import MARKER_ENV
from harness.guest_image import guest_image
from harness.processes import pids_with_env


@dataclass
class Row:
    ssh: float
    ready: float
    cpu: float
    memory_mib: float


def _cgroup_file(name: str, hierarchy: str, leaf: str) -> Path | None:
    """The guest's file in one v1 hierarchy, as guest_run.sh made it."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if hierarchy in controllers.split(","):
            return Path(f"/sys/fs/cgroup/{controllers}{path.rstrip('/')}/{name}/{leaf}")
    return None


def _guest_usage(guest: GuestInstance) -> tuple[float, float]:
    """CPU seconds and resident MiB (anonymous memory, as for processes) of the guest's
    cgroups; page cache and the overlay's tmpfs are left out."""
    cpu = _cgroup_file(guest.name, "cpuacct", "cpuacct.usage")
    memory = _cgroup_file(guest.name, "memory", "memory.stat")
    cpu_s = int(cpu.read_text()) / 1e9 if cpu and cpu.exists() else float("nan")
    stat = dict(line.split() for line in memory.read_text().splitlines()) if memory else {}
    return cpu_s, int(stat.get("total_rss", "0")) / 2**20


def _launch_and_time(
    server: MotoServer, boot: EmulatedBoot, subnet: Any, ingress: str, count: int, kind: str
) -> list[tuple[BootedInstance, float]]:
    """Deploy `count` stacks at once; (record, ready time) for each, once every one is ready."""
    ready: dict[str, float] = {}
    threads = [
        threading.Thread(
            target=deploy,
            args=(server, subnet, f"{kind}-{i}"),
            kwargs={"minutes": 120, "ingress": ingress},
        )
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def wait(record: BootedInstance) -> None:
        boot.wait_bootstrap(record.instance_id, timeout=300)
        ready[record.instance_id] = time.monotonic() - record.seen_running_at

    deadline = time.monotonic() + 120
    while len(boot.instances) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    waiters = [threading.Thread(target=wait, args=(r,)) for r in boot.instances]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    return [(r, ready[r.instance_id]) for r in boot.instances]


def run_guests(server: MotoServer, count: int) -> list[Row]:
    image = guest_image()
    with guest_network() as network, tempfile.TemporaryDirectory() as base:
        subnet = create_guest_subnet(server.client("ec2"), network)
        with GuestBoot(server.url, image=image, network=network, base_dir=Path(base)) as boot:
            timed = _launch_and_time(server, boot, subnet, f"{network.gateway}/32", count, "guest")
            rows = []
            for record, ready in timed:
                assert isinstance(record, GuestInstance) and record.bootstrap_returncode == 0
                cpu, mib = _guest_usage(record)
                rows.append(Row(record.boot_seconds or 0.0, ready, cpu, mib))
            return rows


def run_emulated(server: MotoServer, count: int) -> list[Row]:
    """The same stacks on the bare-sshd emulation (its bootstrap offline, over an image venv
    built beforehand, as the tests run it). CPU: the bootstrap's (a reaped child) and what its
    sshd and warm worker used; memory: their RSS once ready."""
    with tempfile.TemporaryDirectory() as base:
        image = Image.local(Path(base) / "image")
        network = create_loopback_network(server.client("ec2"))
        boot = EmulatedBoot(server.url, image=image, base_dir=Path(base) / "instances")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with boot:
            timed = _launch_and_time(server, boot, network, "127.0.0.0/8", count, "emulated")
            living = [_proc_usage(_emulated_pids(record)) for record, _ in timed]
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        reaped = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return [
            Row(record.boot_seconds or 0.0, ready, reaped / count + cpu, mib)
            for (record, ready), (cpu, mib) in zip(timed, living, strict=True)
        ]


def _emulated_pids(record: BootedInstance) -> list[int]:
    pids = pids_with_env(f"{MARKER_ENV}={record.marker}")
    return pids + ([record.sshd.pid] if record.sshd is not None else [])


def _proc_usage(pids: list[int]) -> tuple[float, float]:
    """CPU seconds (user + system) and resident MiB of living processes."""
    ticks, pages = 0, 0
    for pid in set(pids):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK"), pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_guest_tests() -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "guest", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        check=True,
    )
    return time.monotonic() - started


@contextmanager
def moto() -> Iterator[MotoServer]:
    server = MotoServer.start()
    with tempfile.TemporaryDirectory() as config, patched_environ(server.environment(Path(config))):
        try:
            yield server
        finally:
            server.stop()


def _median(rows: list[Row], field: Callable[[Row], float]) -> str:
    return f"{statistics.median(field(r) for r in rows):.1f}"


def run(args: argparse.Namespace) -> Section:
    reason = guest_support()
    if reason is not None:
        sys.exit(f"bench.guests: {reason}")
    with moto() as server:
        emulated = run_emulated(server, args.count)
        server.reset()  # its instances must not be booted as guests
        results = {
            "bare sshd (tests/harness/boot.py)": emulated,
            "real guest (tests/harness/guests.py)": run_guests(server, args.count),
        }
    section = Section(
        "guests",
        "Real guests vs the bare-sshd emulation",
        f"python -m bench.guests --count {args.count}" + " --tests" * args.tests,
    )
    fields: tuple[Callable[[Row], float], ...] = (
        lambda r: r.ssh,
        lambda r: r.ready,
        lambda r: r.cpu,
        lambda r: r.memory_mib,
    )
    section.table = table(
        ("Stand-in", "start to SSH (s)", "to bootstrap ready (s)", "CPU (s)", "RSS at ready (MiB)"),
        [(name, *(_median(rows, f) for f in fields)) for name, rows in results.items()],
    )
    section.note = (
        f"{args.count} instances of the product's stack launched together in moto per "
        "stand-in; medians per instance, timed from the harness seeing the instance running. "
        "The guest's RSS is its cgroup's anonymous memory; the emulation's, that of its sshd "
        "and warm worker."
    )
    section.data = {name: [dataclasses.asdict(r) for r in rows] for name, rows in results.items()}
    if args.tests:
        seconds = time_guest_tests()
        section.note += f" `pytest -m guest`: {seconds:.0f} s wall."
        section.data["pytest_guest_seconds"] = seconds
    return section


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=2, help="instances launched together")
    parser.add_argument("--tests", action="store_true", help="also time `pytest -m guest`")


if __name__ == "__main__":
    benchmark_main("guests", run, __doc__ or "", arguments)
