"""`ec2-executor bake` on the moto server and the emulated boot: an image with the bootstrap
done, found again by the executor, and no stack left whatever fails."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from executor_support import execute, harness_options, run
from harness import EmulatedBoot, LoopbackNetwork, MotoServer
from harness.cloud_state import live_stacks
from harness.timed_cloud import FAIL_REASON, TimedCloud, Timeline

from ec2_executor import EC2ExecutorError
from ec2_executor.cli.bake import bake
from ec2_executor.cloud import lookups
from ec2_executor.cloud.aws import AWS
from ec2_executor.cloud.images import TAG, BakedImage
from ec2_executor.cloud.stacks import stack_name
from ec2_executor.ec2 import EC2Executor
from ec2_executor.options import Options, build


def _options(network: LoopbackNetwork, remote_cache: str) -> dict[str, Any]:
    return harness_options(network.subnet_id, remote_cache)


def _baked(moto: MotoServer) -> list[dict[str, object]]:
    found = moto.client("ec2").describe_images(
        Owners=["self"], Filters=[{"Name": f"tag:{TAG}key", "Values": ["*"]}]
    )["Images"]
    return list(found)


def _instance_images(moto: MotoServer) -> dict[str, str]:
    reservations = moto.client("ec2").describe_instances()["Reservations"]
    return {i["InstanceId"]: i["ImageId"] for r in reservations for i in r["Instances"]}


def _image_of_new_instance(moto: MotoServer, before: dict[str, str]) -> str:
    (image,) = [image for i, image in _instance_images(moto).items() if i not in before]
    return image


def test_bake_makes_an_image_once_and_electrons_use_it(
    loopback_network: LoopbackNetwork,
    emulated_boot: object,
    moto_reset: MotoServer,
    remote_cache: str,
) -> None:
    options = build(_options(loopback_network, remote_cache))
    made = asyncio.run(bake(options))
    assert made.made and made.image.state == "available"
    assert live_stacks(moto_reset) == []  # the bake's stack is gone
    tags = made.image.tags
    assert tags[f"{TAG}python"] == options.python_version and tags[f"{TAG}arch"] == "x86_64"
    assert "covalent" in made.image.recipe_text()

    again = asyncio.run(bake(options))  # idempotent: the same recipe finds the same image
    assert not again.made and again.image.image_id == made.image.image_id
    assert len(_baked(moto_reset)) == 1

    ex = EC2Executor(**_options(loopback_network, remote_cache))
    before = _instance_images(moto_reset)
    assert run(execute(ex, pow, [3, 4], {}, dispatch_id="on-baked")) == 81
    assert _image_of_new_instance(moto_reset, before) == made.image.image_id

    stock = EC2Executor(**_options(loopback_network, remote_cache), use_baked_image=False)
    before = _instance_images(moto_reset)
    assert run(execute(stock, pow, [2, 5], {}, dispatch_id="on-stock")) == 32
    assert _image_of_new_instance(moto_reset, before) != made.image.image_id
    assert live_stacks(moto_reset) == []


@pytest.mark.parametrize(
    ("refused", "fail_after", "says"),
    [
        ({}, 0.5, re.escape(FAIL_REASON)),  # the stack fails while the bootstrap runs
        ({"CreateImage": "InternalError"}, None, "CreateImage refused"),
        ({"DescribeImages": "InternalError"}, None, "DescribeImages refused"),  # the wait
        ({"CreateTags": "InternalError"}, None, "CreateTags refused"),  # the snapshots' tags
    ],
    ids=["stack-fails", "create-image", "wait-for-image", "tag-snapshots"],
)
def test_a_bake_that_fails_leaves_no_stack_and_no_image(
    loopback_network: LoopbackNetwork,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    remote_cache: str,
    refused: dict[str, str],
    fail_after: float | None,
    says: str,
) -> None:
    options = build(_options(loopback_network, remote_cache))
    timeline = Timeline(instance_after=0.0, complete_after=0.0, fail_after=fail_after)
    if fail_after is not None:  # the stack completes late, and fails before it does
        timeline = Timeline(instance_after=0.0, complete_after=60.0, fail_after=fail_after)
        emulated_boot.delays.bootstrap = 5.0
    with TimedCloud(moto_reset.url, timeline, refuse=refused) as cloud:
        monkeypatch.setenv("AWS_ENDPOINT_URL", cloud.url)
        with pytest.raises(EC2ExecutorError, match=says):
            asyncio.run(bake(options, force=True))
    assert live_stacks(moto_reset) == []
    assert _baked(moto_reset) == []


def test_bake_list_and_delete_from_the_command_line(
    loopback_network: LoopbackNetwork,
    emulated_boot: object,
    moto_reset: MotoServer,
    remote_cache: str,
    tmp_path: Path,
) -> None:
    made = asyncio.run(bake(build(_options(loopback_network, remote_cache))))
    env = {**os.environ, "COVALENT_CONFIG_DIR": str(tmp_path / "covalent-config")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = ["ec2-executor", "bake", *args]
        return subprocess.run(command, env=env, text=True, capture_output=True, timeout=120)

    listed = cli("--list")
    assert listed.returncode == 0, listed.stderr
    assert made.image.image_id in listed.stdout and "covalent" in listed.stdout
    snapshots = made.image.snapshots
    deleted = cli("--delete", made.image.image_id, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert _baked(moto_reset) == []
    remaining = moto_reset.client("ec2").describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert not {s["SnapshotId"] for s in remaining} & set(snapshots)
    assert cli("--delete", made.image.image_id, "--yes").returncode == 1  # no such baked image


def test_a_baked_image_serves_only_electrons_whose_volume_fits_its_snapshot(
    loopback_network: LoopbackNetwork,
    emulated_boot: object,
    moto_reset: MotoServer,
    remote_cache: str,
    package_log: pytest.LogCaptureFixture,
) -> None:
    big = _options(loopback_network, remote_cache) | {"volume_size": 20}
    made = asyncio.run(bake(build(big)))
    assert made.image.tags[f"{TAG}volume_size"] == "20"  # the recipe records it
    assert made.image.root_size == 20  # and the image's snapshot is that large

    small = EC2Executor(**_options(loopback_network, remote_cache), volume_size=8)
    before = _instance_images(moto_reset)
    assert run(execute(small, pow, [2, 3], {}, dispatch_id="too-small")) == 8
    assert _image_of_new_instance(moto_reset, before) != made.image.image_id
    name = stack_name("too-small", 0)
    # One record, which caplog may hold twice (its own handler and the package log's).
    (why,) = {m for r in package_log.records if (m := r.getMessage()).startswith(f"{name}: image:")}
    assert made.image.image_id in why and "20 GiB snapshot is larger than 'volume_size' 8" in why

    fits = EC2Executor(**big)
    before = _instance_images(moto_reset)
    assert run(execute(fits, pow, [2, 4], {}, dispatch_id="fits")) == 16
    assert _image_of_new_instance(moto_reset, before) == made.image.image_id
    assert live_stacks(moto_reset) == []


def _image_of_size(moto: MotoServer, options: Options, size: int, name: str) -> str:
    """An image tagged as `bake` tags one, from an instance with a `size` GiB root volume."""
    ec2 = moto.client("ec2")
    stock = ec2.describe_images()["Images"][0]["ImageId"]
    root = [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": size}}]
    instance = ec2.run_instances(ImageId=stock, MinCount=1, MaxCount=1, BlockDeviceMappings=root)[
        "Instances"
    ][0]["InstanceId"]
    versions = lookups.Versions.installed(options.python_version)
    recipe = lookups.recipe(versions, "x86_64", volume_size=size)
    tags = [{"Key": k, "Value": v} for k, v in recipe.tags().items()]
    spec: Any = [{"ResourceType": "image", "Tags": tags}]
    image = ec2.create_image(InstanceId=instance, Name=name, TagSpecifications=spec)["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance])  # no boot of a later test sees it run
    return str(image)


def test_the_plan_takes_an_image_that_fits_and_says_why_it_passed_one_over(
    loopback_network: LoopbackNetwork, moto_reset: MotoServer, remote_cache: str
) -> None:
    options = build(_options(loopback_network, remote_cache) | {"volume_size": 10})
    fitting = _image_of_size(moto_reset, options, 8, "baked-at-8")
    larger = _image_of_size(moto_reset, options, 30, "baked-at-30")

    chosen = lookups.plan(AWS(options), options).image
    assert chosen.image_id == fitting and chosen.root_device == "/dev/xvda"

    tight = dataclasses.replace(options, volume_size=7)
    stock = lookups.plan(AWS(tight), tight).image
    assert stock.image_id == "" and stock.installs
    assert larger in stock.why and "volume_size=30" in stock.why


def test_the_harness_refuses_a_baked_image_on_a_smaller_volume_as_aws_does(
    loopback_network: LoopbackNetwork, moto_reset: MotoServer, remote_cache: str
) -> None:
    options = build(_options(loopback_network, remote_cache))
    image = _image_of_size(moto_reset, options, 20, "baked-at-20")
    snapshot = BakedImage.from_ec2(
        moto_reset.client("ec2").describe_images(ImageIds=[image])["Images"][0]
    ).snapshots[0]
    ec2 = moto_reset.client("ec2")
    small = [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, BlockDeviceMappings=small)
    assert refused.value.response["Error"] == {
        "Code": "InvalidBlockDeviceMapping",
        "Message": f"Volume of size 8GB is smaller than snapshot '{snapshot}', expect size >= 20GB",
    }
