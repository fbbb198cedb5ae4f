"""Small tasks the integration tests run on instances. Shipped by value, as a user's own
functions are: an instance cannot import this module."""

from __future__ import annotations

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


def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"
