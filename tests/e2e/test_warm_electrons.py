"""Warm instances through a real Covalent server: electrons in a row share one instance, each
in a fresh process, and the idle stack goes once it expires (the server's expiry is seconds)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import cloudpickle
import covalent as ct
import pytest
from e2e_support import E2E_IDLE_SECONDS, assert_nothing_left
from harness import EmulatedBoot, MotoServer
from harness.covalent_server import CovalentServer

pytestmark = pytest.mark.e2e

cloudpickle.register_pickle_by_value(sys.modules[__name__])

RESULT_TIMEOUT = 300.0


def _dispatch_stacks(moto: MotoServer, dispatch_id: str) -> list[tuple[str, str]]:
    summaries = moto.client("cloudformation").list_stacks()["StackSummaries"]
    return [
        (s["StackName"], s["StackStatus"])
        for s in summaries
        if s["StackName"].startswith(f"ec2-executor-{dispatch_id}")
    ]


def test_five_electrons_in_a_row_share_one_warm_instance(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
) -> None:
    settings = {**local_settings, "provision_timeout": 600}  # a loaded machine boots slowly
    warm = ct.executor.EC2Executor(**settings, keep_warm_minutes=5)

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
    result = covalent_server.wait_for_result(dispatch_id, RESULT_TIMEOUT)

    assert str(result.status) == "COMPLETED", result.error
    pairs = [pair.split(":") for pair in result.result.split()]
    pids, parents = [p for p, _ in pairs], [q for _, q in pairs]
    assert len(set(pids)) == 5 and len(set(parents)) == 1
    assert len(_dispatch_stacks(moto_server, dispatch_id)) == 1
    assert [record.booted for record in emulated_boot.instances] == [True]
    # The server deletes the idle stack once it expires.
    deadline = time.monotonic() + E2E_IDLE_SECONDS + 120
    while any(s != "DELETE_COMPLETE" for _, s in _dispatch_stacks(moto_server, dispatch_id)):
        assert time.monotonic() < deadline, _dispatch_stacks(moto_server, dispatch_id)
        time.sleep(1)
    emulated_boot.wait_stopped(emulated_boot.instances[0].instance_id, timeout=30)
    assert_nothing_left(moto_server)
