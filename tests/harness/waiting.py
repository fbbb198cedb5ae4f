"""Waiting in a test for something to happen, with a deadline: one helper for every such wait,
and the marks a task leaves to say that it runs (see `integration/remote_tasks.announce`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    found: Callable[[], T | None], timeout: float, what: str, *, interval: float = 0.1
) -> T:
    """`found()`'s first true answer; AssertionError naming `what` once `timeout` seconds have
    passed without one."""
    deadline = time.monotonic() + timeout
    while True:
        answer = found()
        if answer:
            return answer
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(interval)


def read_pid(mark: Path) -> int | None:
    """The pid a process wrote to `mark`, or None while it has not (wholly)."""
    try:
        return int(mark.read_text())
    except (FileNotFoundError, ValueError):
        return None


def wait_for_task(mark: Path, timeout: float = 120.0) -> int:
    """The pid of the task that announced itself at `mark`, once it has: the task runs."""
    return wait_until(lambda: read_pid(mark), timeout, f"the task announcing itself at {mark}")
