"""The dispatcher process's identity: a random id made once per process, and what this machine
can prove about other owners.

Host names and process ids collide in containers, so the id is random. Each stack carries it
(`cloud.stacks.TAG_OWNER`): a sweep never touches this process's own stacks, and
`ec2-executor list` tells whose a stack is. A process that creates a stack also leaves a note
on this machine (`owners/<id>.json` beside the template cache): its pid and start time, and the
boot and pid namespace they are valid in. A later process in the same boot and pid namespace
whose note names a pid that is gone, or that started at another time, knows that owner is dead.
Elsewhere (another machine, container or boot) nothing is proven.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from functools import cache
from pathlib import Path

from cdk_stacks.templates import cache_dir

_id = secrets.token_hex(8)


def owner_id() -> str:
    """This process's owner id: 16 hex digits, made at import and anew in a forked child (a
    child outlives its parent, whose note would then call the child's electrons orphans)."""
    return _id


def _after_fork() -> None:
    global _id
    _id = secrets.token_hex(8)
    leave_note.cache_clear()


os.register_at_fork(after_in_child=_after_fork)


def notes_dir() -> Path:
    return cache_dir().parent / "owners"


def _where() -> dict[str, str]:
    """The boot and pid namespace a pid is valid in."""
    return {
        "boot": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "pid_namespace": os.readlink("/proc/self/ns/pid"),
    }


def _started(pid: int) -> str | None:
    """The process's start time (clock ticks since boot); None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@cache
def leave_note() -> None:
    """Note this process on this machine, once (best effort: without it nothing is proven)."""
    with contextlib.suppress(OSError):
        pid = os.getpid()
        note = {**_where(), "pid": pid, "started": _started(pid)}
        notes_dir().mkdir(parents=True, exist_ok=True)
        path = notes_dir() / f"{owner_id()}.json"
        path.with_suffix(".tmp").write_text(json.dumps(note))
        path.with_suffix(".tmp").replace(path)


def known_gone(owner: str) -> bool:
    """Whether this machine can prove that `owner`'s process has ended."""
    if owner == owner_id() or not owner.isalnum():
        return False
    try:
        note = json.loads((notes_dir() / f"{owner}.json").read_text())
        if {k: note[k] for k in ("boot", "pid_namespace")} != _where():
            return False
        return bool(_started(int(note["pid"])) != note["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def forget(owner: str) -> None:
    """Drop a dead owner's note (once none of its stacks is left)."""
    if owner.isalnum() and known_gone(owner):
        with contextlib.suppress(OSError):
            (notes_dir() / f"{owner}.json").unlink()
