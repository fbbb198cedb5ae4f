"""Electrons on `executor="ec2"` through a real Covalent server: failures, output, concurrency."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cloudpickle
import covalent as ct
import pytest
from e2e_support import assert_nothing_left, node_result, overlap
from harness import EmulatedBoot, MotoServer
from harness.covalent_server import CovalentServer
from integration.remote_tasks import meet

pytestmark = pytest.mark.e2e

# The server unpickles these functions: ship them by value, as for a script run as __main__.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

RESULT_TIMEOUT = 300.0
MEET_TIMEOUT = 120.0
"""How long one electron's task waits for the other's to start (they start seconds apart)."""


def test_remote_exception_fails_the_electron_with_its_traceback_in_stderr(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
) -> None:
    @ct.electron(executor=ct.executor.EC2Executor(**local_settings))
    def explode() -> None:
        raise ValueError("boom")

    @ct.lattice
    def workflow() -> None:
        return explode()

    result = covalent_server.wait_for_result(ct.dispatch(workflow)(), RESULT_TIMEOUT)

    assert str(result.status) == "FAILED"
    node = node_result(result, "explode")
    assert str(node["status"]) == "FAILED"
    # As on Covalent's own executors: the streams kept, the remote traceback last in stderr.
    # The function was shipped by value, so the instance has no source file to quote: the
    # frame reads `File "<dynamic-code>", ... in explode`.
    stderr = node["stderr"] or ""
    assert stderr.startswith("Traceback (most recent call last)"), node
    assert ", in explode\n" in stderr, node
    assert stderr.rstrip().endswith("ValueError: boom"), node
    assert [record.booted for record in emulated_boot.instances] == [True]
    assert_nothing_left(moto_server)


def test_stdout_and_stderr_come_back(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
) -> None:
    # executor="ec2": the plugin's short name, with the server's [executors.ec2] settings.
    @ct.electron(executor="ec2")
    def chatty(x: int) -> int:
        print(f"to stdout {x}")
        print(f"to stderr {x}", file=sys.stderr)
        return x + 1

    @ct.lattice
    def workflow(x: int) -> int:
        return chatty(x)

    result = covalent_server.wait_for_result(ct.dispatch(workflow)(41), RESULT_TIMEOUT)

    assert str(result.status) == "COMPLETED", result.error
    assert result.result == 42
    node = node_result(result, "chatty")
    assert "to stdout 41" in node["stdout"], node
    assert "to stderr 41" in node["stderr"], node
    assert "to stderr" not in node["stdout"] and "to stdout" not in node["stderr"], node
    assert [record.booted for record in emulated_boot.instances] == [True]
    assert_nothing_left(moto_server)


def test_two_electrons_run_on_two_stacks_at_the_same_time(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    tmp_path: Path,
) -> None:
    @ct.electron(executor="ec2")
    def waits_for(tag: str, other: str, marks: str) -> tuple[str, bool]:
        # Returns True only once the other electron's task runs too: the two overlap.
        return tag, meet(f"{marks}/{tag}", f"{marks}/{other}", timeout=MEET_TIMEOUT)

    @ct.electron
    def both(a: Any, b: Any) -> list[Any]:
        return [a, b]

    @ct.lattice
    def workflow(marks: str) -> list[Any]:
        return both(waits_for("a", "b", marks), waits_for("b", "a", marks))

    dispatch_id = ct.dispatch(workflow)(str(tmp_path))
    result = covalent_server.wait_for_result(dispatch_id, RESULT_TIMEOUT)

    assert str(result.status) == "COMPLETED", result.error
    assert [tuple(task) for task in result.result] == [("a", True), ("b", True)]

    stacks = {
        (s["StackName"], s["StackStatus"])
        for s in moto_server.client("cloudformation").list_stacks()["StackSummaries"]
        if dispatch_id in s["StackName"]  # the names start with the dispatch id
    }
    assert len(stacks) == 2 and {status for _, status in stacks} == {"DELETE_COMPLETE"}, stacks
    instances = emulated_boot.instances
    assert len(instances) == 2, instances
    assert len({record.private_ip for record in instances}) == 2
    assert all(record.booted and record.stopped for record in instances), instances
    lifetimes = [(r.booted_at, r.stopped_at) for r in instances]
    assert overlap(*lifetimes) > 0, lifetimes  # type: ignore[arg-type]
    assert_nothing_left(moto_server)
