"""Per-phase timing, logged at INFO so a user watching the logs sees where an electron is."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from ec2_executor.logs import log


class Phases:
    def __init__(self, label: str) -> None:
        self.label = label
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        log.info("%s: %s ...", self.label, name)
        try:
            yield
        finally:
            took = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + took
            log.info("%s: %s took %.2fs", self.label, name, took)

    def split(self, name: str, part: str, seconds: float) -> None:
        """Move `seconds` of phase `name` to phase `part`, measured inside it (on the instance).

        `part` happened first, so it takes `name`'s place in the order.
        """
        seconds = min(seconds, self.seconds.get(name, 0.0))
        ordered: dict[str, float] = {}
        for key, took in self.seconds.items():
            if key == name:
                ordered[part] = self.seconds.get(part, 0.0) + seconds
                ordered[name] = took - seconds
            elif key != part:
                ordered[key] = took
        self.seconds = ordered
        log.info("%s: %s took %.2fs (of %s, on the instance)", self.label, part, seconds, name)

    def summary(self) -> str:
        return ", ".join(f"{name} {took:.2f}s" for name, took in self.seconds.items())
