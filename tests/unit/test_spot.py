"""Spot interruptions, the pure parts: the notice as run-task.sh says it, the errors' text, and
where a reclaimed electron runs next."""

from __future__ import annotations

import pytest

from ec2_executor.cloud.capacity import Attempt, Placement
from ec2_executor.cost import prices
from ec2_executor.cost.meter import Meter
from ec2_executor.errors import SpotInterruptionError, TaskError
from ec2_executor.instance.protocol import Exit
from ec2_executor.remote import task_failure
from ec2_executor.spot import (
    Notice,
    Run,
    final_text,
    next_market,
    notice_in,
    reclaimed_text,
    rerun_order,
    run_reason,
)

# What run-task.sh writes on stderr (its relay), among its other lines.
NOTICE_LINE = (
    "ec2-executor: spot interruption notice at 2026-01-01T12:00:03Z: terminate at "
    "2026-01-01T12:02:00Z"
)
SIGTERM_LINE = (
    "ec2-executor: spot: sent SIGTERM to the task at 2026-01-01T12:01:30Z, 30 s before "
    "2026-01-01T12:02:00Z"
)
ZONES = [Placement("us-east-1a", "subnet-a"), Placement("us-east-1b", "subnet-b")]


def test_the_notice_and_its_sigterm_are_read_from_the_commands_lines() -> None:
    messages = f"ec2-executor: bootstrap waited 1.0 2.0\n{NOTICE_LINE}\n{SIGTERM_LINE}\n"
    assert notice_in(messages) == Notice(
        seen="2026-01-01T12:00:03Z",
        action="terminate",
        at="2026-01-01T12:02:00Z",
        sigterm_at="2026-01-01T12:01:30Z",
    )
    assert notice_in(NOTICE_LINE) == Notice(
        "2026-01-01T12:00:03Z", "terminate", "2026-01-01T12:02:00Z"
    )
    assert notice_in("ec2-executor: warm worker 12\n") is None


def test_a_reclaimed_electron_is_said_so_with_the_notices_time_never_a_bare_terminated() -> None:
    text = reclaimed_text("i-1 of stack 's'", notice_in(NOTICE_LINE))
    assert text.startswith("EC2 reclaimed the spot instance i-1 of stack 's'")
    assert "Server.SpotInstanceTermination" in text
    assert "notice came at 2026-01-01T12:00:03Z (terminate at 2026-01-01T12:02:00Z)" in text
    unheard = reclaimed_text("i-1", None)
    assert "no interruption notice reached the executor (seen reclaimed at 20" in unheard


def test_a_task_ended_by_the_notices_sigterm_is_interrupted_and_one_that_failed_is_not() -> None:
    stderr = (
        f"{NOTICE_LINE}\n{SIGTERM_LINE}\nec2-executor: the task's process ended without a result"
    )
    interrupted = task_failure("i-1", Exit.NO_RESULT, b"", stderr)
    assert isinstance(interrupted, SpotInterruptionError)
    assert "SIGTERM at 2026-01-01T12:01:30Z" in str(interrupted)
    # A notice alone (no SIGTERM sent yet) does not make the task's own end an interruption.
    own = task_failure("i-1", Exit.NO_RESULT, b"", f"{NOTICE_LINE}\nec2-executor: it died")
    assert isinstance(own, TaskError) and not isinstance(own, SpotInterruptionError)


@pytest.mark.parametrize(
    ("spot", "reruns", "reclaimed", "expected"),
    [
        ("fallback", 1, 1, False),  # on-demand, where EC2 does not reclaim
        ("fallback", 1, 2, None),
        (True, 0, 1, None),
        (True, 2, 1, True),  # spot again, in another zone
        (True, 2, 3, None),
        (False, 3, 1, None),
    ],
)
def test_the_next_run_goes_on_demand_under_fallback_and_on_spot_under_true(
    spot: bool | str, reruns: int, reclaimed: int, expected: bool | None
) -> None:
    runs = [Run("us-east-1a", True, "reclaimed")] * reclaimed
    assert next_market(spot, reruns, runs) is expected


def test_a_spot_rerun_tries_the_zones_no_run_was_reclaimed_in_first() -> None:
    runs = [Run("us-east-1a", True, "reclaimed")]
    assert rerun_order(ZONES, True, runs) == [Attempt(ZONES[1], True), Attempt(ZONES[0], True)]
    assert rerun_order(ZONES, False, runs) == [Attempt(z, False) for z in ZONES]
    assert rerun_order(ZONES[:1], True, runs) == [Attempt(ZONES[0], True)]  # the only zone


def test_the_final_error_lists_every_run_with_its_zone_market_and_reason() -> None:
    runs = [
        Run("us-east-1a", True, run_reason(notice_in(NOTICE_LINE))),
        Run("us-east-1b", True, run_reason(None)),
    ]
    text = final_text("stack-1", 1, runs, "EC2 reclaimed the spot instance i-2 (...).")
    assert text.startswith("EC2 reclaimed the spot instance i-2")
    assert "run 1 in us-east-1a spot: reclaimed, notice at 2026-01-01T12:00:03Z" in text
    assert "run 2 in us-east-1b spot: reclaimed (Server.SpotInstanceTermination), no notice" in text
    assert "'spot_retries' 1" in text and "from the start" in text


def test_the_final_error_gives_each_run_s_cost_and_their_sum() -> None:
    rate = prices.Rate(
        region="us-east-1",
        instance_type="t3.small",
        market=prices.SPOT,
        instance=prices.Figure(0.036, "test"),
        volume=prices.Figure(0.0, "test"),
    )
    first, second = Meter(), Meter()
    first.start(rate, at=1000.0)
    first.stop(at=1000.0 + 3600.0)  # an hour: $0.036
    second.start(rate, at=5000.0)
    second.stop(at=5000.0 + 1800.0)  # half an hour: $0.018
    runs = [
        Run("us-east-1a", True, "reclaimed", first),
        Run("us-east-1b", True, "reclaimed", second),
    ]
    text = final_text("stack-1", 1, runs, "EC2 reclaimed the spot instance i-2 (...).")
    assert "run 1 in us-east-1a spot: reclaimed ($0.0360 over 3600 s)" in text
    assert "run 2 in us-east-1b spot: reclaimed ($0.0180 over 1800 s)" in text
    assert "In all $0.0540." in text
    unpriced = Meter()
    unpriced.start(None, at=1000.0)
    runs[1] = Run("us-east-1b", True, "reclaimed", unpriced)
    text = final_text("stack-1", 1, runs, "reclaimed.")
    assert "reclaimed (cost unknown over " in text and "In all" not in text
