"""The performance fixes these benchmarks found, each detected in the code as it is and
switchable from the benchmark, so that its worth is measured side by side in one run: a fix the
code lacks is patched in ("what-if"), a fix the code has is patched out ("reverted", the code's
earlier behaviour). Nothing here edits the code; the patches live only in the benchmark process.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import socket
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

# --- one boto3 session per process -----------------------------------------------------------

NEW_CLIENT_HOOK: Callable[[Any, str, float], None] | None = None
"""Set by `bench.common.Recorder`: told of each client a patch here builds itself."""

_SHARED_AWS: dict[tuple[str, str, str], Any] = {}
_SHARED_AWS_LOCK = threading.RLock()


def code_shares_boto3_clients() -> bool:
    """Whether two `AWS` objects with the same options hand out the same client."""
    from ec2_executor.aws import AWS
    from ec2_executor.options import Options

    return bool(AWS(Options()).client("sts") is AWS(Options()).client("sts"))


@contextlib.contextmanager
def _aws_patched(init: Callable[..., None], client: Callable[..., Any]) -> Iterator[None]:
    """`AWS.__init__` and `AWS.client` replaced for the duration of the context."""
    from ec2_executor import aws as aws_module

    cls = aws_module.AWS
    original_init, original_client = cls.__dict__["__init__"], cls.__dict__["client"]
    cls.__init__ = init  # type: ignore[method-assign]
    cls.client = client  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.__init__ = original_init  # type: ignore[method-assign]
        cls.client = original_client  # type: ignore[method-assign]


@contextlib.contextmanager
def shared_boto3_session() -> Iterator[None]:
    """What-if: one boto3 session and one set of clients per (profile, region, credentials
    file) for the process, clients built under a lock. The cache lives as long as this process,
    as the fix's would, and is only used inside this context."""
    from ec2_executor import aws as aws_module

    cls = aws_module.AWS
    original_init, original_client = cls.__dict__["__init__"], cls.__dict__["client"]

    def init(self: Any, options: Any) -> None:
        key = (options.profile, options.region, options.credentials_file)
        with _SHARED_AWS_LOCK:
            if key not in _SHARED_AWS:
                first = object.__new__(cls)
                original_init(first, options)
                _SHARED_AWS[key] = first
            self.__dict__.update(_SHARED_AWS[key].__dict__)
            self.options = options

    def client(self: Any, service: str) -> Any:
        with _SHARED_AWS_LOCK:
            return original_client(self, service)

    with _aws_patched(init, client):
        yield


@contextlib.contextmanager
def session_per_electron() -> Iterator[None]:
    """Reverted: a new boto3 session and new clients for every `AWS` object, i.e. for every
    electron, as the code did before it shared them (its old `__init__` and `client`)."""
    from ec2_executor import aws as aws_module

    def init(self: Any, options: Any) -> None:
        self.options = options
        self.session = aws_module._session(options)
        self._bench_clients = {}

    def client(self: Any, service: str) -> Any:
        if service not in self._bench_clients:
            start = time.monotonic()
            self._bench_clients[service] = self.session.client(
                service, region_name=self.options.region, config=aws_module.CLIENT_CONFIG
            )
            if NEW_CLIENT_HOOK is not None:
                NEW_CLIENT_HOOK(self._bench_clients[service], service, start)
        return self._bench_clients[service]

    with _aws_patched(init, client):
        yield


# --- TCP_NODELAY on the SSH socket -----------------------------------------------------------


def code_sets_nodelay() -> bool:
    """From the module's source: `RemoteHost.connect` itself may be wrapped by the recorder."""
    from ec2_executor import remote as remote_module

    return "TCP_NODELAY" in inspect.getsource(remote_module)


@contextlib.contextmanager
def tcp_nodelay() -> Iterator[None]:
    """What-if: `RemoteHost.connect` hands paramiko (Fabric's `connect_kwargs["sock"]`) a TCP
    socket with TCP_NODELAY set."""
    from ec2_executor import remote as remote_module

    cls = remote_module.RemoteHost
    original = cls.__dict__["connect"]

    def connect(self: Any) -> None:
        endpoint = self.endpoint
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connection.connect_kwargs["sock"] = sock
        try:
            original(self)
        except BaseException:
            sock.close()
            raise
        finally:
            self._connection.connect_kwargs.pop("sock", None)

    cls.connect = connect
    try:
        yield
    finally:
        cls.connect = original


class _NagleSocket(socket.socket):
    """A socket that ignores requests to set TCP_NODELAY."""

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        if level == socket.IPPROTO_TCP and option == socket.TCP_NODELAY:
            return
        super().setsockopt(level, option, value, *rest)


@contextlib.contextmanager
def nagle_on() -> Iterator[None]:
    """Reverted: the sockets `ec2_executor.remote` opens ignore TCP_NODELAY, so Nagle's
    algorithm stays on, as it did before the code set the option."""
    from ec2_executor import remote as remote_module

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        plain = socket.create_connection(address, *args, **kwargs)
        timeout = plain.gettimeout()
        nagle = _NagleSocket(fileno=plain.detach())
        nagle.settimeout(timeout)
        return nagle

    shim = types.ModuleType("socket")
    shim.__dict__.update(socket.__dict__)
    shim.create_connection = create_connection  # type: ignore[attr-defined]
    saved = remote_module.__dict__.get("socket")
    remote_module.socket = shim  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if saved is None:
            del remote_module.socket
        else:
            remote_module.socket = saved  # type: ignore[attr-defined]


# --- quick ACKs on the SSH socket ------------------------------------------------------------


def code_acks_at_once() -> bool:
    from ec2_executor import remote as remote_module

    return hasattr(remote_module, "_AckAtOnceSocket")


@contextlib.contextmanager
def delayed_acks() -> Iterator[None]:
    """Reverted: the SSH socket reads without setting TCP_QUICKACK, so the kernel's delayed
    ACKs hold back sshd's small replies (Nagle on sshd's side) as before."""
    from ec2_executor import remote as remote_module

    cls = remote_module._AckAtOnceSocket
    original = cls.__dict__["recv"]
    cls.recv = socket.socket.recv  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        cls.recv = original  # type: ignore[method-assign]


# --- the warm worker ---------------------------------------------------------------------------


def code_has_warm_worker() -> bool:
    from cdk_stacks.user_data import bootstrap_script_path

    return "start_worker" in bootstrap_script_path().read_text()


# --- the bootstrap wait's tick ---------------------------------------------------------------

_LOOP = 'while [ "$i" -lt {ticks} ]'
_SLEEP = re.compile(r"sleep (\d+(?:\.\d+)?);")


def bootstrap_tick() -> float | None:
    """Seconds the remote bootstrap wait sleeps between checks (None: not found)."""
    from ec2_executor import remote as remote_module

    found = _SLEEP.search(getattr(remote_module, "_WAIT_FOR_BOOTSTRAP", ""))
    return float(found.group(1)) if found else None


def code_polls_bootstrap_finely() -> bool:
    tick = bootstrap_tick()
    return tick is not None and tick < 0.5


@contextlib.contextmanager
def _bootstrap_tick(seconds: float, ticks_factor: int) -> Iterator[None]:
    from ec2_executor import remote as remote_module

    saved = remote_module._WAIT_FOR_BOOTSTRAP
    if _LOOP not in saved or not _SLEEP.search(saved):
        yield
        return
    loop = _LOOP if ticks_factor == 1 else f'while [ "$i" -lt $(({{ticks}} * {ticks_factor})) ]'
    remote_module._WAIT_FOR_BOOTSTRAP = _SLEEP.sub(f"sleep {seconds};", saved.replace(_LOOP, loop))
    try:
        yield
    finally:
        remote_module._WAIT_FOR_BOOTSTRAP = saved


def fine_bootstrap_poll() -> AbstractContextManager[None]:
    """What-if: the remote wait for the bootstrap's ready file checks every 0.05 s instead of
    every 0.5 s (ten times the ticks: the same total timeout)."""
    return _bootstrap_tick(0.05, 10)


def coarse_bootstrap_poll() -> AbstractContextManager[None]:
    """Reverted: the remote wait sleeps 0.5 s between checks again, as the code did (the
    total timeout grows accordingly; the benchmarks never come near it)."""
    return _bootstrap_tick(0.5, 1)


# --- the bootstrap's installer ---------------------------------------------------------------


def bootstrap_installs_with_uv() -> bool:
    """Whether ec2_executor/bootstrap.sh fetches uv for the install step even when a Python was
    found (before, it used uv only if it had needed uv to find a Python)."""
    from cdk_stacks.user_data import bootstrap_script_path

    text = bootstrap_script_path().read_text()
    start, end = text.find("STEP=install"), text.find("STEP=verify")
    return start >= 0 and "get_uv" in text[start:end]


# --- all of them -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fix:
    key: str
    name: str
    where: str
    in_code: bool
    apply: Callable[[], AbstractContextManager[Any]]
    revert: Callable[[], AbstractContextManager[Any]] | None

    @property
    def label(self) -> str:
        """What toggling it does, for a column or row heading."""
        if self.in_code:
            return f"{self.name} reverted" if self.revert else f"{self.name} (in the code)"
        return f"what-if: {self.name}"

    def toggled(self) -> AbstractContextManager[Any]:
        """The code with this fix switched: patched out if it has it, patched in if not."""
        if self.in_code:
            return self.revert() if self.revert else contextlib.nullcontext()
        return self.apply()


def session_fix() -> Fix:
    """Call inside the harness environment: the check builds two `AWS` objects."""
    return Fix(
        "session",
        "one boto3 session per process",
        "ec2_executor/aws.py, `AWS.__init__`/`AWS.client`",
        code_shares_boto3_clients(),
        shared_boto3_session,
        session_per_electron,
    )


def nodelay_fix() -> Fix:
    return Fix(
        "nodelay",
        "TCP_NODELAY on the SSH socket",
        "ec2_executor/remote.py, `RemoteHost.connect`",
        code_sets_nodelay(),
        tcp_nodelay,
        nagle_on,
    )


def tick_fix() -> Fix:
    return Fix(
        "tick",
        "bootstrap wait checking more often than every 0.5 s",
        "ec2_executor/remote.py, `_WAIT_FOR_BOOTSTRAP`",
        code_polls_bootstrap_finely(),
        fine_bootstrap_poll,
        coarse_bootstrap_poll,
    )


def quickack_fix() -> Fix:
    return Fix(
        "quickack",
        "quick ACKs on the SSH socket",
        "ec2_executor/remote.py, `_AckAtOnceSocket`",
        code_acks_at_once(),
        contextlib.nullcontext,
        delayed_acks,
    )


def detect() -> list[Fix]:
    """Every fix, each with whether the code has it (inside the harness environment)."""
    return [session_fix(), nodelay_fix(), quickack_fix(), tick_fix()]
