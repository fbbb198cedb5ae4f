"""A real-boot guest whose dispatcher is killed with SIGKILL mid-task powers itself off after
`orphan_minutes`, and the sweep removes its stack (tests/harness/guests.py)."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import pytest
from dispatchers import dispatcher
from executor_support import guest_options, run
from harness import GuestBoot, GuestInstance, GuestNetwork, LoopbackNetwork, MotoServer
from harness.cloud_state import live_stacks
from harness.waiting import wait_until

from ec2_executor import sweep
from ec2_executor.options import build

pytestmark = pytest.mark.guest

ORPHAN_MINUTES = 2
"""The option's minimum."""


def test_a_guest_whose_dispatcher_is_killed_mid_task_powers_itself_off(
    guest_boot: GuestBoot,
    guest_subnet: LoopbackNetwork,
    guest_net: GuestNetwork,
    moto_server: MotoServer,
    tmp_path: Path,
) -> None:
    options = guest_options(
        guest_subnet.subnet_id, guest_net.gateway, orphan_minutes=ORPHAN_MINUTES
    )
    other = dispatcher(tmp_path, options, "guest-orphan")
    try:
        wait_until(lambda: bool(guest_boot.guests), 120, "the guest")
        [guest] = guest_boot.guests
        guest_boot.wait_ready(guest.instance_id)
        wait_until(lambda: (guest.prefix / "worker" / "busy").exists(), 120, "the task")
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    killed = time.monotonic()
    [stack] = [s for s in live_stacks(moto_server) if "guest-orphan" in s]
    said = _power_off_reason(guest, timeout=ORPHAN_MINUTES * 60 + 120)
    lived = time.monotonic() - killed
    stopped = guest_boot.wait_stopped(guest.instance_id, timeout=120)
    # The harness honours the power-off file (terminating the instance) or sees the guest go.
    assert stopped.stop_reason in ("the guest powered itself off", "instance is terminated")
    assert ORPHAN_MINUTES * 60 - 5 < lived < ORPHAN_MINUTES * 60 + 60, lived
    assert "no connection from the owner" in said

    sweep.forget()
    assert stack in run(sweep.sweep(build(options)))
    wait_until(lambda: stack not in live_stacks(moto_server), 60, "the orphan's stack to go")


def _power_off_reason(guest: GuestInstance, timeout: float) -> str:
    """What the guest wrote as it powered off, read before its root goes with it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not guest.stopped:
        with contextlib.suppress(OSError):
            return (guest.prefix / "poweroff").read_text()
        time.sleep(0.2)
    raise AssertionError(f"{guest.instance_id} wrote no power-off reason")
