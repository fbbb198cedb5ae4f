"""The SSH side of one electron: a Fabric connection pinned to one host key, and the task's
one command.

Round trips per task: the connection (TCP, key exchange, auth) and one command, the instance's
`run-task.sh` (shipped beside the bootstrap): it takes the payload on stdin, waits for the
bootstrap, hands the task to the warm worker or a fresh interpreter, and writes the result
envelope to stdout. paramiko's errors become the package's here, and only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paramiko
from fabric import Config, Connection

from ec2_executor import spot
from ec2_executor.access import ClientIdentity
from ec2_executor.blocking import run_blocking
from ec2_executor.errors import (
    BootstrapError,
    ConnectionLostError,
    EC2ExecutorError,
    RemoteError,
    SpotInterruptionError,
    TaskError,
)
from ec2_executor.instance.protocol import MARK, Exit

RUN_TASK = "${EC2_EXECUTOR_PREFIX:-/opt/ec2-executor}/run-task.sh"
"""Where the instance's task command is (`EC2_EXECUTOR_PREFIX` is for emulated instances)."""
_CHUNK = 1 << 20
# $EPOCHREALTIME (bash 5) uses the locale's decimal point.
_WAITED = re.compile(rf"^{MARK} bootstrap waited (\d+[.,]\d+) (\d+[.,]\d+)$", re.M)
_NOT_UP_YET = (OSError, EOFError, paramiko.SSHException)
"""What a connection attempt meets while the instance boots: refused, reset, a banner or
handshake cut short. Worth another try, unlike a wrong host key or a refused login."""
HANDSHAKE_TIMEOUT = 30.0
"""Seconds sshd has for its banner and the key's authentication once it accepted the
connection. Longer than a probe's TCP timeout: a host busy booting (or a test machine running
many instances) can take seconds, and paramiko reports an authentication that ran out of time
as a refused key, which fails the electron."""


@dataclass(frozen=True)
class TaskRun:
    envelope: bytes
    bootstrap_wait: float
    """Seconds the command waited on the instance for the bootstrap to finish."""
    warm: bool
    """Whether the bootstrap's warm worker ran the task (else a fresh interpreter did)."""
    notice: spot.Notice | None = None
    """The spot interruption notice the instance relayed while the task ran, if one came."""


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    host: str
    port: int
    user: str
    name: str = ""
    """How errors name the machine (e.g. its instance id and stack); the host when empty."""


@dataclass(frozen=True)
class Keepalive:
    """Requests that want a reply, sent over an idle-or-busy connection (OpenSSH's
    ServerAliveInterval): idle NAT gateways and firewalls keep the connection, and a peer that
    stops answering (a dropped route, a hung instance) is noticed instead of waited on forever."""

    interval: float = 15.0
    """Seconds between a reply and the next request."""
    timeout: float = 60.0
    """Seconds a request may stay unanswered before the connection counts as lost."""


DEFAULT_KEEPALIVE = Keepalive()


class _Heartbeat:
    """Sends the keepalive requests on its own thread; calls `on_lost` once one goes unanswered."""

    def __init__(
        self, transport: paramiko.Transport, keepalive: Keepalive, on_lost: Callable[[], None]
    ) -> None:
        self.lost = False
        self._transport = transport
        self._keepalive = keepalive
        self._on_lost = on_lost
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="ec2-executor-keepalive", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self._keepalive.interval):
            if not self._transport.is_active():
                return
            # global_request waits for the reply without a deadline (until the transport
            # closes): give it its own thread, and the deadline here.
            request = threading.Thread(
                target=self._transport.global_request,
                args=("keepalive@openssh.com",),
                name="ec2-executor-keepalive-request",
                daemon=True,
            )
            request.start()
            request.join(self._keepalive.timeout)
            if request.is_alive() and not self._stopped.is_set():
                self.lost = True
                self._on_lost()  # closing the transport ends the waiting request too
                return


class RemoteHost:
    """One SSH connection (Fabric) that trusts exactly one host key and no known_hosts."""

    def __init__(
        self,
        endpoint: Endpoint,
        identity: ClientIdentity,
        host_key: paramiko.PKey,
        *,
        connect_timeout: float = 10.0,
        keepalive: Keepalive = DEFAULT_KEEPALIVE,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.round_trips = 0
        self._heartbeat: _Heartbeat | None = None
        self._closed = False
        self._connection = Connection(
            endpoint.host,
            user=endpoint.user,
            port=endpoint.port,
            connect_timeout=connect_timeout,
            config=Config(overrides={"load_ssh_configs": False}),
            connect_kwargs={
                "pkey": identity.key,
                "look_for_keys": False,
                "allow_agent": False,
                "banner_timeout": max(connect_timeout, HANDSHAKE_TIMEOUT),
                "auth_timeout": max(connect_timeout, HANDSHAKE_TIMEOUT),
            },
        )
        _pin(self._connection.client, endpoint, host_key)

    def try_connect(self) -> bool:
        """Open the connection: False while the instance boots, `RemoteError` for good."""
        try:
            sock = _low_latency_socket(
                socket.create_connection(
                    (self.endpoint.host, self.endpoint.port), timeout=self.connect_timeout
                )
            )
        except OSError:
            return False
        self._connection.connect_kwargs["sock"] = sock
        try:
            self._connection.open()
        except paramiko.BadHostKeyException as exc:
            raise RemoteError(
                f"{self.endpoint.host}:{self.endpoint.port} presented a host key other than the "
                f"one pinned for this electron; refusing to connect (is something else on that "
                f"address?)."
            ) from exc
        except paramiko.AuthenticationException as exc:
            raise RemoteError(
                f"{self.endpoint.user}@{self.endpoint.host} refused the SSH key; check 'username' "
                f"(the image's login user) and 'ssh_key_file'."
            ) from exc
        except _NOT_UP_YET:
            return False
        finally:
            if not self._connection.is_connected:
                sock.close()
        if self._closed:  # closed (cancelled) while this connection was being opened
            self._connection.close()
            raise RemoteError(f"The connection to {self.where} was closed while it opened.")
        self._heartbeat = _Heartbeat(
            self._connection.transport, self.keepalive, on_lost=self._connection.close
        )
        self.round_trips += 1
        return True

    @property
    def where(self) -> str:
        return self.endpoint.name or self.endpoint.host

    def run_task(
        self,
        payload: bytes,
        *,
        remote_dir: str,
        bootstrap_timeout: float,
        on_line: Callable[[str], None] | None = None,
    ) -> TaskRun:
        """Upload the payload, wait for the bootstrap, run the task, fetch its envelope.
        `on_line` hears each line the command says itself (`MARK`) as it comes."""
        ticks = max(1, int(bootstrap_timeout * 10))
        command = f'exec bash "{RUN_TASK}" {shell_path(remote_dir)} {ticks}'
        status, out, err = self.execute(command, stdin=payload, on_line=on_line)
        if status != Exit.OK or not out:
            raise task_failure(self.where, status, out, err.decode(errors="replace"))
        messages = err.decode(errors="replace")
        waited = _WAITED.search(messages)
        return TaskRun(
            envelope=out,
            bootstrap_wait=_seconds(waited[2]) - _seconds(waited[1]) if waited else 0.0,
            warm=f"{MARK} warm worker" in messages,
            notice=spot.notice_in(messages),
        )

    def execute(
        self,
        command: str,
        *,
        stdin: bytes = b"",
        on_line: Callable[[str], None] | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run one command; a dropped connection becomes `ConnectionLostError`. With
        `on_line`, its stderr is read as it comes, and each of its lines handed over."""
        if not self._connection.is_connected:
            raise self._lost() or ConnectionLostError(
                f"The SSH connection to {self.where} is closed."
            )
        self.round_trips += 1
        try:
            with self._connection.create_session() as channel:
                channel.exec_command(command)
                said = _LineReader(channel.recv_stderr, on_line) if on_line else None
                for start in range(0, len(stdin), _CHUNK):
                    channel.sendall(stdin[start : start + _CHUNK])
                channel.shutdown_write()
                out = _read_all(channel.recv)
                err = said.join() if said else _read_all(channel.recv_stderr)
                status = channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost() or ConnectionLostError(
                f"Lost the SSH connection to {self.where} while running a command: {exc}"
            ) from exc
        lost = self._lost()
        if lost is not None:
            raise lost
        return status, out, err

    def _lost(self) -> ConnectionLostError | None:
        """The error for a connection the keepalive found dead, else None."""
        if self._heartbeat is None or not self._heartbeat.lost:
            return None
        return ConnectionLostError(
            f"Lost the SSH connection to {self.where}: it did not answer a keepalive within "
            f"{self.keepalive.timeout:g} s (a dropped route, a NAT or firewall timeout, or a hung "
            f"instance?)."
        )

    @property
    def is_connected(self) -> bool:
        return bool(self._connection.is_connected)

    def close(self) -> None:
        """Idempotent; also interrupts a command that another thread is waiting on."""
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self._connection.close()

    def __enter__(self) -> RemoteHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pin(client: paramiko.SSHClient, endpoint: Endpoint, host_key: paramiko.PKey) -> None:
    """Make `client` know no host but this one and refuse any other key (no known_hosts)."""
    keys = client.get_host_keys()
    for spec in (endpoint.host, f"[{endpoint.host}]:{endpoint.port}"):
        keys.add(spec, host_key.get_name(), host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())


class _AckAtOnceSocket(socket.socket):
    """A socket that acknowledges what it receives at once (Linux's TCP_QUICKACK).

    sshd leaves Nagle's algorithm on for sessions without a terminal, so a small reply that
    follows one we have not acknowledged yet waits for our delayed ACK (~40 ms): on every
    connection, the first channel's confirmation does. Quick ACK is not sticky (the kernel
    returns to delayed ACKs), hence it is set again after every read.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


def _low_latency_socket(sock: socket.socket) -> socket.socket:
    """TCP_NODELAY on our side, and quick ACKs where the platform has them."""
    # paramiko leaves Nagle on: each small write after an unacknowledged one would wait
    # for the peer's delayed ACK (~40 ms), several times per command.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not hasattr(socket, "TCP_QUICKACK"):  # not Linux
        return sock
    timeout = sock.gettimeout()
    quick = _AckAtOnceSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    quick.settimeout(timeout)
    return quick


def _seconds(stamp: str) -> float:
    return float(stamp.replace(",", "."))


class _LineReader:
    """Reads a stream on a thread of its own, handing each line over as it comes (a spot
    interruption notice must not wait for the task's end)."""

    def __init__(self, recv: Callable[[int], bytes], on_line: Callable[[str], None]) -> None:
        self._recv, self._on_line = recv, on_line
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._run, name="ec2-executor-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = b""
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            while chunk := self._recv(_CHUNK):
                self._chunks.append(chunk)
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._on_line(line.decode(errors="replace"))

    def join(self) -> bytes:
        self._thread.join()
        return b"".join(self._chunks)


def _read_all(recv: Callable[[int], bytes]) -> bytes:
    chunks = []
    while chunk := recv(_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


async def run_probe(remote: RemoteHost, command: str, timeout: float) -> tuple[int, bytes]:
    """Run a short command; a hang past `timeout` closes the connection and counts as lost."""
    try:
        status, out, _ = await asyncio.wait_for(run_blocking(remote.execute, command), timeout)
    except TimeoutError:
        remote.close()
        raise
    return status, out


def shell_path(path: str) -> str:
    """Quote a remote path but keep a leading '~/' meaning the login user's home."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + shlex.quote(path[1:])
    return shlex.quote(path)


def task_failure(where: str, status: int, out: bytes, messages: str) -> EC2ExecutorError:
    """The error for each way run-task.sh can end without a result (`protocol.Exit`)."""
    said = messages.split(MARK, 1)[-1].strip()
    notice = spot.notice_in(messages)
    if notice is not None and notice.sigterm_at:  # the notice's SIGTERM ended the task
        return SpotInterruptionError(spot.interrupted_task_text(where, notice))
    if status in (Exit.BOOTSTRAP_FAILED, Exit.BOOTSTRAP_TIMED_OUT):
        what = (
            "failed" if status == Exit.BOOTSTRAP_FAILED else "did not finish in 'provision_timeout'"
        )
        text = out.decode(errors="replace").split("\n", 1)[-1].strip()
        return BootstrapError(f"The instance's bootstrap {what} on {where}; its log ends:\n{text}")
    if status == Exit.PAYLOAD_NOT_WRITTEN:
        return RemoteError(
            f"The task's payload could not be written on {where} (disk full, or "
            f"'remote_cache' not writable by the login user?): {messages[-2000:].strip()}"
        )
    if status == Exit.WORKER_DIED:  # as when the instance shuts down: the watcher looks
        return ConnectionLostError(f"On {where}, {said}")
    if status == Exit.NO_RESULT:  # the instance and its worker live; the task's process not
        return TaskError(f"On {where}, {said}")
    return ConnectionLostError(
        f"The task runner on {where} ended without a result (exit status {status}); "
        f"the instance may have stopped. Its stderr ends:\n{messages[-2000:]}"
    )
