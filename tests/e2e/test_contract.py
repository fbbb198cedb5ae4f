"""What Covalent asks of an executor besides running a task, through a real Covalent server:
a task cancelled before it started (`receive`), Covalent's own helper nodes, and a task's
failure with its streams, as Covalent's own functional test `error_reporting` expects."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import covalent as ct
import pytest
from e2e_support import E2E, RESULT_TIMEOUT, node_result
from harness import MotoServer
from harness.covalent_server import CovalentServer
from harness.waiting import wait_until

from ec2_executor.cloud.stacks import stack_name

pytestmark = pytest.mark.e2e
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def node_ids(result: Any) -> dict[str, int]:
    """Node id by name (for a name given to several nodes: one of them)."""
    graph = result.lattice.transport_graph
    return {graph.get_node_value(n, "name"): n for n in graph._graph.nodes}


def helper_nodes(result: Any) -> dict[int, str]:
    """Covalent's own nodes (parameters aside), by id."""
    graph = result.lattice.transport_graph
    names = {n: str(graph.get_node_value(n, "name")) for n in graph._graph.nodes}
    return {
        n: name for n, name in names.items() if name.startswith(":") and ":parameter:" not in name
    }


def stacks_of(moto: MotoServer, dispatch_id: str) -> list[str]:
    """Every stack ever created for the dispatch (deleted ones too)."""
    summaries = moto.client("cloudformation").list_stacks()["StackSummaries"]
    return sorted(s["StackName"] for s in summaries if s["StackName"] in _names(dispatch_id))


def _names(dispatch_id: str) -> set[str]:
    return {stack_name(dispatch_id, node) for node in range(100)}


def hold(started: str, release: str) -> int:
    """On the local executor: says it started, then waits for the test to let it finish."""
    Path(started).touch()
    deadline = time.monotonic() + 120
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return 1


held = ct.electron(hold, executor="local")


class Gate:
    """The files a `hold` task and the test meet at."""

    def __init__(self, tmp_path: Path) -> None:
        self.started, self.release = tmp_path / "started", tmp_path / "release"

    @property
    def args(self) -> tuple[str, str]:
        return str(self.started), str(self.release)

    def wait_started(self) -> None:
        wait_until(self.started.exists, 120, "the holding task's start")

    def open(self) -> None:
        self.release.touch()

    def cancelled_while_held(self, workflow: Any) -> str:
        """Dispatch `workflow(started, release)`, cancel it while its `held` task waits, then
        let that task finish. Returns the dispatch id."""
        dispatch_id: str = ct.dispatch(workflow)(*self.args)
        self.wait_started()
        ct.cancel(dispatch_id)
        self.open()
        return dispatch_id


# --- cancelled before it started ------------------------------------------------------------


def test_a_task_cancelled_before_it_started_is_cancelled_and_creates_nothing(
    e2e: E2E, tmp_path: Path
) -> None:
    @ct.electron(executor=e2e.executor())
    def after(x: int) -> int:
        return x + 1

    @ct.lattice
    def workflow(started: str, release: str) -> int:
        return after(held(started, release))

    result = e2e.result(Gate(tmp_path).cancelled_while_held(workflow))

    assert str(node_result(result, "after")["status"]) == "CANCELLED", result
    assert str(result.status) == "CANCELLED"
    assert stacks_of(e2e.moto, result.dispatch_id) == []
    assert e2e.boot.instances == []


def test_one_of_several_cancelled_before_it_started(e2e: E2E, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    on_ec2 = e2e.executor()

    @ct.electron(executor=on_ec2)
    def first(x: int) -> int:
        return x + 1

    @ct.electron(executor=on_ec2)
    def second(x: int) -> int:
        return x + 2

    @ct.electron(executor=on_ec2)
    def third(x: int) -> int:
        return x + 3

    @ct.lattice
    def workflow(started: str, release: str) -> list[int]:
        x = held(started, release)
        return [first(x), second(x), third(x)]

    dispatch_id = ct.dispatch(workflow)(*gate.args)
    gate.wait_started()
    ids = node_ids(ct.get_result(dispatch_id, wait=False))
    ct.cancel(dispatch_id, task_ids=[ids["second"]])
    gate.open()
    result = e2e.result(dispatch_id)

    statuses = {
        name: str(node_result(result, name)["status"]) for name in ("first", "second", "third")
    }
    assert statuses == {"first": "COMPLETED", "second": "CANCELLED", "third": "COMPLETED"}
    assert str(result.status) == "CANCELLED"
    assert stacks_of(e2e.moto, dispatch_id) == sorted(
        stack_name(dispatch_id, ids[name]) for name in ("first", "third")
    )
    assert len(e2e.boot.instances) == 2
    e2e.assert_nothing_left()


def test_a_task_in_a_sublattice_cancelled_before_it_started(e2e: E2E, tmp_path: Path) -> None:
    @ct.electron(executor=e2e.executor())
    def after(x: int) -> int:
        return x + 1

    @ct.electron
    @ct.lattice
    def inner(started: str, release: str) -> int:
        return after(held(started, release))

    @ct.lattice
    def workflow(started: str, release: str) -> int:
        return inner(started, release)

    result = e2e.result(Gate(tmp_path).cancelled_while_held(workflow))

    graph = result.lattice.transport_graph
    sub_id = graph.get_node_value(node_ids(result)[":sublattice:inner"], "sub_dispatch_id")
    sub = e2e.result(sub_id)
    assert str(node_result(sub, "after")["status"]) == "CANCELLED", sub
    assert str(sub.status) == "CANCELLED"
    assert str(result.status) == "CANCELLED"
    assert stacks_of(e2e.moto, sub_id) == []
    assert e2e.boot.instances == []


# --- Covalent's helper nodes ----------------------------------------------------------------


class Box:
    def __init__(self, value: int) -> None:
        self.value = value


def test_helper_nodes_get_no_instance(e2e: E2E) -> None:
    on_ec2 = e2e.executor()

    @ct.electron(executor=on_ec2)
    def make() -> dict[str, Any]:
        return {"pair": [1, 2], "box": Box(3)}

    @ct.electron(executor=on_ec2)
    def total(values: list[int], extra: dict[str, list[int]]) -> int:
        return sum(values) + sum(extra["k"])

    @ct.lattice
    def workflow() -> int:
        made = make()
        one, two = made["pair"]  # unpacking, item access
        return total([one, two, made["box"].value], {"k": made["pair"]})  # attribute, list, dict

    result = e2e.run(workflow)
    dispatch_id = result.dispatch_id

    assert str(result.status) == "COMPLETED", result.error
    assert result.result == 9
    ids = node_ids(result)
    helpers = sorted(set(helper_nodes(result).values()))
    assert ":electron_list:" in helpers and ":electron_dict:" in helpers, helpers
    assert any(name.endswith(".__getattr__") for name in helpers), helpers
    assert any(name.endswith(".__getitem__") for name in helpers), helpers
    assert any("()[" in name for name in helpers), helpers
    for node, name in helper_nodes(result).items():
        assert str(result.get_node_result(node)["status"]) == "COMPLETED", name
    assert stacks_of(e2e.moto, dispatch_id) == sorted(
        stack_name(dispatch_id, ids[name]) for name in ("make", "total")
    )
    assert len(e2e.boot.instances) == 2
    e2e.assert_nothing_left()


# --- a task's failure, with its streams ----------------------------------------------------


def test_a_result_that_cannot_be_pickled_fails_the_electron_saying_so(e2e: E2E) -> None:
    @ct.electron(executor=e2e.executor())
    def locked() -> Any:
        import threading

        print("made a lock")
        return threading.Lock()

    @ct.lattice
    def workflow() -> Any:
        return locked()

    result = e2e.run(workflow)

    node = node_result(result, "locked")
    assert str(node["status"]) == "FAILED"
    assert node["stdout"] == "made a lock\n"
    assert "TypeError: cannot pickle '_thread.lock' object" in (node["stderr"] or ""), node
    e2e.assert_nothing_left()


# --- Covalent's own error-reporting contract (its functional test error_reporting_test.py) --


def test_a_task_that_raises_keeps_its_streams_as_on_covalent_s_own_executors(e2e: E2E) -> None:
    """Covalent's `test_task_runtime_error_reporting`, with executor="ec2" for both tasks."""

    @ct.electron(executor="ec2")
    def failing_task_0() -> None:
        print("Hello from Task 0", file=sys.stdout)
        print("Hello from Task 0", file=sys.stderr)
        raise RuntimeError("Error 0")

    @ct.electron(executor="ec2")
    def failing_task_1() -> None:
        print("Hello from Task 1", file=sys.stdout)

    @ct.lattice
    def workflow() -> None:
        failing_task_0()
        failing_task_1()

    result = e2e.run(workflow)

    assert str(result.status) == "FAILED"
    graph = result.lattice.transport_graph
    assert str(graph.get_node_value(0, "status")) == "FAILED"
    assert graph.get_node_value(0, "stdout") == "Hello from Task 0\n"
    stderr = graph.get_node_value(0, "stderr")
    assert stderr.startswith("Hello from Task 0\n"), stderr
    assert "RuntimeError: Error 0" in stderr, stderr
    assert str(graph.get_node_value(1, "status")) == "COMPLETED"
    assert graph.get_node_value(1, "stdout") == "Hello from Task 1\n"
    e2e.assert_nothing_left()


def test_an_unknown_executor_is_covalent_s_error(covalent_server: CovalentServer) -> None:
    """Covalent's `test_task_covalent_error_reporting`: unchanged beside this plugin."""

    @ct.electron(executor="nonexistent")
    def bad_exec_task() -> None:
        pass

    @ct.lattice
    def workflow() -> None:
        bad_exec_task()

    result = covalent_server.wait_for_result(ct.dispatch(workflow)(), RESULT_TIMEOUT)

    assert str(result.status) == "FAILED"
    assert "nonexistent" in result.lattice.transport_graph.get_node_value(0, "error")
