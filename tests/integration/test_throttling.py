"""Under AWS's rate limits (the timed cloud with its token buckets, tests/harness/timed_cloud.py):
a burst of electrons draws throttling unpaced and none paced, and every electron completes; a
CreateStack retried after it went through makes one stack; a throttled DeleteStack is sent
again until CloudFormation takes it, and the stack goes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from executor_support import NewExecutor, execute, fan_out, run
from harness import MotoServer
from harness.boot import Delays, EmulatedBoot
from harness.cloud_state import assert_nothing_left
from harness.timed_cloud import AwsSeconds, RateLimits, TimedCloud

from ec2_executor.cloud import aws, pacing, stacks
from ec2_executor.cloud.stacks import stack_name

AWS = AwsSeconds().scaled(0.1)
"""The published timeline, 10 times shorter: the instance after 0.5 s, sshd 2 s after
CreateStack, CREATE_COMPLETE after 4 s; long enough for the stack waits to poll a few times."""
BURST = 12


@pytest.fixture
def boot_delays() -> Delays:
    return Delays(boot=AWS.boot)


@contextlib.contextmanager
def _limited_cloud(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> Iterator[TimedCloud]:
    """The timed cloud with AWS's buckets (CloudFormation: 5 per second, burst 10)."""
    settings.setdefault("limits", RateLimits())
    with TimedCloud(moto.url, AWS.timeline(), **settings) as cloud:
        monkeypatch.setenv("AWS_ENDPOINT_URL", cloud.url)  # new clients, and a new pacer
        yield cloud


def _burst(new_executor: NewExecutor, dispatch_id: str) -> list[Any]:
    """`BURST` electrons at once, as one lattice's fan-out; each returns its node id squared."""
    executors = [new_executor() for _ in range(BURST)]
    return fan_out(executors, pow, lambda node: [node, 2], dispatch_id)


def test_a_burst_of_electrons_is_paced_under_the_limits_and_every_one_completes(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = [node**2 for node in range(BURST)]
    # Unpaced (as before the pacer), the same burst overdraws a CloudFormation that allows 2
    # calls per second (the shared watcher keeps it below AWS's 5 even unpaced, most times).
    with monkeypatch.context() as unpaced:
        unpaced.setattr(pacing, "ENABLED", False)
        tight = RateLimits(cloudformation_per_second=2.0, cloudformation_burst=4.0)
        with _limited_cloud(moto_reset, unpaced, limits=tight) as cloud:
            _burst(new_executor, "unpaced")
            unpaced_throttles = cloud.throttled()
    assert unpaced_throttles, "the control burst drew no throttling: the test proves nothing"

    with _limited_cloud(moto_reset, monkeypatch) as cloud:
        results = _burst(new_executor, "paced")
        throttles = cloud.throttled()
        creates = [c.at for c in cloud.calls if c.action == "CreateStack"]
    assert results == expected
    assert throttles == [], f"paced, yet throttled: {throttles}"
    assert len(creates) == BURST
    assert_nothing_left(moto_reset)


@pytest.mark.parametrize("idempotent", [True, False], ids=["as-cloudformation", "already-exists"])
def test_a_create_stack_retried_after_it_went_through_makes_one_stack(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    idempotent: bool,
) -> None:
    """The first CreateStack reaches CloudFormation, and its answer is lost to a throttle. The
    retry carries the same token: CloudFormation answers it with the stack it made; a cloud
    that says AlreadyExists instead shows the token in the stack's creation events."""
    settings = {"throttle_applied": {"CreateStack": 1}, "idempotent_create": idempotent}
    with _limited_cloud(moto_reset, monkeypatch, **settings) as cloud:
        ex = new_executor()
        assert run(execute(ex, pow, [3, 3], {}, dispatch_id="retried-create")) == 27
        answers = cloud.answers("CreateStack")
    expected = "idempotent" if idempotent else "AlreadyExistsException"
    assert answers == ["Throttling", expected]
    summaries = moto_reset.client("cloudformation").list_stacks()["StackSummaries"]
    assert [s["StackName"] for s in summaries] == [stack_name("retried-create", 0)]
    assert emulated_boot.booted_count == 1
    assert_nothing_left(moto_reset)


def test_a_throttled_delete_stack_goes_on_until_the_stack_is_gone(
    new_executor: NewExecutor,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DeleteStack is throttled longer than botocore retries it (patience 0 here: its tries
    alone), and the executor sends it again until CloudFormation takes it."""
    monkeypatch.setattr(aws, "THROTTLE_PATIENCE", 0.0)
    monkeypatch.setattr(pacing, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(stacks, "THROTTLED_FIRST", 0.1)
    throttles = 10  # botocore's 9 tries, then one of the executor's own
    throttled = {"DeleteStack": throttles}
    with _limited_cloud(moto_reset, monkeypatch, throttle_first=throttled) as cloud:
        ex = new_executor(wait_for_deletion=True)
        assert run(execute(ex, pow, [2, 5], {}, dispatch_id="slow-delete")) == 32
        answers = cloud.answers("DeleteStack")
    assert answers == ["Throttling"] * throttles + ["moto"]
    assert_nothing_left(moto_reset)
