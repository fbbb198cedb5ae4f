"""A Covalent server killed with SIGKILL mid-task, then started again: the orphan's instance
powers itself off, and the next electron's setup sweeps its stack; nothing is left."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import covalent as ct
import pytest
from e2e_support import assert_nothing_left
from harness import EmulatedBoot, MotoServer
from harness.cloud_state import live_stacks
from harness.covalent_server import CovalentPaths, CovalentServer, own_servers
from harness.waiting import wait_for_task, wait_until
from integration.remote_tasks import sleepy

pytestmark = pytest.mark.e2e
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ORPHAN_SECONDS = 6


def sigkill(server: CovalentServer) -> None:
    for pid in server.processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not server.processes(), 30, "the server's end after SIGKILL")


@pytest.mark.parametrize(
    "boot_bootstrap_env",
    [{"EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1", "EC2_EXECUTOR_ORPHAN_SECONDS": str(ORPHAN_SECONDS)}],
)
def test_a_server_killed_mid_task_leaves_nothing_once_started_again(
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    paths = CovalentPaths.create(tmp_path / "covalent")

    @ct.electron(executor=ct.executor.EC2Executor(**local_settings))
    def sleeper(mark: str) -> str:
        return sleepy(600, mark)

    @ct.electron(executor=ct.executor.EC2Executor(**local_settings))
    def quick() -> int:
        return 1

    @ct.lattice
    def long_one(mark: str) -> str:
        return sleeper(mark)

    @ct.lattice
    def short_one() -> int:
        return quick()

    env = {**moto_server.env, "EC2_EXECUTOR_CACHE_DIR": str(paths.base / "ec2-executor-cache")}
    with own_servers(paths, env=env, executors={"ec2": local_settings}) as start:
        first = start()
        mark = tmp_path / "task"
        ct.dispatch(long_one)(str(mark))
        wait_for_task(mark, 180)  # the task is running on the instance now
        [orphan] = live_stacks(moto_server)
        [instance] = emulated_boot.instances
        sigkill(first)
        first._stopped = True  # gone; `covalent stop` on these paths is the next server's
        emulated_boot.wait_stopped(instance.instance_id, timeout=ORPHAN_SECONDS + 30)
        assert "no connection from the owner" in (instance.prefix / "poweroff").read_text()

        second = start()
        result = second.wait_for_result(ct.dispatch(short_one)(), 300)
        assert str(result.status) == "COMPLETED", second.log_tail()
        wait_until(lambda: orphan not in live_stacks(moto_server), 60, f"the sweep of {orphan}")
    assert_nothing_left(moto_server)
