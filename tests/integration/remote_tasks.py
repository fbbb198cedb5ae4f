"""Small tasks the integration and end-to-end tests run on instances. Shipped by value, as a
user's own functions are: an instance cannot import this module.

An emulated instance is this machine, so a task can tell the test that it runs through a file
(`announce`); the test waits for it with `harness.waiting.wait_for_task`."""

from __future__ import annotations

import os
import sys
import time

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def noisy() -> str:
    """Prints to both streams, and from a child process."""
    import subprocess

    print("to stdout")
    print("to stderr", file=sys.stderr)
    subprocess.run(["echo", "from a child process"], check=True)
    return "done"


def boom() -> None:
    print("about to fail")
    print("failing now", file=sys.stderr)
    raise ValueError("boom")


def announce(mark: str) -> None:
    """The task's pid in the file `mark`, written whole (a reader never sees half of it)."""
    with open(f"{mark}.part", "w") as part:
        part.write(str(os.getpid()))
    os.replace(f"{mark}.part", mark)


def sleepy(seconds: float, mark: str | None = None) -> str:
    """Sleeps; first announces itself at `mark`, when given."""
    if mark is not None:
        announce(mark)
    time.sleep(seconds)
    return "woke"


def meet(mine: str, theirs: str, timeout: float) -> bool:
    """Announces itself at `mine`, then waits for another task to announce itself at `theirs`:
    True once it has, False after `timeout` seconds. Two tasks that meet each other both ran at
    the same time, however slowly either started."""
    announce(mine)
    deadline = time.monotonic() + timeout
    while not os.path.exists(theirs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
