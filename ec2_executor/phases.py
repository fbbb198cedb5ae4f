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

    def summary(self) -> str:
        return ", ".join(f"{name} {took:.2f}s" for name, took in self.seconds.items())
