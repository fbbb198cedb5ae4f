"""What is left in the emulated cloud after a test: stacks, instances, security groups."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .moto import MotoServer


def live_stacks(moto: MotoServer) -> list[str]:
    """The stacks not yet deleted, by name."""
    pages = moto.client("cloudformation").get_paginator("list_stacks").paginate()
    summaries = [s for page in pages for s in page["StackSummaries"]]
    return [s["StackName"] for s in summaries if s["StackStatus"] != "DELETE_COMPLETE"]


def _instances(moto: MotoServer, **request: Any) -> Iterator[dict[str, Any]]:
    """Every instance DescribeInstances gives for `request`, across pages and reservations."""
    pages = moto.client("ec2").get_paginator("describe_instances").paginate(**request)
    for page in pages:
        for reservation in page["Reservations"]:
            yield from reservation["Instances"]


def instances_in(moto: MotoServer, *states: str) -> list[str]:
    """The instances in any of these states (all instances when none is given)."""
    return [i["InstanceId"] for i in _instances(moto) if not states or i["State"]["Name"] in states]


def live_instances(moto: MotoServer) -> list[str]:
    """The instances not terminated (stopped ones included: they still hold a volume)."""
    return sorted(set(instances_in(moto)) - set(instances_in(moto, "terminated")))


def describe_instances(moto: MotoServer, instance_ids: list[str]) -> list[str]:
    """One line per instance: id, state, stack tag, private IP, launch time (what a leftover's
    failure names, to tell where it came from)."""
    if not instance_ids:
        return []
    lines = []
    for i in _instances(moto, InstanceIds=instance_ids):
        tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
        stack = tags.get("aws:cloudformation:stack-name", "no stack")
        lines.append(
            f"{i['InstanceId']} {i['State']['Name']} ({stack}; "
            f"{i.get('PrivateIpAddress')}; launched {i['LaunchTime']:%H:%M:%S})"
        )
    return lines


def assert_nothing_left(moto: MotoServer) -> None:
    """No stack, no instance but terminated ones, no security group but the default."""
    stacks = live_stacks(moto)
    assert stacks == [], f"stacks left: {stacks}"
    instances = live_instances(moto)
    assert instances == [], f"instances left: {describe_instances(moto, instances)}"
    groups = [
        g["GroupName"] for g in moto.client("ec2").describe_security_groups()["SecurityGroups"]
    ]
    assert set(groups) <= {"default"}, f"security groups left: {groups}"


def remove_everything_left(moto: MotoServer) -> None:
    """Delete every live stack and terminate every live instance, as the harness's admin, so
    that one test's leftovers (which that test reports) do not fail the tests after it on a
    moto that is not reset."""
    stacks = live_stacks(moto)
    for stack in stacks:
        moto.client("cloudformation").delete_stack(StackName=stack)
    instances = live_instances(moto)
    if instances:
        moto.client("ec2").terminate_instances(InstanceIds=instances)
