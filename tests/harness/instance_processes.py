"""The processes of an emulated instance: its sshd, its bootstrap, and ending all of them (and
whatever they left running) when the instance goes away."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .boot_log import BootedInstance, BootError, tail
from .instance_dir import MARKER_ENV
from .processes import command_name, descendants, parents, pids_with_env, signal_all, terminate

PRIVSEP_DIR = Path("/run/sshd")
SSHD_START_TIMEOUT = 15.0
STOP_GRACE = 5.0
"""Seconds an instance's processes get between SIGTERM and SIGKILL."""

_LISTENING = "Server listening on"


def find_sshd() -> str:
    found = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin")
    if not found:
        raise BootError(
            "OpenSSH server (sshd) not found: install openssh-server ('make test' and "
            "'make demo' do so on Debian and Ubuntu)"
        )
    return str(Path(found).resolve())  # sshd re-executes itself: needs an absolute path


def _spawn(
    command: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """In a session of its own (a signal to the harness's group does not reach it), its output
    appended to `log`."""
    with open(log, "ab") as output:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )


def start_sshd(sshd_path: str, record: BootedInstance) -> None:
    """sshd with the instance's configuration; returns once it listens."""
    if not PRIVSEP_DIR.is_dir():
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    command = [sshd_path, "-D", "-e", "-f", str(record.sshd_config), "-E", str(record.sshd_log)]
    record.sshd = _spawn(command, record.workdir / "sshd.stderr", record.workdir)
    _wait_listening(record, record.sshd)


def _wait_listening(record: BootedInstance, sshd: subprocess.Popen[bytes]) -> None:
    where = f"sshd on {record.private_ip}:{record.port}"
    deadline = time.monotonic() + SSHD_START_TIMEOUT
    while True:
        returncode = sshd.poll()
        if returncode is not None:
            raise BootError(
                f"{where} exited with {returncode}; {record.sshd_log} tail:\n"
                f"{record.sshd_log_tail()}\nstderr: {tail(record.workdir / 'sshd.stderr')}"
            )
        with contextlib.suppress(FileNotFoundError):
            if _LISTENING in record.sshd_log.read_text(errors="replace"):
                return
        if time.monotonic() > deadline:
            raise BootError(
                f"{where} not listening after {SSHD_START_TIMEOUT:.0f} s; {record.sshd_log} "
                f"tail:\n{record.sshd_log_tail()}"
            )
        time.sleep(0.01)


def start_bootstrap(record: BootedInstance, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The user data's bootstrap with its arguments and `--prefix <instance dir>/opt`."""
    assert record.spec is not None
    script = record.prefix / "bootstrap.sh"
    command = [str(script), *record.spec.bootstrap_args, "--prefix", str(record.prefix)]
    return _spawn(command, record.bootstrap_output, record.workdir, env)


def end_all(record: BootedInstance, grace: float = STOP_GRACE) -> None:
    """End sshd, its connections, the bootstrap and every process carrying the marker."""
    thaw(record)  # a stopped process would not act on SIGTERM
    table = parents()
    pids: list[int] = []
    for process in (record.sshd, record.bootstrap):  # the listener first: the port closes
        if process is not None and process.poll() is None:
            pids.append(process.pid)
            pids.extend(descendants(process.pid, table))
    pids.extend(pids_with_env(f"{MARKER_ENV}={record.marker}"))
    pids = [pid for pid in dict.fromkeys(pids) if pid != os.getpid()]
    terminate(pids, grace=grace, label=f"emulated boot {record.instance_id}")
    for process in (record.sshd, record.bootstrap):  # reap our direct children
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)


def freeze_sshd(record: BootedInstance) -> list[int]:
    """SIGSTOP the sshd listener and its connections (not what runs in them)."""
    if record.sshd is None:
        raise BootError(f"{record.instance_id} has no sshd to freeze")
    below = descendants(record.sshd.pid)
    pids = [record.sshd.pid] + [pid for pid in below if command_name(pid).startswith("sshd")]
    signal_all(pids, signal.SIGSTOP)
    record.frozen.extend(pids)
    return pids


def thaw(record: BootedInstance) -> None:
    signal_all(record.frozen, signal.SIGCONT)
    record.frozen.clear()
