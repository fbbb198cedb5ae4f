"""`ct.cancel` on a running ec2 electron, through a real Covalent server."""

from __future__ import annotations

import sys
import time
from typing import Any

import cloudpickle
import covalent as ct
import pytest
from e2e_support import assert_nothing_left, node_result
from harness import EmulatedBoot, MotoServer
from harness.covalent_server import CovalentServer

pytestmark = pytest.mark.e2e
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_cancel_stops_a_sleeping_electron_and_deletes_its_stack(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
) -> None:
    @ct.electron(executor=ct.executor.EC2Executor(**local_settings))
    def sleeper() -> str:
        time.sleep(600)
        return "woke"

    @ct.lattice
    def workflow() -> str:
        return sleeper()

    dispatch_id = ct.dispatch(workflow)()
    deadline = time.monotonic() + 180
    while not any(r.bootstrap_done.is_set() for r in emulated_boot.instances):
        assert time.monotonic() < deadline, "the electron's instance never booted"
        time.sleep(0.5)
    time.sleep(3)  # the task is running on the instance now

    ct.cancel(dispatch_id)
    result = covalent_server.wait_for_result(dispatch_id, 300)

    assert str(node_result(result, "sleeper")["status"]) == "CANCELLED"
    assert str(result.status) == "CANCELLED"
    assert all(record.stopped for record in emulated_boot.instances)
    assert_nothing_left(moto_server)
