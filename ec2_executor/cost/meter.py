"""One electron's meter: the rate of the instance it uses and how long it used it.

A fresh instance is charged from its launch (the CreateStack that made it) to its termination
(the stack's deletion seen complete, or requested, until the background wait confirms it). On a
warm instance an electron is charged from the lease to the release; the idle time between two
electrons is the pool's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ec2_executor.cost import record
from ec2_executor.cost.prices import Rate


@dataclass
class Meter:
    rate: Rate | None = None
    started: float | None = None
    """`time.time()` when the charge began; None: nothing to charge yet."""
    ended: float | None = None

    def start(self, rate: Rate | None, at: float | None = None) -> None:
        self.rate, self.started, self.ended = rate, at or time.time(), None

    def stop(self, at: float | None = None) -> None:
        if self.started is not None and self.ended is None:
            self.ended = at or time.time()

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return max((self.ended or time.time()) - self.started, 0.0)

    @property
    def usd(self) -> float | None:
        return None if self.rate is None else self.rate.cost(self.seconds)

    def summary(self) -> str:
        """'cost $0.0012 (312 s at $0.0132/h: ...)', 'so far' while the charge runs on."""
        if self.started is None:
            return "cost $0 (no instance launched)"
        so_far = "" if self.ended else " so far"
        usd, rate = self.usd, self.rate
        if usd is None or rate is None:
            what = rate or "no rate"
            return f"cost unknown{so_far} ({self.seconds:.0f} s; {what})"
        return f"cost ${usd:.4f}{so_far} ({self.seconds:.0f} s at {rate})"

    def charge(
        self, *, kind: str, stack: str, task: str, startup_seconds: float | None = None
    ) -> record.Charge:
        """The meter as a line of the local record (stopped first)."""
        self.stop()
        rate = self.rate
        sources = []
        if rate is not None:
            parts = [rate.instance, rate.volume, rate.public_ipv4]
            sources = [p.source for p in parts if p is not None]
        return record.Charge(
            at=record.now_iso(),
            kind=kind,
            stack=stack,
            task=task,
            region=rate.region if rate else "",
            instance_type=rate.instance_type if rate else "",
            market=rate.market if rate else "",
            seconds=round(self.seconds, 3),
            usd=self.usd,
            usd_per_hour=rate.usd_per_hour if rate else None,
            sources=sources,
            startup_seconds=startup_seconds,
        )
