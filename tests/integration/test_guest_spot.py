"""A real-boot guest on spot (tests/harness/guests.py) hears EC2's interruption notice from a
stand-in metadata endpoint inside it, on its own loopback (its watch's setting points there,
never at 169.254.169.254): the executor hears the notice at once, the task gets SIGTERM 30 s
before the end and checkpoints, and the electron fails saying so before the guest powers off."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from executor_support import execute, guest_options, run
from harness import GuestBoot, GuestInstance, GuestNetwork, LoopbackNetwork
from harness.guests import metadata_stand_in
from harness.metadata import issue_notice
from harness.waiting import wait_until

from ec2_executor import SpotInterruptionError
from ec2_executor.ec2 import EC2Executor
from ec2_executor.logs import log

pytestmark = pytest.mark.guest
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CHECKPOINT = "spot-checkpoint"
"""What the task writes in its home when it gets SIGTERM."""


def checkpointing() -> str:
    """Runs until SIGTERM, then saves its state and ends, as a task that checkpoints would."""
    import pathlib
    import signal

    def save(signum: int, frame: object) -> None:
        (pathlib.Path.home() / CHECKPOINT).write_text(f"saved on signal {signum}")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, save)
    time.sleep(600)
    return "not interrupted"


class _Heard(logging.Handler):
    """When (`time.monotonic()`) the executor logged the notice."""

    def __init__(self) -> None:
        super().__init__()
        self.at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.at is None and "spot interruption notice" in record.getMessage():
            self.at = time.monotonic()


def test_a_guest_relays_the_notice_and_its_task_gets_sigterm_before_the_end(
    guest_boot: GuestBoot,
    guest_subnet: LoopbackNetwork,
    guest_net: GuestNetwork,
    tmp_path: Path,
) -> None:
    ex = EC2Executor(**guest_options(guest_subnet.subnet_id, guest_net.gateway, spot=True))
    notices = tmp_path / "notices"
    saved: dict[str, str] = {}
    real_teardown = ex.teardown

    async def reading_teardown(metadata: dict[str, Any]) -> None:
        [guest] = guest_boot.guests  # read before the stack's deletion powers the guest off
        saved["checkpoint"] = (guest.root / "home/ec2-user" / CHECKPOINT).read_text()
        await real_teardown(metadata)

    ex.teardown = reading_teardown  # type: ignore[method-assign, assignment]
    heard = _Heard()
    log.addHandler(heard)

    async def scenario() -> tuple[GuestInstance, str, str]:
        task = asyncio.ensure_future(execute(ex, checkpointing, [], {}))
        guest = await asyncio.to_thread(
            wait_until, lambda: next(iter(guest_boot.guests), None), 180, "the guest"
        )
        await asyncio.to_thread(guest_boot.wait_booted, guest.instance_id, 180)  # its namespace
        with metadata_stand_in(guest, notices):
            await asyncio.to_thread(guest_boot.wait_ready, guest.instance_id)
            busy = guest.prefix / "worker" / "busy"
            await asyncio.to_thread(wait_until, busy.exists, 120, "the task")
            # 35 s ahead rather than AWS's 120: the SIGTERM comes 5 s after the notice.
            at = issue_notice(notices, in_seconds=35)
            with pytest.raises(SpotInterruptionError) as failed:
                await task
        return guest, at, str(failed.value)

    try:
        guest, at, message = run(scenario())
    finally:
        log.removeHandler(heard)
    assert saved["checkpoint"] == "saved on signal 15"
    assert f"The spot instance instance {guest.instance_id}" in message
    assert "Server.SpotInstanceTermination" in message
    assert f"(terminate at {at}); the task was sent SIGTERM at 20" in message
    stopped = guest_boot.wait_stopped(guest.instance_id, timeout=120)
    assert heard.at is not None and stopped.stopped_at is not None
    assert heard.at < stopped.stopped_at  # the notice reached the executor before power-off
