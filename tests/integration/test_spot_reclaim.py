"""Spot interruptions against the moto server and emulated instances: the instance relays EC2's
notice (from the harness's stand-in metadata endpoint, tests/harness/metadata.py), EC2 reclaims
the instance (terminated, state reason `Server.SpotInstanceTermination`), and the electron
reruns or fails saying so."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from click.testing import CliRunner
from covalent._shared_files.exceptions import TaskCancelledError
from executor_support import NewExecutor, execute, run
from harness import EmulatedBoot, MotoServer
from harness.cloud_state import assert_nothing_left
from harness.faults import CapacityPlan, capacity_refused
from harness.waiting import wait_for_task
from remote_tasks import announce

from ec2_executor import SpotInterruptionError
from ec2_executor.cli.main import main
from ec2_executor.cli.states import INTERRUPTED
from ec2_executor.errors import CapacityError
from ec2_executor.logs import log

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(autouse=True)
def quick_instance_watch(
    monkeypatch: pytest.MonkeyPatch, package_log: pytest.LogCaptureFixture
) -> None:
    """The reclaim is seen within half a second; the attempts' log lines are kept."""
    monkeypatch.setattr("ec2_executor.watch.INSTANCE_POLL", 0.5)
    package_log.set_level(logging.INFO)


def run_until(marks: str, go: str) -> str:
    """Announces run N at `marks`.N, then returns once `go` exists."""
    n = 1
    while os.path.exists(f"{marks}.{n}"):
        n += 1
    announce(f"{marks}.{n}")
    while not os.path.exists(go):
        time.sleep(0.05)
    return f"done on run {n}"


async def _reclaim_once_noticed(
    boot: EmulatedBoot,
    moto: MotoServer,
    mark: Path,
    log: pytest.LogCaptureFixture,
) -> str:
    """Once the first run's task runs: EC2's notice (2 minutes ahead, as on AWS), then, once
    the executor has heard it, the instance reclaimed. Returns the instance's id."""
    await asyncio.to_thread(wait_for_task, mark)
    [first] = boot.instances
    assert boot.metadata is not None
    boot.metadata.issue(first.instance_id, in_seconds=120)
    while "spot interruption notice" not in log.text:
        await asyncio.sleep(0.1)
    moto.reclaim_spot(first.instance_id)
    return first.instance_id


def test_a_reclaimed_electron_runs_again_on_demand_and_completes(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    package_log: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    ex = new_executor(spot="fallback")  # spot_retries: 1 by default
    marks, go = tmp_path / "run", tmp_path / "go"

    async def scenario() -> tuple[str, str]:
        task = asyncio.ensure_future(execute(ex, run_until, [str(marks), str(go)], {}))
        reclaimed = await _reclaim_once_noticed(
            emulated_boot, moto_reset, Path(f"{marks}.1"), package_log
        )
        await asyncio.to_thread(wait_for_task, Path(f"{marks}.2"))  # the rerun, from the start
        go.touch()
        return reclaimed, await task

    reclaimed, result = run(scenario())
    assert result == "done on run 2"
    first, second = emulated_boot.instances
    assert first.instance_id == reclaimed and second.instance_id != reclaimed
    text = package_log.text
    assert "spot interruption notice: EC2 will terminate the instance" in text
    assert "run 1 in " in text and " spot: reclaimed, notice at " in text
    assert "runs again from the start on a new on-demand instance" in text
    assert reclaimed in text and "Server.SpotInstanceTermination" in text
    assert_nothing_left(moto_reset)


def test_without_retries_the_electron_fails_naming_the_reclaim_and_the_notice(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    package_log: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """spot=True reruns nothing by default; until its stack is gone, `list` shows it
    interrupted."""
    ex = new_executor(spot=True)
    listed: list[dict[str, Any]] = []
    real_teardown = ex.teardown

    async def listing_teardown(metadata: dict[str, Any]) -> None:
        done = await asyncio.to_thread(CliRunner().invoke, main, ["list", "--json"])
        listed.extend(json.loads(done.output))
        await real_teardown(metadata)

    ex.teardown = listing_teardown  # type: ignore[method-assign, assignment]
    marks, go = tmp_path / "run", tmp_path / "go"

    async def scenario() -> str:
        task = asyncio.ensure_future(execute(ex, run_until, [str(marks), str(go)], {}))
        reclaimed = await _reclaim_once_noticed(
            emulated_boot, moto_reset, Path(f"{marks}.1"), package_log
        )
        with pytest.raises(SpotInterruptionError) as failed:
            await task
        message = str(failed.value)
        assert f"EC2 reclaimed the spot instance {reclaimed}" in message
        assert "(Server.SpotInstanceTermination); its interruption notice came at 20" in message
        assert "'spot_retries' 0" in message and "run 1 in " in message
        assert re.search(r"run 1 in \S+ spot: reclaimed[^;]*\(\$\d+\.\d{4} over \d+ s\)", message)
        assert "terminated" not in message.split("(Server")[0]
        return reclaimed

    run(scenario())
    assert [row["state"] for row in listed] == [INTERRUPTED]
    assert len(emulated_boot.instances) == 1  # no rerun
    assert_nothing_left(moto_reset)


class _CancelOnRerun(logging.Handler):
    """Covalent's cancel flag, raised as the electron logs that it runs the task again."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.pulled = False

    def emit(self, record: logging.LogRecord) -> None:
        self.pulled = self.pulled or "runs again from the start" in record.getMessage()

    async def __call__(self) -> bool:
        return self.pulled


def test_a_cancel_during_the_rerun_ends_it(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    package_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr("ec2_executor.watch.CANCEL_POLL", 0.2)
    ex = new_executor(spot="fallback")
    cancel = _CancelOnRerun()
    ex._cancel_requested = cancel  # type: ignore[method-assign]
    log.addHandler(cancel)
    marks, go = tmp_path / "run", tmp_path / "go"

    async def scenario() -> None:
        task = asyncio.ensure_future(execute(ex, run_until, [str(marks), str(go)], {}))
        await _reclaim_once_noticed(emulated_boot, moto_reset, Path(f"{marks}.1"), package_log)
        with pytest.raises(TaskCancelledError):
            await task

    try:
        run(scenario())
    finally:
        log.removeHandler(cancel)
    assert cancel.pulled
    assert not Path(f"{marks}.2").exists()  # the rerun's task never ran
    assert_nothing_left(moto_reset)


def test_a_rerun_that_cannot_launch_fails_naming_the_reclaimed_run_and_its_cost(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    package_log: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """After the reclaim, no zone has capacity: the rerun's launch fails, and its error says
    what came before it (the reclaimed run, with its zone and cost)."""
    ex = new_executor(spot="fallback")
    marks, go = tmp_path / "run", tmp_path / "go"

    async def scenario(plan: CapacityPlan) -> str:
        task = asyncio.ensure_future(execute(ex, run_until, [str(marks), str(go)], {}))
        await asyncio.to_thread(wait_for_task, Path(f"{marks}.1"))
        plan.zones = {f"us-east-1{z}" for z in "abcdef"}  # once the first run has its instance
        await _reclaim_once_noticed(emulated_boot, moto_reset, Path(f"{marks}.1"), package_log)
        with pytest.raises(CapacityError) as failed:
            await task
        return str(failed.value)

    with capacity_refused(CapacityPlan()) as plan:
        message = run(scenario(plan))
    assert "We currently do not have sufficient" in message  # EC2's words, from the rerun
    assert re.search(
        r"before it, run 1 in us-east-1\w spot: reclaimed, notice at \S+ \(\$\d+\.\d{4} over "
        r"\d+ s\)",
        message,
    ), message
    assert [(spot, said) for _, spot, said in plan.launches] == [
        (True, "launched"),
        (False, "refused"),
    ]
    assert not Path(f"{marks}.2").exists()
    assert_nothing_left(moto_reset)
