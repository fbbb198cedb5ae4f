"""`ct.cancel` on an ec2 electron, through a real Covalent server: while its task runs, and
while it waits for its instance's SSH."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cloudpickle
import covalent as ct
import pytest
from e2e_support import E2E, RESULT_TIMEOUT, node_result
from harness.processes import alive
from harness.waiting import wait_for_task
from integration.remote_tasks import sleepy

pytestmark = pytest.mark.e2e
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CANCEL_BOUND = 60.0
"""Far below 'provision_timeout' (120 s in the local settings): an electron that ends within it
after the cancel did not wait for SSH until the provisioning gave up."""


def test_cancel_stops_a_sleeping_electron_and_deletes_its_stack(e2e: E2E, tmp_path: Path) -> None:
    @ct.electron(executor=e2e.executor())
    def sleeper(mark: str) -> str:
        return sleepy(600, mark)

    @ct.lattice
    def workflow(mark: str) -> str:
        return sleeper(mark)

    mark = tmp_path / "task"
    dispatch_id = ct.dispatch(workflow)(str(mark))
    task = wait_for_task(mark, RESULT_TIMEOUT)  # the task is running on the instance now

    ct.cancel(dispatch_id)
    result = e2e.result(dispatch_id)

    assert str(node_result(result, "sleeper")["status"]) == "CANCELLED"
    assert str(result.status) == "CANCELLED"
    (instance,) = e2e.boot.instances
    e2e.boot.wait_stopped(instance.instance_id)  # the stack's deletion ends the instance
    assert not alive(task)
    e2e.assert_nothing_left()


def test_a_cancel_while_the_electron_waits_for_ssh_ends_it_and_leaves_nothing(e2e: E2E) -> None:
    @ct.electron(executor=e2e.executor())
    def never_runs() -> str:
        return "ran"

    @ct.lattice
    def workflow() -> str:
        return never_runs()

    e2e.boot.hold()  # the instance's sshd does not start: the electron waits for SSH
    dispatch_id = ct.dispatch(workflow)()
    instance = e2e.boot.wait_knocked(RESULT_TIMEOUT)  # the executor tries SSH now

    cancelled_at = time.monotonic()
    ct.cancel(dispatch_id)
    result = e2e.result(dispatch_id)
    took = time.monotonic() - cancelled_at

    assert str(node_result(result, "never_runs")["status"]) == "CANCELLED"
    assert str(result.status) == "CANCELLED"
    assert took < CANCEL_BOUND, f"the cancel took {took:.0f} s"
    assert e2e.boot.instances == [instance] and not instance.booted
    e2e.assert_nothing_left()
