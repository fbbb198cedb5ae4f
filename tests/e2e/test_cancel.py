"""`ct.cancel` on a running ec2 electron, through a real Covalent server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cloudpickle
import covalent as ct
import pytest
from e2e_support import assert_nothing_left, node_result
from harness import EmulatedBoot, MotoServer
from harness.covalent_server import CovalentServer
from harness.processes import alive
from harness.waiting import wait_for_task
from integration.remote_tasks import sleepy

pytestmark = pytest.mark.e2e
cloudpickle.register_pickle_by_value(sys.modules[__name__])

RESULT_TIMEOUT = 300.0


def test_cancel_stops_a_sleeping_electron_and_deletes_its_stack(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    @ct.electron(executor=ct.executor.EC2Executor(**local_settings))
    def sleeper(mark: str) -> str:
        return sleepy(600, mark)

    @ct.lattice
    def workflow(mark: str) -> str:
        return sleeper(mark)

    mark = tmp_path / "task"
    dispatch_id = ct.dispatch(workflow)(str(mark))
    task = wait_for_task(mark, RESULT_TIMEOUT)  # the task is running on the instance now

    ct.cancel(dispatch_id)
    result = covalent_server.wait_for_result(dispatch_id, RESULT_TIMEOUT)

    assert str(node_result(result, "sleeper")["status"]) == "CANCELLED"
    assert str(result.status) == "CANCELLED"
    (instance,) = emulated_boot.instances
    emulated_boot.wait_stopped(instance.instance_id)  # the stack's deletion ends the instance
    assert not alive(task)
    assert_nothing_left(moto_server)
