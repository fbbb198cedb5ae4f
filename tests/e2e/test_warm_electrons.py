"""Warm instances through a real Covalent server: electrons in a row share one instance, each
in a fresh process, and the idle stack goes once it expires (the server's expiry is seconds)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import covalent as ct
import pytest
from e2e_support import E2E, E2E_IDLE_SECONDS, RESULT_TIMEOUT
from harness import MotoServer
from harness.processes import alive
from harness.waiting import wait_for_task, wait_until
from integration.remote_tasks import sleepy

pytestmark = pytest.mark.e2e

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SLOW_BOOT = 600
"""`provision_timeout` of these electrons: a loaded machine boots slowly."""


def _dispatch_stacks(moto: MotoServer, dispatch_id: str) -> list[tuple[str, str]]:
    summaries = moto.client("cloudformation").list_stacks()["StackSummaries"]
    return [
        (s["StackName"], s["StackStatus"])
        for s in summaries
        if s["StackName"].startswith(f"ec2-executor-{dispatch_id}")
    ]


def test_five_electrons_in_a_row_share_one_warm_instance(e2e: E2E) -> None:
    warm = e2e.executor(keep_warm_minutes=5, provision_timeout=SLOW_BOOT)

    @ct.electron(executor=warm)
    def step(seen: str) -> str:
        import json

        # A mark left by an earlier task would show here: every task is a fresh process.
        assert not hasattr(json, "warm_mark"), "state leaked from an earlier electron"
        json.warm_mark = True  # type: ignore[attr-defined]
        return f"{seen} {os.getpid()}:{os.getppid()}"

    @ct.lattice
    def workflow() -> str:
        seen = ""
        for _ in range(5):  # each step waits for the one before: electrons in a row
            seen = step(seen)
        return seen

    dispatch_id = ct.dispatch(workflow)()
    result = e2e.result(dispatch_id)

    assert str(result.status) == "COMPLETED", result.error
    pairs = [pair.split(":") for pair in result.result.split()]
    pids, parents = [p for p, _ in pairs], [q for _, q in pairs]
    assert len(set(pids)) == 5 and len(set(parents)) == 1
    assert len(_dispatch_stacks(e2e.moto, dispatch_id)) == 1
    assert [record.booted for record in e2e.boot.instances] == [True]
    _wait_for_the_idle_expiry(e2e, dispatch_id)


def test_cancel_on_a_warm_instance_kills_the_task_and_lends_the_instance_again(
    e2e: E2E, tmp_path: Path
) -> None:
    warm = e2e.executor(keep_warm_minutes=5, provision_timeout=SLOW_BOOT)
    mark = tmp_path / "task"  # the emulated instance is this machine

    @ct.electron(executor=warm)
    def sleeper(mark: str) -> str:
        return sleepy(600, mark)

    @ct.electron(executor=warm)
    def where() -> int:
        return os.getppid()

    @ct.lattice
    def sleeps(mark: str) -> str:
        return sleeper(mark)

    @ct.lattice
    def quick() -> int:
        return where()

    first = ct.dispatch(sleeps)(str(mark))
    task = wait_for_task(mark, RESULT_TIMEOUT)

    ct.cancel(first)
    cancelled = e2e.result(first)
    assert str(cancelled.status) == "CANCELLED"
    assert not alive(task)
    # The kill was confirmed, so the instance went back to the pool: the next dispatch runs on
    # it, without a stack of its own.
    second = ct.dispatch(quick)()
    result = e2e.result(second)
    assert str(result.status) == "COMPLETED", result.error
    assert _dispatch_stacks(e2e.moto, second) == []
    assert [record.booted for record in e2e.boot.instances] == [True]
    _wait_for_the_idle_expiry(e2e, first)


def _wait_for_the_idle_expiry(e2e: E2E, dispatch_id: str) -> None:
    """The server deletes the idle stack once it expires; then nothing is left."""

    def deleted() -> bool:
        stacks = _dispatch_stacks(e2e.moto, dispatch_id)
        return all(status == "DELETE_COMPLETE" for _, status in stacks)

    what = f"the deletion of the idle stack of {dispatch_id}"
    wait_until(deleted, E2E_IDLE_SECONDS + 120, what, interval=1.0)
    e2e.boot.wait_stopped(e2e.boot.instances[0].instance_id, timeout=30)
    e2e.assert_nothing_left()
