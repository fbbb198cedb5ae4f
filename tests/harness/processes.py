"""Finding and ending the processes the harness started, by a marker in their environment."""

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


def alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


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
