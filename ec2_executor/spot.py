"""Spot interruptions: the instance's notice as the executor hears it, the error that says what
happened, and where a reclaimed electron runs next (pure; the electron supplies the launch).

The instance's watchdog (`owner-watch.sh`) polls the metadata for the 2-minute notice; the
task's command (`run-task.sh`) says it at once on the open connection, and sends SIGTERM to the
task's process group 30 s before the end. The lines it writes are matched here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ec2_executor.cloud.capacity import Attempt, Placement
from ec2_executor.cost.meter import Meter
from ec2_executor.instance.protocol import MARK

RECLAIMED = "Server.SpotInstanceTermination"
"""The state reason of an instance EC2 reclaimed from the spot market."""
_NOTICE = re.compile(rf"^{MARK} spot interruption notice at (\S+): (\S+) at (\S+)$", re.M)
_SIGTERM = re.compile(rf"^{MARK} spot: sent SIGTERM to the task at ([^,\s]+)", re.M)


@dataclass(frozen=True)
class Notice:
    """EC2's interruption notice, as the instance relayed it."""

    seen: str
    """When the instance read the notice (UTC, ISO 8601)."""
    action: str
    """What EC2 will do: terminate, stop or hibernate."""
    at: str
    """When EC2 will do it."""
    sigterm_at: str = ""
    """When the task's process group was sent SIGTERM; empty when it was not (yet)."""

    def __str__(self) -> str:
        text = f"its interruption notice came at {self.seen} ({self.action} at {self.at})"
        if self.sigterm_at:
            text += f"; the task was sent SIGTERM at {self.sigterm_at}"
        return text


def notice_in(messages: str) -> Notice | None:
    """The notice among the task command's lines (its stderr), if one came."""
    found = _NOTICE.search(messages)
    if found is None:
        return None
    sigterm = _SIGTERM.search(messages)
    seen, action, at = found.groups()
    return Notice(seen, action, at, sigterm_at=sigterm[1] if sigterm else "")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reclaimed_text(where: str, notice: Notice | None, reason: str = RECLAIMED) -> str:
    """The error of an electron whose spot instance EC2 reclaimed: says so, and when."""
    told = (
        str(notice)
        if notice
        else f"no interruption notice reached the executor (seen reclaimed at {utc_now()})"
    )
    return f"EC2 reclaimed the spot instance {where} ({reason}); {told}."


def interrupted_task_text(where: str, notice: Notice) -> str:
    """The error of a task ended by the notice's SIGTERM (the instance still ran)."""
    return (
        f"The spot instance {where} is being reclaimed by EC2 ({RECLAIMED}): {notice}, and "
        f"it ended without a result."
    )


# --- recovery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run of the electron: where it went, and how it ended."""

    zone: str
    spot: bool
    reason: str = ""
    meter: Meter | None = field(default=None, compare=False)
    """The run's instance's meter, read when the run is listed (so the cost is current)."""

    def __str__(self) -> str:
        market = "spot" if self.spot else "on-demand"
        said = f"{self.zone or 'the region'} {market}: {self.reason or 'running'}"
        if self.meter is None or self.meter.started is None:
            return said
        usd = self.meter.usd
        cost = "cost unknown" if usd is None else f"${usd:.4f}"
        return f"{said} ({cost} over {self.meter.seconds:.0f} s)"


def next_market(spot: bool | str, reruns: int, runs: Sequence[Run]) -> bool | None:
    """Whether the next run asks for spot (True) or on-demand (False) after `runs` were
    reclaimed; None when no run is left. Under "fallback" the rerun goes on-demand, where EC2
    does not reclaim; under True it stays on spot, in another zone (`rerun_order`)."""
    if not spot or len(runs) > reruns:
        return None
    return spot is True


def rerun_order(placements: Sequence[Placement], spot: bool, runs: Sequence[Run]) -> list[Attempt]:
    """The launch attempts of a rerun: on spot, the zones no run was reclaimed in first (the
    reclaimed ones last, should no other have capacity); on-demand, every zone in order."""
    if not spot:
        return [Attempt(p, False) for p in placements]
    reclaimed = {r.zone for r in runs}
    fresh = [p for p in placements if p.zone not in reclaimed]
    return [Attempt(p, True) for p in fresh + [p for p in placements if p not in fresh]]


def run_reason(notice: Notice | None) -> str:
    """How a reclaimed run ended, in a few words, for the list of runs."""
    if notice is None:
        return f"reclaimed ({RECLAIMED}), no notice heard"
    told = f"reclaimed, notice at {notice.seen}"
    return told + (f", SIGTERM at {notice.sigterm_at}" if notice.sigterm_at else "")


def listed(runs: Sequence[Run]) -> str:
    """'run 1 in us-east-1a spot: reclaimed, notice at ... ($0.0042 over 1500 s); run 2 in ...'"""
    return "; ".join(f"run {n} in {run}" for n, run in enumerate(runs, start=1))


def final_text(name: str, reruns: int, runs: Sequence[Run], last: str) -> str:
    """The error once no rerun is left: the last run's error, then every run with its zone,
    market, reason and cost, and their sum."""
    known = [run.meter.usd for run in runs if run.meter and run.meter.usd is not None]
    total = f" In all ${sum(known):.4f}." if 1 < len(runs) == len(known) else ""
    return (
        f"{last} Stack {name!r} ran {len(runs)} time(s) ('spot_retries' {reruns}), each "
        f"reclaimed: {listed(runs)}.{total} A rerun starts the task again from the start; raise "
        f"'spot_retries', or use spot='fallback' to rerun on-demand."
    )
