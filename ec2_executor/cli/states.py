"""What each executor stack's instance is doing, for `ec2-executor list` and `cleanup --idle`.

A warm-capable executor tags the instance with its state (`pool.TAG_STATE`: "busy" or "idle
since <UTC time>"); EC2 says whether the instance is still there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ec2_executor.cloud.aws import aws_errors
from ec2_executor.cloud.stacks import StackOutputs
from ec2_executor.warm.pool import TAG_STATE

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

IDLE = "idle since"
GONE = "instance gone"
BUSY = "running a task"
_LIVE = ("pending", "running")


def instance_states(ec2: EC2Client, stacks: list[Mapping[str, Any]]) -> dict[str, str]:
    """Stack name -> "running a task", "idle since ...", "instance gone" or the stack's own
    progress ("creating", "deleting") while it has no instance to speak of."""
    ids = {s["StackName"]: StackOutputs.from_stack(s).instance_id for s in stacks}
    found = _instances(ec2, [i for i in ids.values() if i])
    states: dict[str, str] = {}
    for stack in stacks:
        name, status = stack["StackName"], str(stack["StackStatus"])
        instance = found.get(ids[name])
        if status.startswith("DELETE"):
            states[name] = "deleting"
        elif not ids[name]:
            states[name] = "creating" if status.endswith("IN_PROGRESS") else GONE
        elif instance is None or instance["State"]["Name"] not in _LIVE:
            states[name] = GONE
        else:
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            state = tags.get(TAG_STATE, "busy")
            states[name] = BUSY if state == "busy" else state
    return states


def _instances(ec2: EC2Client, ids: list[str]) -> dict[str, Mapping[str, Any]]:
    """The instances EC2 still knows among `ids` (terminated ones included, for a while)."""
    if not ids:
        return {}
    with aws_errors("describing the stacks' instances"):
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-id", "Values": ids}]
        )
        return {
            i["InstanceId"]: i
            for page in pages
            for r in page["Reservations"]
            for i in r["Instances"]
        }
