"""Electrons on `executor="ec2"` through a real Covalent server: failures, output, concurrency."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cloudpickle
import covalent as ct
import pytest
from e2e_support import E2E, node_result, overlap
from integration.remote_tasks import meet

pytestmark = pytest.mark.e2e

# The server unpickles these functions: ship them by value, as for a script run as __main__.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MEET_TIMEOUT = 120.0
"""How long one electron's task waits for the other's to start (they start seconds apart)."""


def test_remote_exception_fails_the_electron_with_its_traceback_in_stderr(e2e: E2E) -> None:
    @ct.electron(executor=e2e.executor())
    def explode() -> None:
        raise ValueError("boom")

    @ct.lattice
    def workflow() -> None:
        return explode()

    result = e2e.run(workflow)

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
    assert [record.booted for record in e2e.boot.instances] == [True]
    e2e.assert_nothing_left()


def test_stdout_and_stderr_come_back(e2e: E2E) -> None:
    # executor="ec2": the plugin's short name, with the server's [executors.ec2] settings.
    @ct.electron(executor="ec2")
    def chatty(x: int) -> int:
        print(f"to stdout {x}")
        print(f"to stderr {x}", file=sys.stderr)
        return x + 1

    @ct.lattice
    def workflow(x: int) -> int:
        return chatty(x)

    result = e2e.run(workflow, 41)

    assert str(result.status) == "COMPLETED", result.error
    assert result.result == 42
    node = node_result(result, "chatty")
    assert "to stdout 41" in node["stdout"], node
    assert "to stderr 41" in node["stderr"], node
    assert "to stderr" not in node["stdout"] and "to stdout" not in node["stderr"], node
    assert [record.booted for record in e2e.boot.instances] == [True]
    e2e.assert_nothing_left()


def test_two_electrons_run_on_two_stacks_at_the_same_time(e2e: E2E, tmp_path: Path) -> None:
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
    result = e2e.result(dispatch_id)

    assert str(result.status) == "COMPLETED", result.error
    assert [tuple(task) for task in result.result] == [("a", True), ("b", True)]

    stacks = {
        (s["StackName"], s["StackStatus"])
        for s in e2e.moto.client("cloudformation").list_stacks()["StackSummaries"]
        if dispatch_id in s["StackName"]  # the names start with the dispatch id
    }
    assert len(stacks) == 2 and {status for _, status in stacks} == {"DELETE_COMPLETE"}, stacks
    instances = e2e.boot.instances
    assert len(instances) == 2, instances
    assert len({record.private_ip for record in instances}) == 2
    assert all(record.booted and record.stopped for record in instances), instances
    lifetimes = [(r.booted_at, r.stopped_at) for r in instances]
    assert overlap(*lifetimes) > 0, lifetimes  # type: ignore[arg-type]
    e2e.assert_nothing_left()
