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
from e2e_support import assert_nothing_left, node_result
from harness import EmulatedBoot, MotoServer
from harness.covalent_server import CovalentServer

from ec2_executor.cloud.stacks import stack_name

pytestmark = pytest.mark.e2e
cloudpickle.register_pickle_by_value(sys.modules[__name__])

RESULT_TIMEOUT = 300.0


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


class Gate:
    """The files a `hold` task and the test meet at."""

    def __init__(self, tmp_path: Path) -> None:
        self.started, self.release = tmp_path / "started", tmp_path / "release"

    @property
    def args(self) -> tuple[str, str]:
        return str(self.started), str(self.release)

    def wait_started(self) -> None:
        deadline = time.monotonic() + 120
        while not self.started.exists():
            assert time.monotonic() < deadline, "the holding task never started"
            time.sleep(0.1)

    def open(self) -> None:
        self.release.touch()


# --- cancelled before it started ------------------------------------------------------------


def test_a_task_cancelled_before_it_started_is_cancelled_and_creates_nothing(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    gate = Gate(tmp_path)
    held = ct.electron(hold, executor="local")

    @ct.electron(executor=ct.executor.EC2Executor(**local_settings))
    def after(x: int) -> int:
        return x + 1

    @ct.lattice
    def workflow(started: str, release: str) -> int:
        return after(held(started, release))

    dispatch_id = ct.dispatch(workflow)(*gate.args)
    gate.wait_started()
    ct.cancel(dispatch_id)
    gate.open()
    result = covalent_server.wait_for_result(dispatch_id, RESULT_TIMEOUT)

    assert str(node_result(result, "after")["status"]) == "CANCELLED", result
    assert str(result.status) == "CANCELLED"
    assert stacks_of(moto_server, dispatch_id) == []
    assert emulated_boot.instances == []


def test_one_of_several_cancelled_before_it_started(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    gate = Gate(tmp_path)
    held = ct.electron(hold, executor="local")
    on_ec2 = ct.executor.EC2Executor(**local_settings)

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
    result = covalent_server.wait_for_result(dispatch_id, RESULT_TIMEOUT)

    statuses = {
        name: str(node_result(result, name)["status"]) for name in ("first", "second", "third")
    }
    assert statuses == {"first": "COMPLETED", "second": "CANCELLED", "third": "COMPLETED"}
    assert str(result.status) == "CANCELLED"
    assert stacks_of(moto_server, dispatch_id) == sorted(
        stack_name(dispatch_id, ids[name]) for name in ("first", "third")
    )
    assert len(emulated_boot.instances) == 2
    assert_nothing_left(moto_server)


def test_a_task_in_a_sublattice_cancelled_before_it_started(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    gate = Gate(tmp_path)
    held = ct.electron(hold, executor="local")

    @ct.electron(executor=ct.executor.EC2Executor(**local_settings))
    def after(x: int) -> int:
        return x + 1

    @ct.electron
    @ct.lattice
    def inner(started: str, release: str) -> int:
        return after(held(started, release))

    @ct.lattice
    def workflow(started: str, release: str) -> int:
        return inner(started, release)

    dispatch_id = ct.dispatch(workflow)(*gate.args)
    gate.wait_started()
    ct.cancel(dispatch_id)
    gate.open()
    result = covalent_server.wait_for_result(dispatch_id, RESULT_TIMEOUT)

    graph = result.lattice.transport_graph
    sub_id = graph.get_node_value(node_ids(result)[":sublattice:inner"], "sub_dispatch_id")
    sub = covalent_server.wait_for_result(sub_id, RESULT_TIMEOUT)
    assert str(node_result(sub, "after")["status"]) == "CANCELLED", sub
    assert str(sub.status) == "CANCELLED"
    assert str(result.status) == "CANCELLED"
    assert stacks_of(moto_server, sub_id) == []
    assert emulated_boot.instances == []


# --- Covalent's helper nodes ----------------------------------------------------------------


class Box:
    def __init__(self, value: int) -> None:
        self.value = value


def test_helper_nodes_get_no_instance(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
) -> None:
    on_ec2 = ct.executor.EC2Executor(**local_settings)

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

    dispatch_id = ct.dispatch(workflow)()
    result = covalent_server.wait_for_result(dispatch_id, RESULT_TIMEOUT)

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
    assert stacks_of(moto_server, dispatch_id) == sorted(
        stack_name(dispatch_id, ids[name]) for name in ("make", "total")
    )
    assert len(emulated_boot.instances) == 2
    assert_nothing_left(moto_server)


# --- a task's failure, with its streams ----------------------------------------------------


def test_a_result_that_cannot_be_pickled_fails_the_electron_saying_so(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
) -> None:
    @ct.electron(executor=ct.executor.EC2Executor(**local_settings))
    def locked() -> Any:
        import threading

        print("made a lock")
        return threading.Lock()

    @ct.lattice
    def workflow() -> Any:
        return locked()

    result = covalent_server.wait_for_result(ct.dispatch(workflow)(), RESULT_TIMEOUT)

    node = node_result(result, "locked")
    assert str(node["status"]) == "FAILED"
    assert node["stdout"] == "made a lock\n"
    assert "TypeError: cannot pickle '_thread.lock' object" in (node["stderr"] or ""), node
    assert_nothing_left(moto_server)


# --- Covalent's own error-reporting contract (its functional test error_reporting_test.py) --


def test_a_task_that_raises_keeps_its_streams_as_on_covalent_s_own_executors(
    covalent_server: CovalentServer, emulated_boot: EmulatedBoot, moto_server: MotoServer
) -> None:
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

    result = covalent_server.wait_for_result(ct.dispatch(workflow)(), RESULT_TIMEOUT)

    assert str(result.status) == "FAILED"
    graph = result.lattice.transport_graph
    assert str(graph.get_node_value(0, "status")) == "FAILED"
    assert graph.get_node_value(0, "stdout") == "Hello from Task 0\n"
    stderr = graph.get_node_value(0, "stderr")
    assert stderr.startswith("Hello from Task 0\n"), stderr
    assert "RuntimeError: Error 0" in stderr, stderr
    assert str(graph.get_node_value(1, "status")) == "COMPLETED"
    assert graph.get_node_value(1, "stdout") == "Hello from Task 1\n"
    assert_nothing_left(moto_server)


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
