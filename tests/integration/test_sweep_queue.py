"""Many electrons of one process on AWS's limits (the timed cloud, tests/harness/timed_cloud.py):
one watcher reads their stacks and instances for all of them, and at the account's vCPU quota or
the process's `max_concurrent_instances` the electrons wait in a queue, all complete, and nothing
is left; a quota that something else uses fails an electron at once, naming it; a cancel ends
a waiting electron with nothing created."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest
from covalent._shared_files.exceptions import TaskCancelledError
from executor_support import NewExecutor, execute, fan_out, run
from harness import MotoServer
from harness.boot import Delays, EmulatedBoot
from harness.cloud_state import assert_nothing_left
from harness.timed_cloud import AwsSeconds, RateLimits, TimedCloud

from ec2_executor import watch
from ec2_executor.ec2 import EC2Executor
from ec2_executor.errors import VcpuLimitError
from ec2_executor.logs import log

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the tasks go by value

AWS = AwsSeconds().scaled(0.1)
"""The published timeline, 10 times shorter: sshd 2 s after CreateStack, CREATE_COMPLETE at 4 s."""
QUEUED = "waiting for an instance of this process to end"
AT_QUOTA = "vCPU quota is reached; waiting"


@pytest.fixture
def boot_delays() -> Delays:
    return Delays(boot=AWS.boot)


@pytest.fixture(autouse=True)
def quick_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "CANCEL_POLL", 0.2)


@contextlib.contextmanager
def limited_cloud(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> Iterator[TimedCloud]:
    """The timed cloud with AWS's buckets; a new endpoint: a new account to the process (its
    own pacer, watcher and instance slots)."""
    with TimedCloud(moto.url, AWS.timeline(), limits=RateLimits(), **settings) as cloud:
        monkeypatch.setenv("AWS_ENDPOINT_URL", cloud.url)
        yield cloud


def sleep_then_square(node: int, seconds: float) -> int:
    import time

    time.sleep(seconds)
    return node * node


def sweep(executors: list[EC2Executor], dispatch_id: str, seconds: float = 0.0) -> list[Any]:
    """Electron `node` returns node squared after `seconds`."""
    return fan_out(executors, sleep_then_square, lambda node: [node, seconds], dispatch_id)


def test_one_watcher_reads_every_electrons_stack_and_instance(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each electron's own reads of its stack are a few, whatever the number of electrons:
    the stacks in progress come from ListStacks, shared; nobody asks DescribeStackResource."""
    electrons = 6
    with limited_cloud(moto_reset, monkeypatch) as cloud:
        results = sweep([new_executor() for _ in range(electrons)], "watched")
        calls = list(cloud.calls)
    assert results == [n * n for n in range(electrons)]
    count = {a: sum(c.action == a for c in calls) for a in {c.action for c in calls}}
    assert count.get("DescribeStackResource", 0) == 0
    own_reads = count.get("DescribeStacks", 0) + count.get("DescribeStackEvents", 0)
    # Polled alone, an electron read its stack and its events about once a second each for
    # the 4 s of its creation; watched, it reads them once it has changed.
    assert own_reads <= 4 * electrons, count
    assert count["ListStacks"] >= 1
    assert cloud.throttled() == []
    assert_nothing_left(moto_reset)


def test_at_the_vcpu_quota_electrons_wait_for_others_and_all_complete(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    package_log: pytest.LogCaptureFixture,
) -> None:
    electrons, quota = 5, 2  # t2.micro: one vCPU each
    with limited_cloud(moto_reset, monkeypatch, vcpu_quota=quota) as cloud:
        results = sweep([new_executor() for _ in range(electrons)], "quota", seconds=1.0)
        refused, peak = cloud.refused_launches(), cloud.peak_vcpus
    assert results == [n * n for n in range(electrons)]
    assert refused >= 1, "no launch met the quota: the test proves nothing"
    assert peak <= quota
    assert AT_QUOTA in package_log.text
    assert_nothing_left(moto_reset)


def test_a_quota_that_something_else_uses_fails_at_once_naming_it(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with limited_cloud(moto_reset, monkeypatch, vcpu_quota=0) as cloud:
        with pytest.raises(VcpuLimitError) as failed:
            run(execute(new_executor(), pow, [2, 2], {}, dispatch_id="used-up"))
        answers = cloud.answers("CreateStack")
    message = str(failed.value)
    assert "Service Quotas" in message
    assert "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances" in message
    assert "vCPU limit of 0" in message  # AWS's own words, from the stack's events
    assert answers == ["vcpu-limit"]
    assert emulated_boot.booted_count == 0
    assert_nothing_left(moto_reset)


def test_max_concurrent_instances_queues_and_the_wait_is_not_provision_time(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    package_log: pytest.LogCaptureFixture,
) -> None:
    """Two executors set 3 and 1: the smallest wins. The third electron waits for two tasks
    of 8 s each, longer than its 'provision_timeout' of 15 s, and still launches."""
    timeout, task = 15.0, 8.0
    executors = [
        new_executor(max_concurrent_instances=3, provision_timeout=timeout),
        new_executor(max_concurrent_instances=1, provision_timeout=timeout),
        new_executor(provision_timeout=timeout),
    ]
    with limited_cloud(moto_reset, monkeypatch) as cloud:
        results = sweep(executors, "capped", seconds=task)
        peak = cloud.peak_vcpus
    assert results == [0, 1, 4]
    assert peak == 1
    assert package_log.text.count(QUEUED) >= 2
    assert_nothing_left(moto_reset)


class _OnMessage(logging.Handler):
    def __init__(self, text: str, action: Any) -> None:
        super().__init__(logging.INFO)
        self.text, self.action = text, action

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.action()


def test_a_cancel_ends_a_waiting_electron_at_once_with_nothing_created(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    package_log: pytest.LogCaptureFixture,
) -> None:
    """The second electron waits behind the first (a cap of 1) and is cancelled as it starts
    to wait: it ends while the first one's task still runs, and never sent CreateStack."""
    cancelled = asyncio.Event()
    ended: dict[str, float] = {}

    async def cancel_requested() -> bool:
        return cancelled.is_set()

    first = new_executor(max_concurrent_instances=1)
    waiting = new_executor(max_concurrent_instances=1)
    waiting._cancel_requested = cancel_requested  # type: ignore[method-assign]

    async def electron(name: str, ex: EC2Executor, node: int) -> Any:
        try:
            return await execute(
                ex, sleep_then_square, [node, 6.0], {}, dispatch_id="cancelled", node_id=node
            )
        finally:
            ended[name] = time.monotonic()

    async def both(cloud: TimedCloud) -> list[Any]:
        loop = asyncio.get_running_loop()
        handler = _OnMessage(QUEUED, lambda: loop.call_soon_threadsafe(cancelled.set))
        log.addHandler(handler)
        try:
            started = asyncio.ensure_future(electron("first", first, 0))
            while not cloud.answers("CreateStack") and not started.done():  # the first holds
                await asyncio.sleep(0.05)  # the one slot: the second is the one that waits
            then = asyncio.ensure_future(electron("waiting", waiting, 1))
            return list(await asyncio.gather(started, then, return_exceptions=True))
        finally:
            log.removeHandler(handler)

    with limited_cloud(moto_reset, monkeypatch) as cloud:
        results = run(both(cloud))
        creates = cloud.answers("CreateStack")
    assert cancelled.is_set(), "the second electron never waited: the test proves nothing"
    assert results[0] == 0
    assert isinstance(results[1], TaskCancelledError)
    assert ended["waiting"] < ended["first"]  # not after the first one's 6 s task
    assert creates == ["moto"]  # the first electron's stack only
    assert emulated_boot.booted_count == 1
    assert_nothing_left(moto_reset)
