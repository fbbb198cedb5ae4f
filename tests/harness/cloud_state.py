"""What is left in the emulated cloud after a test: stacks, instances, security groups."""

from __future__ import annotations

from .moto import MotoServer


def live_stacks(moto: MotoServer) -> list[str]:
    """The stacks not yet deleted, by name."""
    pages = moto.client("cloudformation").get_paginator("list_stacks").paginate()
    summaries = [s for page in pages for s in page["StackSummaries"]]
    return [s["StackName"] for s in summaries if s["StackStatus"] != "DELETE_COMPLETE"]


def instances_in(moto: MotoServer, *states: str) -> list[str]:
    """The instances in any of these states (all instances when none is given)."""
    pages = moto.client("ec2").get_paginator("describe_instances").paginate()
    return [
        i["InstanceId"]
        for page in pages
        for r in page["Reservations"]
        for i in r["Instances"]
        if not states or i["State"]["Name"] in states
    ]


def live_instances(moto: MotoServer) -> list[str]:
    """The instances not terminated (stopped ones included: they still hold a volume)."""
    return sorted(set(instances_in(moto)) - set(instances_in(moto, "terminated")))


def assert_nothing_left(moto: MotoServer) -> None:
    """No stack, no instance but terminated ones, no security group but the default."""
    assert live_stacks(moto) == []
    assert live_instances(moto) == []
    groups = [
        g["GroupName"] for g in moto.client("ec2").describe_security_groups()["SecurityGroups"]
    ]
    assert set(groups) <= {"default"}, groups
