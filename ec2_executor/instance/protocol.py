"""What the instance's `run-task.sh` and the executor say to each other, named once.

The command's exit status says how it ended; the lines it writes itself start with `MARK` (the
result envelope on stdout is a pickle, never text). `tests/unit/test_protocol.py` fails when
the script and this table disagree.
"""

from __future__ import annotations

from enum import IntEnum

MARK = "ec2-executor:"
"""Starts every line run-task.sh writes itself."""


class Exit(IntEnum):
    """run-task.sh's exit statuses."""

    OK = 0
    BOOTSTRAP_FAILED = 3
    """The instance's bootstrap failed; stdout has its log's end."""
    BOOTSTRAP_TIMED_OUT = 4
    """The bootstrap was not done within the wait; stdout has its log's end."""
    PAYLOAD_NOT_WRITTEN = 5
    """The task's payload could not be written under `remote_cache` (disk full, no access)."""
    WORKER_DIED = 6
    """The warm worker process died while it held the task."""
    NOT_READY = 7
    """`--check`: the bootstrap is not done or the warm worker is not running."""
    KILL_UNCONFIRMED = 8
    """`--kill`: the task's process was still alive after the wait."""
    NO_RESULT = 9
    """The task's process ended without writing its envelope (killed, out of memory)."""
