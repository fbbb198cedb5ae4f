"""Nothing in an electron's path waits forever: a cancel or a gone instance ends every phase,
and a connection that stops answering fails the electron (moto server, real sshd)."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from covalent._shared_files.exceptions import TaskCancelledError
from executor_support import NewExecutor, execute, run
from harness import EmulatedBoot, MotoServer
from harness.cloud_state import live_instances, live_stacks
from harness.waiting import wait_for_task
from remote_tasks import sleepy

from ec2_executor import ConnectionLostError, watch
from ec2_executor.ec2 import EC2Executor
from ec2_executor.logs import log
from ec2_executor.remote import Keepalive

cloudpickle.register_pickle_by_value(sys.modules[__name__])

HANG_BOUND = 30.0
"""Far below 'provision_timeout' (120 s here): an electron that ends within it did not hang."""


class CancelSwitch:
    """Covalent's answer to the executor's `get_cancel_requested` (the server channel)."""

    def __init__(self) -> None:
        self.pulled_at: float | None = None

    def pull(self) -> None:
        if self.pulled_at is None:
            self.pulled_at = time.monotonic()

    async def __call__(self) -> bool:
        return self.pulled_at is not None


class OnPhase(logging.Handler):
    """Calls `action` once, when the electron logs that `phase` begins."""

    def __init__(self, phase: str, action: Callable[[], None]) -> None:
        super().__init__(logging.INFO)
        self.phase, self.action, self.done = phase, action, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.done and record.getMessage().endswith(f": {self.phase} ..."):
            self.done = True
            self.action()


@pytest.fixture
def on_phase() -> Iterator[Callable[[str, Callable[[], None]], None]]:
    handlers: list[OnPhase] = []
    level = log.level
    log.setLevel(logging.INFO)

    def install(phase: str, action: Callable[[], None]) -> None:
        handlers.append(OnPhase(phase, action))
        log.addHandler(handlers[-1])

    yield install
    for handler in handlers:
        log.removeHandler(handler)
    log.setLevel(level)


@pytest.fixture(autouse=True)
def quick_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "CANCEL_POLL", 0.2)
    monkeypatch.setattr(watch, "INSTANCE_POLL", 0.5)


def slowed(monkeypatch: pytest.MonkeyPatch, target: str, seconds: float) -> None:
    """The real call, `seconds` later: a slow AWS answer holds the phase open."""
    module, name = target.rsplit(".", 1)
    owner: Any = sys.modules.get(module)
    if owner is None:  # a class attribute, e.g. "ec2_executor.cloud.stacks.Stacks.create"
        module, cls = module.rsplit(".", 1)
        owner = getattr(sys.modules[module], cls)
    real = getattr(owner, name)

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, slow)


def cancelled_electron(ex: EC2Executor, switch: CancelSwitch, mark: Path | None = None) -> float:
    """Run an electron (a long sleep, announced at `mark` when given) that `switch` cancels;
    return the seconds from the cancel to its end."""
    ex._cancel_requested = switch  # type: ignore[method-assign]
    with pytest.raises(TaskCancelledError):
        run(execute(ex, sleepy, [600, None if mark is None else str(mark)], {}))
    assert switch.pulled_at is not None, "the cancel never came: the phase was not reached"
    return time.monotonic() - switch.pulled_at


@pytest.fixture
def cancel_in(
    new_executor: NewExecutor, on_phase: Callable[[str, Callable[[], None]], None]
) -> Callable[[str], float]:
    """Runs an electron cancelled as it logs that `phase` begins; returns the seconds from the
    cancel to its end."""

    def cancel(phase: str) -> float:
        switch = CancelSwitch()
        on_phase(phase, switch.pull)
        return cancelled_electron(new_executor(), switch)

    return cancel


def nothing_live(moto: MotoServer) -> bool:
    return live_stacks(moto) == [] and live_instances(moto) == []


def test_a_cancel_while_planning_creates_nothing(
    moto_reset: MotoServer, cancel_in: Callable[[str], float], monkeypatch: pytest.MonkeyPatch
) -> None:
    slowed(monkeypatch, "ec2_executor.cloud.lookups.plan", 5)
    assert cancel_in("plan") < HANG_BOUND
    assert moto_reset.client("cloudformation").list_stacks()["StackSummaries"] == []


def test_a_cancel_while_the_stack_is_created_deletes_it(
    moto_reset: MotoServer, cancel_in: Callable[[str], float], monkeypatch: pytest.MonkeyPatch
) -> None:
    slowed(monkeypatch, "ec2_executor.cloud.stacks.Stacks.create", 2)
    assert cancel_in("create stack") < HANG_BOUND
    # The create landed, then was deleted:
    assert len(moto_reset.client("cloudformation").list_stacks()["StackSummaries"]) == 1
    assert nothing_live(moto_reset)


def test_a_cancel_while_waiting_for_ssh_ends_at_once(
    moto_reset: MotoServer, cancel_in: Callable[[str], float]
) -> None:
    """No emulated boot: SSH never answers, as while an instance boots."""
    assert cancel_in("wait for SSH") < HANG_BOUND
    assert nothing_live(moto_reset)


def test_a_cancel_during_the_bootstrap_ends_at_once(
    emulated_boot: EmulatedBoot, moto_reset: MotoServer, cancel_in: Callable[[str], float]
) -> None:
    emulated_boot.delays.bootstrap = 60  # the command waits for a bootstrap that has not begun
    assert cancel_in("upload, run, fetch") < HANG_BOUND
    assert [r.bootstrap_returncode for r in emulated_boot.instances] == [None]
    assert nothing_live(moto_reset)


def test_a_cancel_while_the_task_runs_ends_at_once(
    emulated_boot: EmulatedBoot, moto_reset: MotoServer, new_executor: NewExecutor, tmp_path: Path
) -> None:
    switch, mark = CancelSwitch(), tmp_path / "task"

    def cancel_once_running() -> None:
        wait_for_task(mark)
        switch.pull()

    threading.Thread(target=cancel_once_running, daemon=True).start()
    assert cancelled_electron(new_executor(), switch, mark) < HANG_BOUND
    assert nothing_live(moto_reset)


def test_an_instance_gone_while_waiting_for_ssh_fails_the_electron_naming_it(
    moto_reset: MotoServer,
    new_executor: NewExecutor,
    on_phase: Callable[[str, Callable[[], None]], None],
) -> None:
    ec2 = moto_reset.client("ec2")
    terminated: list[str] = []

    def terminate() -> None:
        terminated.extend(live_instances(moto_reset))
        ec2.terminate_instances(InstanceIds=terminated)

    on_phase("wait for SSH", terminate)
    started = time.monotonic()
    with pytest.raises(ConnectionLostError, match="is terminated") as lost:
        run(execute(new_executor(), sleepy, [1], {}))
    assert time.monotonic() - started < HANG_BOUND
    assert len(terminated) == 1 and terminated[0] in str(lost.value)
    assert live_stacks(moto_reset) == []


# --- the connection itself ------------------------------------------------------------------

QUICK = Keepalive(interval=0.3, timeout=5.0)


def test_a_connection_that_stops_answering_fails_the_electron_and_deletes_its_stack(
    emulated_boot: EmulatedBoot, moto_reset: MotoServer, new_executor: NewExecutor, tmp_path: Path
) -> None:
    """The instance's sshd frozen mid-task: packets go unanswered, nothing resets."""
    frozen_at: list[float] = []
    mark = tmp_path / "task"

    def freeze_once_running() -> None:
        wait_for_task(mark)
        assert emulated_boot.freeze_sshd(emulated_boot.instances[0].instance_id)
        frozen_at.append(time.monotonic())

    threading.Thread(target=freeze_once_running, daemon=True).start()
    ex = new_executor()
    ex.keepalive = QUICK
    with pytest.raises(ConnectionLostError, match="did not answer a keepalive") as lost:
        run(execute(ex, sleepy, [600, str(mark)], {}))
    assert frozen_at and time.monotonic() - frozen_at[0] < HANG_BOUND
    instance = emulated_boot.instances[0].instance_id
    assert f"instance {instance} of stack" in str(lost.value)
    assert nothing_live(moto_reset)


def test_a_quiet_task_over_a_healthy_connection_completes(
    emulated_boot: EmulatedBoot, new_executor: NewExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    """Prints nothing for several keepalive intervals; every keepalive is answered."""
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    ex = new_executor()
    ex.keepalive = QUICK
    assert run(execute(ex, sleepy, [3.0], {})) == "woke"
    sent = caplog.text.count('Sending global request "keepalive@openssh.com"')
    answered = caplog.text.count("Global request denied")  # OpenSSH's answer to an unknown one
    assert sent >= 6, caplog.text[-2000:]
    assert answered >= sent - 1  # the last one may be in flight when the task ends


def test_watch_stops_work_that_waits_forever() -> None:
    """The watcher itself: a wait with no end of its own ends on a cancel."""
    switch = CancelSwitch()
    stopped: list[Exception] = []

    async def gone() -> None:
        return None

    async def stop(reason: Exception) -> None:
        stopped.append(reason)

    async def forever() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        asyncio.get_running_loop().call_later(0.3, switch.pull)
        with pytest.raises(watch.CancelRequested):
            await watch.watched(
                forever(),
                cancel_requested=switch,
                instance_gone=gone,
                on_stop=stop,
            )

    run(main())
    assert [type(r) for r in stopped] == [watch.CancelRequested]
