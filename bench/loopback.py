"""The loopback harness (tests/harness: moto, emulated boots with a real sshd) and what the
benchmarks observe of an electron from the outside: its phases, from the executor's own log
lines, and its AWS calls, from botocore's events on the executor's clients."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    EmulatedBoot,
    Image,
    LoopbackNetwork,
    MotoServer,
    NetworkGuard,
    create_loopback_network,
    free_port,
    patched_environ,
)

from bench import REPO
from bench.common import BENCH_TMP, scratch

TRIVIAL = lambda: 1  # noqa: E731  (a lambda: cloudpickle ships it by value)

# --- the loopback harness --------------------------------------------------------------------


class MotoProcess:
    """`python -m harness.moto` (moto's server with the harness's fidelity fixes) in its own
    process, behind `harness.MotoServer`: its CPU time then does not compete with the executor
    for this process's GIL, as AWS's would not."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        with open(log, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "harness.moto", "-H", "127.0.0.1", "-p", str(self.port)],
                cwd=REPO / "tests",  # where `harness` is importable
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start; see {log}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Harness:
    """A moto server, a loopback subnet, emulated boots and a warm template cache."""

    base: Path
    moto: MotoServer
    network: LoopbackNetwork
    boot: EmulatedBoot
    process: MotoProcess | None
    stacks_left: int = 0

    def options(self, **overrides: Any) -> dict[str, Any]:
        from integration.executor_support import harness_options  # imports covalent

        return harness_options(self.network.subnet_id, str(self.base / "cache"), **overrides)

    def moto_cpu(self) -> float:
        return self.process.cpu() if self.process is not None else 0.0

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until the harness has stopped every instance."""
        deadline = time.monotonic() + timeout
        while self.boot.running_count and time.monotonic() < deadline:
            time.sleep(0.05)

    def fresh_cloud(self) -> None:
        """Between measured runs: count the stacks left, then empty moto and make the network
        again, so that the emulated boot's polling does not grow with every electron."""
        self.settle()
        summaries = self.moto.client("cloudformation").list_stacks()["StackSummaries"]
        self.stacks_left += sum(s["StackStatus"] != "DELETE_COMPLETE" for s in summaries)
        self.moto.reset()
        self.network = create_loopback_network(self.moto.client("ec2"))


def light_instances() -> bool:
    """Whether this harness can boot light instances (sshd alone, no bootstrap)."""
    return "light" in inspect.signature(Image.local).parameters


@contextlib.contextmanager
def harness(*, moto_in_process: bool = False, light: bool = False) -> Iterator[Harness]:
    """`light`: light emulated instances (when the harness has them; see `light_instances`)."""
    from cdk_stacks.shape import ALL_SHAPES
    from cdk_stacks.templates import template_for

    base = scratch("harness")
    guard = NetworkGuard()
    guard.install()
    os.environ["EC2_EXECUTOR_CACHE_DIR"] = str(BENCH_TMP / "templates")
    with contextlib.ExitStack() as stack:
        stack.callback(guard.uninstall)
        for shape in ALL_SHAPES:  # synthesised once, then kept between runs
            template_for(shape)
        image = (
            Image.local(base / "image", light=True)  # type: ignore[call-arg,unused-ignore]
            if light and light_instances()
            else Image.local(base / "image")
        )
        process = None if moto_in_process else MotoProcess(base / "moto.log")
        if process is None:
            moto = MotoServer.start()
        else:
            moto = MotoServer(host="127.0.0.1", port=process.port, _stop=process.stop)
        stack.callback(moto.stop)
        stack.enter_context(patched_environ(moto.environment(base / "aws")))
        boot = EmulatedBoot(moto.url, image=image, base_dir=base / "instances")
        stack.enter_context(boot)
        network = create_loopback_network(moto.client("ec2"))
        yield Harness(base, moto, network, boot, process)
        boot.raise_errors()
    if guard.violations:
        raise RuntimeError("\n".join(guard.violations))


# --- what the benchmarks observe of an electron ----------------------------------------------

_STARTED = re.compile(r"^(?P<label>\S+): (?P<phase>[^.]+) \.\.\.$")
_TOOK = re.compile(
    r"^(?P<label>\S+): (?P<phase>.+?) took (?P<s>[\d.]+)s(?: \(of (?P<of>.+), on the instance\))?$"
)
POLLS = frozenset({"DescribeStacks", "DescribeStackEvents", "ListStacks"})
"""The waits' polls (ListStacks: the process's shared watcher): repeating them is their job."""


class Probe(logging.Handler):
    """Each electron's phases, from the executor's INFO lines (`<stack>: <phase> ...`, then
    `... took`), and every AWS call with the phase in progress, from botocore's `before-call`
    and `after-call` events on the clients the executor uses (one set per process)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.phases: dict[str, dict[str, float]] = {}
        self.calls: list[tuple[str, str, float]] = []
        self.current = "outside phases"
        self._opened: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[Probe]:
        from ec2_executor.cloud.aws import AWS
        from ec2_executor.logs import log
        from ec2_executor.options import Options

        aws = AWS(Options())  # the executor's own clients: one per process and credentials
        for service in ("sts", "ec2", "cloudformation"):
            events = aws.client(service).meta.events
            events.register("before-call", self._before, unique_id="bench-before")
            events.register("after-call", self._after, unique_id="bench-after")
        saved = log.level, log.propagate
        log.setLevel(logging.INFO)
        log.propagate = False
        log.addHandler(self)
        try:
            yield self
        finally:
            log.removeHandler(self)
            log.setLevel(saved[0])
            log.propagate = saved[1]

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        with self._lock:
            if started := _STARTED.match(message):
                self._opened[(started["label"], started["phase"])] = record.created
                self.current = started["phase"]
            elif took := _TOOK.match(message):
                self._took(took, record.created)

    def _took(self, took: re.Match[str], at: float) -> None:
        phases = self.phases.setdefault(took["label"], {})
        if took["of"] is None:
            start = self._opened.pop((took["label"], took["phase"]), at)
            phases[took["phase"]] = phases.get(took["phase"], 0.0) + at - start
            self.current = "outside phases"
            return
        # Measured on the instance, inside `of`: it takes `of`'s place in the order.
        part, whole = float(took["s"]), took["of"]
        order = [took["phase"] if name == whole else name for name in phases] + [whole]
        seconds = {**phases, took["phase"]: part, whole: phases.get(whole, 0.0) - part}
        self.phases[took["label"]] = {name: seconds[name] for name in order}

    def _before(self, context: dict[str, Any], **_: Any) -> None:
        context["bench"] = (self.current, time.monotonic())

    def _after(self, context: dict[str, Any], model: Any, **_: Any) -> None:
        phase, started = context.get("bench", ("?", time.monotonic()))
        with self._lock:
            self.calls.append((phase, model.name, time.monotonic() - started))

    def take(self) -> tuple[dict[str, dict[str, float]], list[tuple[str, str, float]]]:
        """Phases per electron and the calls seen since the last `take`; then forget them."""
        with self._lock:
            phases, calls = self.phases, self.calls
            self.phases, self.calls, self.current = {}, [], "outside phases"
        if not calls:
            raise RuntimeError("saw none of the executor's AWS calls: are its clients shared?")
        return phases, calls


def repeated_calls(calls: Sequence[tuple[str, str, float]]) -> list[str]:
    """Calls other than the waits' polls made more than once."""
    counts: dict[str, int] = {}
    for _, operation, _ in calls:
        counts[operation] = counts.get(operation, 0) + (operation not in POLLS)
    return [f"{operation} x{n}" for operation, n in counts.items() if n > 1]


async def timed_execute(
    executor: Any, dispatch_id: str, node_id: int = 0, function: Any = TRIVIAL
) -> dict[str, float]:
    """What `AsyncBaseExecutor.execute` does, minus the server channel, with a task that returns
    1 (`TRIVIAL` by default) and setup, run and teardown timed."""
    executor._task_stdout, executor._task_stderr = io.StringIO(), io.StringIO()
    metadata = {"dispatch_id": dispatch_id, "node_id": node_id, "results_dir": ""}
    times: dict[str, float] = {}
    started = time.monotonic()
    try:
        await executor.setup(metadata)
        times["setup"] = time.monotonic() - started
        result = await executor.run(function, [], {}, metadata)
        if getattr(result, "get_deserialized", lambda: result)() != 1:  # Covalent's wrapper
            raise RuntimeError(f"{dispatch_id}: the task returned a wrong result")
        times["run"] = time.monotonic() - started - times["setup"]
    finally:
        teardown = time.monotonic()
        await executor.teardown(metadata)
        times["teardown"] = time.monotonic() - teardown
        times["total"] = time.monotonic() - started
    return times


async def background_work() -> float:
    """Await what teardown left running (the deletion wait); returns how long it took."""
    started = time.monotonic()
    others = asyncio.all_tasks() - {asyncio.current_task()}
    await asyncio.gather(*others, return_exceptions=True)
    return time.monotonic() - started
