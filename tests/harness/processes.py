"""Finding and ending the processes the harness started, by a marker in their environment or
by their place in the process tree (read from /proc)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)


def pids_with_env(assignment: str) -> list[int]:
    """Processes (other than this one) whose environment holds `NAME=value`."""
    needle = b"\0" + assignment.encode() + b"\0"
    own = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in b"\0" + environ + b"\0":
            found.append(int(entry))
    return found


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses):
    state, parent pid, ...; None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Neither gone nor a zombie not reaped yet."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    table: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        fields = _stat_fields(entry) if entry.isdigit() else None
        if fields is not None:
            table[int(entry)] = int(fields[1])
    return table


def children(pid: int) -> list[int]:
    return [child for child, parent in parents().items() if parent == pid]


def descendants(root: int, table: dict[int, int] | None = None) -> list[int]:
    """Children, their children, and so on (from `table`, or from /proc now)."""
    below: dict[int, list[int]] = {}
    for pid, parent in (parents() if table is None else table).items():
        below.setdefault(parent, []).append(pid)
    found: list[int] = []
    stack = [root]
    while stack:
        for child in below.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"{pid}: (gone)"
    return f"{pid}: " + raw.replace(b"\0", b" ").decode(errors="replace").strip()


def terminate(pids: list[int], *, grace: float, label: str) -> None:
    """SIGTERM, then SIGKILL (with a warning naming `label`) whatever outlives `grace`."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (living := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in living:
        log.warning("%s: pid %s ignored SIGTERM: %s", label, pid, cmdline(pid))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while [pid for pid in pids if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.02)


def signal_all(pids: list[int], signum: int) -> None:
    """Send `signum` to each process still there."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
