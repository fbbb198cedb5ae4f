"""What the benchmarks share: machine facts, statistics, the loopback harness, instrumentation
(phases, AWS calls, SSH connects), and the section format `python -m bench` assembles.

Import this before anything imports covalent: it points covalent's config, cache and data at a
temporary directory, so no benchmark writes to the user's ~/.config/covalent.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import REPO

# --- isolation: covalent's directories and the template cache --------------------------------

BENCH_TMP = Path(tempfile.gettempdir()) / "ec2-executor-bench"
"""Kept between runs: the SSH plugin's venv and the warm template cache live here."""

_SCRATCH = Path(tempfile.mkdtemp(prefix="ec2-executor-bench-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


def scratch(name: str) -> Path:
    """A fresh directory for this process, removed at exit."""
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_SCRATCH))
    return path


def _isolate_covalent() -> None:
    from harness.covalent_server import CovalentPaths

    paths = CovalentPaths.create(_SCRATCH / "covalent")
    os.environ.update(paths.environment())


_isolate_covalent()

WARM_TEMPLATE_CACHE = BENCH_TMP / "templates"


# --- numbers ---------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclass
class Stat:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        values = list(values)
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(median(values), min(values), max(values), len(values))

    def ms(self) -> str:
        return f"{fmt_s(self.median)} ({fmt_s(self.low)}-{fmt_s(self.high)})"

    def s(self) -> str:
        return f"{self.median:.2f} s ({self.low:.2f}-{self.high:.2f})"


def fmt_s(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "-"
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if abs(seconds) < 1:
        return f"{seconds * 1e3:.0f} ms" if abs(seconds) >= 0.01 else f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- machine facts ---------------------------------------------------------------------------

PACKAGES = (
    "ec2-executor",
    "covalent",
    "cloudpickle",
    "boto3",
    "botocore",
    "moto",
    "fabric",
    "paramiko",
    "aws-cdk-lib",
    "numpy",
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _command_output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (
        (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else ""
    )


def machine_facts() -> dict[str, Any]:
    meminfo = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            meminfo[key] = value.strip()
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": meminfo.get("MemTotal", "?"),
        "load average (1, 5, 15 min) at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "kernel": platform.release(),
        "python": sys.version.split()[0] + f" ({sys.executable})",
        "openssh": _command_output([_sshd_path(), "-V"]),
        "node": _command_output(["node", "--version"]),
        "packages": {dist: _version(dist) for dist in PACKAGES},
    }


def _sshd_path() -> str:
    return shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin") or "sshd"


# --- a section of BENCHMARKS.md --------------------------------------------------------------


@dataclass
class Target:
    name: str
    measured: str
    goal: str
    passed: bool | None
    """None: not applicable / could not be measured."""

    @property
    def verdict(self) -> str:
        return {True: "**pass**", False: "**FAIL**", None: "n/a"}[self.passed]


@dataclass
class Section:
    key: str
    title: str
    command: str
    body: str = ""
    targets: list[Target] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def markdown(self) -> str:
        parts = [f"## {self.title}", "", f"Command: `{self.command}` (took {self.seconds:.0f} s)."]
        if self.targets:
            parts += ["", target_table(self.targets)]
        parts += ["", self.body.strip(), ""]
        return "\n".join(parts)


def target_table(targets: Sequence[Target]) -> str:
    return table(
        ("Target", "Measured", "Goal", "Result"),
        [(t.name, t.measured, t.goal, t.verdict) for t in targets],
    )


def benchmark_main(key: str, run: Callable[[argparse.Namespace], Section], doc: str) -> None:
    """The command line every benchmark module shares: run, print the section, maybe --json."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{key}", description=doc)
    parser.add_argument("--repeats", type=int, default=None, help="override the repeat count")
    parser.add_argument("--json", type=Path, default=None, help="also write the section here")
    parser.add_argument(
        "--moto-in-process",
        action="store_true",
        help="run moto in this process, as the tests do (default: its own process)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    section = run(args)
    section.seconds = time.monotonic() - started
    print(section.markdown())
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(section), indent=1, default=str))


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the loopback harness --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def network_guard() -> Iterator[None]:
    """Refuse (loudly) any connection outside loopback while benchmarks run."""
    from harness import NetworkGuard

    guard = NetworkGuard()
    guard.install()
    try:
        yield
    finally:
        guard.uninstall()
        if guard.violations:
            raise RuntimeError("\n".join(guard.violations))


def warm_template_cache() -> Path:
    """Point `EC2_EXECUTOR_CACHE_DIR` at the benchmarks' cache and synthesise what is missing."""
    from cdk_stacks.shape import ALL_SHAPES
    from cdk_stacks.templates import template_for

    os.environ["EC2_EXECUTOR_CACHE_DIR"] = str(WARM_TEMPLATE_CACHE)
    for shape in ALL_SHAPES:
        template_for(shape)
    return WARM_TEMPLATE_CACHE


@dataclass
class Harness:
    """A moto server with a loopback subnet, emulated boots, and a warm template cache."""

    base: Path
    moto: Any
    network: Any
    boot: Any
    image_venv: Path
    setup_seconds: dict[str, float]
    moto_in_process: bool = False
    stacks_left_before_resets: int = 0

    def options(self, **overrides: Any) -> dict[str, Any]:
        from integration.executor_support import harness_options

        return harness_options(self.network.subnet_id, str(self.base / "remote-cache"), **overrides)

    def stacks_left(self) -> int:
        """Stacks not deleted, over the whole run (moto resets included)."""
        return self.stacks_left_before_resets + len(self.live_stacks())

    def live_stacks(self) -> list[dict[str, Any]]:
        summaries = self.moto.client("cloudformation").list_stacks()["StackSummaries"]
        return [s for s in summaries if s["StackStatus"] != "DELETE_COMPLETE"]

    def moto_cpu(self) -> float:
        """CPU seconds of the moto server's own process so far (0 when it runs in this one)."""
        handle = getattr(self.moto, "_server", None)
        process = getattr(handle, "process", None)
        if process is None:
            return 0.0
        try:
            stat = Path(f"/proc/{process.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat[stat.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until every emulated instance has been stopped (between measured runs)."""
        deadline = time.monotonic() + timeout
        while self.boot.running_count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the harness's last kills and reaps

    def fresh_cloud(self) -> int:
        """Between measured runs: settle, count the stacks left, then empty moto and make the
        loopback network again. moto keeps every instance it ever ran, and the emulated boot
        polls `DescribeInstances` five times a second: without this, the harness's own load
        grows with every electron. Returns the number of stacks that were left."""
        from harness import create_loopback_network

        self.settle()
        left = len(self.live_stacks())
        self.stacks_left_before_resets += left
        self.moto.reset()
        self.network = create_loopback_network(self.moto.client("ec2"))
        return left


class _MotoProcess:
    """`python -m harness.moto` (moto's server) in its own process: stands in for
    ThreadedMotoServer behind `harness.MotoServer`, whose other methods (url, client,
    environment, reset) only need the host and port."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self._log = open(log, "ab")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            # moto's server with the harness's fidelity fix (AWS::NoValue list items).
            [sys.executable, "-m", "harness.moto", "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO / "tests",  # where `harness` is importable
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start; see {log}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def start_moto(base: Path, *, in_process: bool) -> Any:
    """A `harness.MotoServer`: in this process (as the tests run it) or in its own process (so
    its CPU time does not compete with the executor for this process's GIL, as AWS would not)."""
    from harness import MotoServer

    if in_process:
        return MotoServer.start()
    handle = _MotoProcess(base / "moto.log")
    return MotoServer(host="127.0.0.1", port=handle.port, _server=handle)  # type: ignore[arg-type]


@contextlib.contextmanager
def harness(*, poll_interval: float = 0.2, moto_in_process: bool = False) -> Iterator[Harness]:
    from harness import (
        EmulatedBoot,
        build_image_venv,
        create_loopback_network,
        current_site_packages,
        patched_environ,
    )

    base = scratch("harness")
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(network_guard())
        t = time.monotonic()
        warm_template_cache()
        timings["template cache (warm or synthesise)"] = time.monotonic() - t
        t = time.monotonic()
        image_venv = build_image_venv(base / "image")
        timings["image venv (offline bootstrap)"] = time.monotonic() - t
        t = time.monotonic()
        moto = start_moto(base, in_process=moto_in_process)
        stack.callback(moto.stop)
        stack.enter_context(patched_environ(moto.environment(base / "aws")))
        network = create_loopback_network(moto.client("ec2"))
        timings[
            f"moto server ({'in this process' if moto_in_process else 'own process'}) + network"
        ] = time.monotonic() - t
        boot = EmulatedBoot(
            moto.url,
            python_path=current_site_packages(),
            bootstrap_env={"EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1"},
            image_venv=image_venv,
            base_dir=base / "instances",
            poll_interval=poll_interval,
        )
        stack.enter_context(boot)
        yield Harness(base, moto, network, boot, image_venv, timings, moto_in_process)
        errors = boot.errors
        if errors:
            raise RuntimeError("emulated boot failed:\n" + "\n".join(errors))


# --- instrumentation -------------------------------------------------------------------------


PHASES = (
    "plan",
    "template",
    "create stack",
    "wait for stack",
    "wait for SSH",
    "bootstrap",
    "upload, run, fetch",
    "delete stack",
)
"""An electron's phases (`Electron.phases`), in order."""

TRIVIAL = lambda: 1  # noqa: E731  (a lambda: cloudpickle always ships it by value)


@dataclass
class Span:
    name: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class AwsCall:
    label: str
    """The phase (or other label) current when the call was made."""
    operation: str
    seconds: float
    stack: str = ""


class Recorder:
    """Phases of every `Electron`, AWS calls (botocore `before-call`/`after-call`), AWS client
    creation, and SSH connection attempts, labelled with the phase in progress.

    The label is process-wide: attribute calls only while one electron runs at a time.
    """

    def __init__(self) -> None:
        self.label = "outside phases"
        self.phases: list[Any] = []
        self.calls: list[AwsCall] = []
        self.client_creation: list[Span] = []
        self.connects: list[tuple[Span, str]] = []
        self.executes: list[tuple[Span, str]] = []
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []

    # phases -------------------------------------------------------------------------------

    def install(self) -> Recorder:
        import ec2_executor.electron as electron_module
        from bench import fixes as fixes_module
        from ec2_executor import aws as aws_module
        from ec2_executor import remote as remote_module
        from ec2_executor.phases import Phases

        recorder = self

        class RecordingPhases(Phases):
            def __init__(self, label: str) -> None:
                super().__init__(label)
                self.spans: list[Span] = []
                recorder.phases.append(self)

            @contextlib.contextmanager
            def phase(self, name: str) -> Iterator[None]:
                recorder.label = name
                start = time.monotonic()
                try:
                    with super().phase(name):
                        yield
                finally:
                    self.spans.append(Span(name, start, time.monotonic()))
                    recorder.label = "between phases"

            def split(self, name: str, part: str, seconds: float) -> None:
                """`part` (measured on the instance) is the first `seconds` of `name`'s span."""
                super().split(name, part, seconds)
                for i, span in enumerate(self.spans):
                    if span.name == name:
                        cut = span.start + min(seconds, span.seconds)
                        pieces = [Span(part, span.start, cut), Span(name, cut, span.end)]
                        self.spans[i : i + 1] = pieces
                        break

        self._patch(electron_module, "Phases", RecordingPhases)

        original_client = aws_module.AWS.client
        hooked: list[Any] = []  # the clients seen (kept, so their ids stay unique)

        def hook(made: Any, service: str, start: float) -> None:
            """Count and time a client the first time it is seen."""
            if any(made is seen for seen in hooked):
                return
            recorder.client_creation.append(Span(service, start, time.monotonic()))
            hooked.append(made)
            made.meta.events.register("before-parameter-build", recorder._params)
            made.meta.events.register("before-call", recorder._before)
            made.meta.events.register("after-call", recorder._after)
            made.meta.events.register("after-call-error", recorder._after)

        def client(aws: Any, service: str) -> Any:
            start = time.monotonic()
            made = original_client(aws, service)
            hook(made, service, start)
            return made

        # bench.fixes patches that build clients themselves report them here too.
        fixes_module.NEW_CLIENT_HOOK = hook
        self._undo.append(lambda: setattr(fixes_module, "NEW_CLIENT_HOOK", None))
        self._patch(aws_module.AWS, "client", client)

        original_session = aws_module._session

        def session(options: Any) -> Any:
            start = time.monotonic()
            try:
                return original_session(options)
            finally:
                recorder.client_creation.append(Span("session", start, time.monotonic()))

        self._patch(aws_module, "_session", session)

        original_connect = remote_module.RemoteHost.connect
        original_execute = remote_module.RemoteHost.execute

        def connect(host: Any) -> None:
            start = time.monotonic()
            outcome = "ok"
            try:
                original_connect(host)
            except BaseException as exc:
                outcome = type(exc).__name__
                raise
            finally:
                with recorder._lock:
                    recorder.connects.append((Span("connect", start, time.monotonic()), outcome))

        def execute(host: Any, command: str, *, stdin: bytes = b"") -> Any:
            start = time.monotonic()
            try:
                return original_execute(host, command, stdin=stdin)
            finally:
                with recorder._lock:
                    what = command.split()[0] if command else ""
                    recorder.executes.append((Span("execute", start, time.monotonic()), what))

        self._patch(remote_module.RemoteHost, "connect", connect)
        self._patch(remote_module.RemoteHost, "execute", execute)
        return self

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        saved = owner.__dict__[name]
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, saved))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _params(self, params: Any, context: Any, **_: Any) -> None:
        if isinstance(params, dict) and "StackName" in params:
            context["bench_stack"] = str(params["StackName"])

    def _before(self, context: Any = None, **_: Any) -> None:
        context["bench_started"] = time.monotonic()
        context["bench_label"] = self.label

    def _after(self, context: Any = None, model: Any = None, **_: Any) -> None:
        """`after-call` and `after-call-error` (the latter has no model, and may fire after a
        failed attempt that botocore then retries)."""
        started = (context or {}).get("bench_started")
        if started is None:
            return
        with self._lock:
            self.calls.append(
                AwsCall(
                    label=context.get("bench_label", "?"),
                    operation=model.name if model is not None else "(failed attempt)",
                    seconds=time.monotonic() - started,
                    stack=context.get("bench_stack", ""),
                )
            )

    def reset(self) -> None:
        with self._lock:
            self.phases.clear()
            self.calls.clear()
            self.client_creation.clear()
            self.connects.clear()
            self.executes.clear()
            self.label = "outside phases"

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "phases": [list(p.spans) for p in self.phases],
                "calls": list(self.calls),
                "client_creation": list(self.client_creation),
                "connects": list(self.connects),
                "executes": list(self.executes),
            }


async def timed_execute(
    executor: Any, function: Any, args: list[Any], *, dispatch_id: str, node_id: int = 0
) -> tuple[Any, dict[str, float]]:
    """`integration.executor_support.execute` (what `AsyncBaseExecutor.execute` does, minus the
    server channel) with setup, run and teardown timed separately."""
    import io

    executor._task_stdout, executor._task_stderr = io.StringIO(), io.StringIO()
    metadata = {"dispatch_id": dispatch_id, "node_id": node_id, "results_dir": ""}
    times: dict[str, float] = {}
    started = time.monotonic()
    try:
        await executor.setup(metadata)
        times["setup"] = time.monotonic() - started
        t = time.monotonic()
        result = await executor.run(function, args, {}, metadata)
        times["run"] = time.monotonic() - t
    finally:
        t = time.monotonic()
        await executor.teardown(metadata)
        times["teardown"] = time.monotonic() - t
        times["total"] = time.monotonic() - started
    return result, times


def calls_by_label(calls: Sequence[AwsCall]) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for call in calls:
        found[call.label][call.operation] += 1
    return {label: dict(ops) for label, ops in found.items()}


async def drain_background() -> float:
    """Await the executor's background work (the deletion wait, when teardown leaves it
    running); returns how long that took."""
    import ec2_executor.electron as electron_module

    started = time.monotonic()
    pending = [t for t in getattr(electron_module, "_BACKGROUND", ()) if not t.done()]
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return time.monotonic() - started


def option_exists(name: str) -> bool:
    from ec2_executor.options import OPTION_NAMES

    return name in OPTION_NAMES


def relpath(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(REPO))
    return str(path)
