"""The local record of what this machine's electrons cost: one JSON line per charge, in
`costs.jsonl` beside the template cache (`EC2_EXECUTOR_CACHE_DIR`, else the user's cache dir).

`ec2-executor cost` sums it; `budget_usd`'s minimum reads the startup times it holds. A line is
one `write` in append mode, so concurrent processes do not interleave lines.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdk_stacks.templates import cache_dir
from ec2_executor.logs import log

ELECTRON, POOL = "electron", "warm pool idle"
"""What a charge was for: an electron's use of an instance, or an idle warm instance."""
MEASURED_LAST = 20
"""The startup median is over this many of the latest electrons that launched an instance."""


@dataclass(frozen=True, kw_only=True)
class Charge:
    """One line of the record."""

    at: str
    """UTC time (ISO 8601) the charge ended."""
    kind: str
    stack: str
    task: str
    region: str
    instance_type: str
    market: str
    seconds: float
    usd: float | None
    """None: no price was known."""
    usd_per_hour: float | None
    sources: list[str] = field(default_factory=list)
    startup_seconds: float | None = None
    """Launch, boot and bootstrap of the electron's own new instance (None on a warm one)."""

    @property
    def when(self) -> datetime:
        return datetime.fromisoformat(self.at)


def record_path() -> Path:
    return cache_dir().parent / "costs.jsonl"


def add(charge: Charge) -> None:
    """Append `charge`; a record that cannot be written costs a warning, never the electron."""
    path = record_path()
    line = json.dumps(asdict(charge), sort_keys=True) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("could not add to the cost record %s: %s", path, exc)


def charges(since: datetime | None = None, path: Path | None = None) -> Iterator[Charge]:
    """The record's charges that ended at or after `since`; unreadable lines are skipped."""
    path = path or record_path()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        try:
            charge = Charge(**json.loads(line))
            if since is None or charge.when >= since:
                yield charge
        except (ValueError, TypeError):
            continue


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def measured_startups() -> list[float]:
    """Launch + boot + bootstrap of the latest electrons here that launched an instance."""
    found = [c.startup_seconds for c in charges() if c.startup_seconds]
    return [float(s) for s in found[-MEASURED_LAST:] if s is not None]


def median_startup() -> tuple[float, int] | None:
    """(median seconds, how many electrons) from the record; None before any."""
    found = measured_startups()
    return (statistics.median(found), len(found)) if found else None


def totals(found: list[Charge]) -> list[dict[str, Any]]:
    """Per region, instance type, market and kind: electrons, hours and USD (unpriced apart)."""
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for c in found:
        key = (c.region, c.instance_type, c.market, c.kind)
        row = rows.setdefault(
            key,
            {
                "region": c.region,
                "instance_type": c.instance_type,
                "market": c.market,
                "kind": c.kind,
                "charges": 0,
                "hours": 0.0,
                "usd": 0.0,
                "unpriced": 0,
            },
        )
        row["charges"] += 1
        row["hours"] += c.seconds / 3600.0
        if c.usd is None:
            row["unpriced"] += 1
        else:
            row["usd"] += c.usd
    return sorted(rows.values(), key=lambda r: -float(r["usd"]))


def startup_of(phases: Mapping[str, float]) -> float | None:
    """Launch (the stack until the instance has an address), boot (to SSH) and bootstrap, from
    an electron's phases; None when it did not launch an instance of its own."""
    parts = ("create stack", "wait for stack", "wait for SSH", "bootstrap")
    if not all(p in phases for p in parts):
        return None
    return sum(phases[p] for p in parts)
