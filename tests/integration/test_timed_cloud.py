"""On a cloud that takes its time (tests/harness/timed_cloud.py): the executor connects as soon
as the stack has launched the instance, without waiting for CREATE_COMPLETE, with no more
rights than the shipped policy; a stack that fails after that still fails the electron and
leaves nothing; a stock image pays the bootstrap's installs, and a baked image is found, used,
and pays none."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from executor_support import NewExecutor, execute, harness_options, run
from harness import (
    LoopbackNetwork,
    MotoServer,
)
from harness.boot import BootedInstance, Delays, EmulatedBoot
from harness.cloud_state import assert_nothing_left, live_stacks
from harness.timed_cloud import FAIL_REASON, AwsSeconds, TimedCloud, Timeline

from ec2_executor import StackCreationError
from ec2_executor.cli.bake import bake
from ec2_executor.cloud.stacks import stack_name
from ec2_executor.ec2 import EC2Executor
from ec2_executor.options import build

AWS = AwsSeconds().scaled(0.05)
"""The published timeline, 20 times shorter: sshd answers 1 s after CreateStack, a stock
image's installs take 2.5 s more."""
BOOT_SECONDS = AWS.boot


@pytest.fixture
def boot_delays() -> Delays:
    return Delays(boot=BOOT_SECONDS)


Timed = Callable[[Timeline], contextlib.AbstractContextManager[TimedCloud]]


@pytest.fixture
def timed(moto_reset: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Timed:
    """The timed cloud in front of moto, as the executor's AWS, for a block."""

    @contextlib.contextmanager
    def in_front(timeline: Timeline) -> Iterator[TimedCloud]:
        with TimedCloud(moto_reset.url, timeline) as cloud:
            monkeypatch.setenv("AWS_ENDPOINT_URL", cloud.url)
            yield cloud

    return in_front


def test_the_task_runs_before_the_stack_completes(
    emulated_boot: EmulatedBoot, moto_reset: MotoServer, timed: Timed, new_executor: NewExecutor
) -> None:
    timeline = Timeline(instance_after=1.0, complete_after=60.0)
    with timed(timeline) as cloud:
        started = time.monotonic()
        assert run(execute(new_executor(), pow, [2, 10], {}, dispatch_id="early")) == 1024
        took = time.monotonic() - started
        # The whole electron, task included, happened while the stack was still creating.
        assert cloud.completed_at(stack_name("early", 0)) is None
        assert took < timeline.complete_after
    assert emulated_boot.booted_count == 1
    assert live_stacks(moto_reset) == []


def test_the_shipped_policy_grants_what_the_wait_for_an_unfinished_stack_calls(
    emulated_boot: EmulatedBoot, moto_reset: MotoServer, timed: Timed, new_executor: NewExecutor
) -> None:
    """One electron, its stack held in CREATE_IN_PROGRESS, as the session's user holding only
    the policy `ec2-executor policy` prints (moto enforces IAM, see `harness.iam`): the executor
    watches the unfinished stack (ListStacks) and finds its instance by the stack's tag
    (DescribeInstances) before the stack completes, and nothing it calls is refused."""
    assert os.environ["AWS_ACCESS_KEY_ID"] != moto_reset.keys.access_key_id  # not the admin
    with timed(Timeline(instance_after=1.0, complete_after=60.0)) as cloud:
        assert run(execute(new_executor(), pow, [2, 10], {}, dispatch_id="policy")) == 1024
        assert cloud.completed_at(stack_name("policy", 0)) is None  # still in progress
    answered = [c.action for c in cloud.calls if c.answer == "moto"]
    assert "ListStacks" in answered and "DescribeInstances" in answered
    assert not [c for c in cloud.calls if "Denied" in c.answer or "Unauthorized" in c.answer]
    assert emulated_boot.booted_count == 1
    assert live_stacks(moto_reset) == []


def test_a_stack_that_fails_after_ssh_answered_fails_the_electron(
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    timed: Timed,
    new_executor: NewExecutor,
    remote_cache: str,
) -> None:
    with timed(Timeline(instance_after=1.0, complete_after=120.0, fail_after=12.0)):
        started = time.monotonic()
        with pytest.raises(StackCreationError) as failed:
            run(execute(new_executor(), time.sleep, [90], {}, dispatch_id="late-failure"))
        took = time.monotonic() - started
    assert "Instance" in str(failed.value) and FAIL_REASON in str(failed.value)
    assert emulated_boot.booted_count == 1
    task_dir = Path(remote_cache) / stack_name("late-failure", 0)
    assert (task_dir / "payload.pkl").exists()  # SSH had answered: the task was running
    assert took < 60  # noticed within the stack wait's poll, not at the task's end
    assert live_stacks(moto_reset) == []


def _task_start_on_a_new_instance(
    boot: EmulatedBoot, executor: EC2Executor, dispatch_id: str
) -> tuple[BootedInstance, float]:
    """The instance the electron got, and when its task started there (one clock: the task
    returns `time.monotonic()` on this machine)."""
    before = {record.instance_id for record in boot.instances}
    started = run(execute(executor, time.monotonic, [], {}, dispatch_id=dispatch_id))
    (record,) = [r for r in boot.instances if r.instance_id not in before]
    return record, started


def test_a_stock_image_pays_the_installs_and_a_baked_one_is_found_and_does_not(
    loopback_network: LoopbackNetwork,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    timed: Timed,
    remote_cache: str,
) -> None:
    emulated_boot.delays.install = AWS.install
    options = harness_options(loopback_network.subnet_id, remote_cache)
    with timed(AWS.timeline()):
        stock, started = _task_start_on_a_new_instance(
            emulated_boot, EC2Executor(**options), "stock"
        )
        assert stock.baked_image is False and stock.install_seconds == AWS.install
        assert stock.booted_at is not None
        assert started >= stock.booted_at + AWS.install  # the task waited for the installs

        made = asyncio.run(bake(build(options)))  # on a stock image too, on the timed cloud
        assert made.made

        baked, started = _task_start_on_a_new_instance(
            emulated_boot, EC2Executor(**options), "baked"
        )
    assert baked.image_id == made.image.image_id != stock.image_id  # found, and used
    assert baked.baked_image is True and baked.install_seconds == 0.0
    assert baked.booted_at is not None and baked.bootstrap_started_at is not None
    assert baked.bootstrap_started_at - baked.booted_at < AWS.install  # no installs waited on
    assert started > baked.bootstrap_started_at
    assert_nothing_left(moto_reset)  # the bake's stack and both electrons' are gone


@pytest.mark.parametrize(
    ("timeline", "status"),
    [
        (Timeline(instance_after=60.0, complete_after=60.0), None),  # not launched yet
        (Timeline(instance_after=0.0, complete_after=60.0), "CREATE_IN_PROGRESS"),
        (Timeline(instance_after=0.0, complete_after=60.0, fail_after=0.0), "CREATE_FAILED"),
        (Timeline(instance_after=0.0, complete_after=0.0), "CREATE_COMPLETE"),
    ],
    ids=["before-launch", "in-progress", "failed", "complete"],
)
def test_the_timed_cloud_reports_the_instance_resource_as_cloudformation_does(
    moto_reset: MotoServer, timeline: Timeline, status: str | None
) -> None:
    """DescribeStackResource while the stack is creating: no such resource before the launch;
    then the instance's id, in progress until the stack completes (moto says complete from the
    start), failed once the stack fails. DescribeInstances by the stack's tag finds no instance
    before the launch either."""
    image = moto_reset.client("ec2").describe_images()["Images"][0]["ImageId"]
    body = {
        "Resources": {
            "Instance": {
                "Type": "AWS::EC2::Instance",
                "Properties": {"ImageId": image, "InstanceType": "t3.micro"},
            }
        }
    }
    with TimedCloud(moto_reset.url, timeline) as cloud:
        cfn = moto_reset.client("cloudformation", endpoint_url=cloud.url)
        stack_id = cfn.create_stack(StackName="timed-resource", TemplateBody=json.dumps(body))
        try:
            _check_instance_resource(cfn, status)
            ec2 = moto_reset.client("ec2", endpoint_url=cloud.url)
            tagged = [{"Name": "tag:aws:cloudformation:stack-id", "Values": [stack_id["StackId"]]}]
            found = [
                i["InstanceId"]
                for r in ec2.describe_instances(Filters=tagged)["Reservations"]
                for i in r["Instances"]
            ]
            assert len(found) == (0 if status is None else 1)  # none before the launch
        finally:  # its instance would otherwise run on, for the next module's boots to see
            moto_reset.client("cloudformation").delete_stack(StackName="timed-resource")
    assert live_stacks(moto_reset) == []


def _check_instance_resource(cfn: Any, status: str | None) -> None:
    if status is None:
        with pytest.raises(cfn.exceptions.ClientError, match="Resource Instance does not exist"):
            cfn.describe_stack_resource(StackName="timed-resource", LogicalResourceId="Instance")
        return
    found = cfn.describe_stack_resource(StackName="timed-resource", LogicalResourceId="Instance")
    detail = found["StackResourceDetail"]
    assert detail["ResourceStatus"] == status
    assert detail["PhysicalResourceId"].startswith("i-")
    (listed,) = cfn.describe_stack_resources(StackName="timed-resource")["StackResources"]
    assert listed["ResourceStatus"] == status
