"""One Fabric connection per electron: pinned host key, readiness, and the task's one round trip.

Round trips per task: the connection (TCP, key exchange, auth), one command that waits for the
bootstrap's ready marker, and one command that receives the payload on stdin, runs it and
returns the result envelope on stdout.
"""

from __future__ import annotations

import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection

from ec2_executor.access import ClientIdentity
from ec2_executor.errors import BootstrapError, ConnectionLostError, RemoteError

RUNNER_SOURCE = (Path(__file__).parent / "runner.py").read_text()
_CHUNK = 1 << 20
_READY, _FAILED, _TIMED_OUT = 0, 3, 4
# Checks every 0.1 s: a fast electron reaches the instance just before its bootstrap ends.
_WAIT_FOR_BOOTSTRAP = """p="${{EC2_EXECUTOR_PREFIX:-/opt/ec2-executor}}"; i=0
while [ "$i" -lt {ticks} ]; do
  if [ -f "$p/ready" ]; then cat "$p/ready"; exit 0; fi
  if [ -f "$p/failed" ]; then cat "$p/failed"; tail -n 40 "$p/bootstrap.log"; exit 3; fi
  sleep 0.1; i=$((i+1))
done
echo "the bootstrap did not finish"; tail -n 40 "$p/bootstrap.log" 2>/dev/null; exit 4"""


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    host: str
    port: int
    user: str


class RemoteHost:
    """A lazy, closable SSH connection that trusts exactly one host key."""

    def __init__(
        self,
        endpoint: Endpoint,
        identity: ClientIdentity,
        host_key: paramiko.PKey,
        *,
        connect_timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.round_trips = 0
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
                "banner_timeout": connect_timeout,
                "auth_timeout": connect_timeout,
            },
        )
        self._connection.client = _pinned_client(endpoint, host_key)

    def connect(self) -> None:
        """Open the connection; `OSError` while the instance boots, `RemoteError` for good."""
        sock = socket.create_connection(
            (self.endpoint.host, self.endpoint.port), timeout=self.connect_timeout
        )
        # paramiko leaves Nagle on: each small write after an unacknowledged one would wait
        # for the peer's delayed ACK (~40 ms), several times per command.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        except paramiko.SSHException as exc:  # a banner or handshake cut short while booting
            raise OSError(str(exc)) from exc
        finally:
            if not self._connection.is_connected:
                sock.close()
        transport = self._connection.client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        self.round_trips += 1

    def wait_for_bootstrap(self, timeout: float) -> str:
        """The task interpreter's path, once the bootstrap is ready; `BootstrapError` if not."""
        status, out, _ = self.execute(_WAIT_FOR_BOOTSTRAP.format(ticks=max(1, int(timeout * 10))))
        text = out.decode(errors="replace").strip()
        if status == _READY and text:
            return text.splitlines()[-1]
        what = "failed" if status == _FAILED else "did not finish in 'provision_timeout'"
        raise BootstrapError(
            f"The instance's bootstrap {what} on {self.endpoint.host}; its log ends:\n{text}"
        )

    def run_task(self, payload: bytes, *, python: str, remote_dir: str) -> bytes:
        """Upload the payload, run it, and return the result envelope: one round trip."""
        directory = _shell_path(remote_dir)
        command = (
            f"mkdir -p {directory} && cat > {directory}/payload.pkl && "
            f'PATH={shlex.quote(str(Path(python).parent))}:"$PATH" '
            f"exec {shlex.quote(python)} -c {shlex.quote(RUNNER_SOURCE)} "
            f"{directory}/payload.pkl {directory}/result.pkl"
        )
        status, out, err = self.execute(command, stdin=payload)
        if status != 0 or not out:
            raise ConnectionLostError(
                f"The task runner on {self.endpoint.host} ended without a result (exit status "
                f"{status}); the instance may have stopped. Its stderr ends:\n"
                f"{err.decode(errors='replace')[-2000:]}"
            )
        return out

    def execute(self, command: str, *, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        """Run one command; a dropped connection becomes `ConnectionLostError`."""
        transport = self._connection.client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionLostError(f"The SSH connection to {self.endpoint.host} is closed.")
        self.round_trips += 1
        try:
            with transport.open_session() as channel:
                channel.exec_command(command)
                for start in range(0, len(stdin), _CHUNK):
                    channel.sendall(stdin[start : start + _CHUNK])
                channel.shutdown_write()
                out = _read_all(channel.recv)
                err = _read_all(channel.recv_stderr)
                return channel.recv_exit_status(), out, err
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectionLostError(
                f"Lost the SSH connection to {self.endpoint.host} while running a command: {exc}"
            ) from exc

    def close(self) -> None:
        """Idempotent; also interrupts a command that another thread is waiting on."""
        self._connection.close()

    def __enter__(self) -> RemoteHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pinned_client(endpoint: Endpoint, host_key: paramiko.PKey) -> paramiko.SSHClient:
    """A client that knows no host but this one and refuses any other key (no known_hosts)."""
    client = paramiko.SSHClient()
    keys = client.get_host_keys()
    for spec in (endpoint.host, f"[{endpoint.host}]:{endpoint.port}"):
        keys.add(spec, host_key.get_name(), host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def _read_all(recv: Callable[[int], bytes]) -> bytes:
    chunks = []
    while chunk := recv(_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def _shell_path(path: str) -> str:
    """Quote a remote path but keep a leading '~/' meaning the login user's home."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + shlex.quote(path[1:])
    return shlex.quote(path)
