"""What each executor stack's instance is doing, for `ec2-executor list` and `cleanup --idle`.

A warm-capable executor tags the instance with its state (`pool.TAG_STATE`: "busy" or "idle
since <UTC time>"); EC2 says whether the instance is still there.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ec2_executor.cloud.instances import Instances
from ec2_executor.cloud.stacks import (
    TAG_DISPATCH,
    TAG_INSTANCE_TYPE,
    TAG_NODE,
    TAG_OWNER,
    TAG_RATE,
    StackOutputs,
    tag_value,
)
from ec2_executor.owner import known_gone
from ec2_executor.spot import RECLAIMED
from ec2_executor.warm.pool import TAG_STATE

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

IDLE = "idle since"
OWNER_GONE = "orphan: owner gone"
"""The instance runs, but the process that owns it is proven dead on this machine
(`owner.known_gone`): it powers itself off after `orphan_minutes`; the stack may go now."""
GONE = "orphan: instance gone"
"""Nothing runs on the stack any more: `cleanup` and the sweep delete it without --all."""
INTERRUPTED = "interrupted: spot instance reclaimed"
"""EC2 reclaimed the instance from the spot market (its state reason says so); the electron
reruns elsewhere or fails saying so, and deletes the stack. Shown until the stack is gone."""
BUSY = "running a task"
ORPHANS = frozenset({GONE, OWNER_GONE, INTERRUPTED})


def instance_states(ec2: EC2Client, stacks: list[Mapping[str, Any]]) -> dict[str, str]:
    """Stack name -> "running a task", "idle since ...", an orphan's state (`GONE`,
    `OWNER_GONE`, `INTERRUPTED`) or the stack's own progress ("creating", "deleting") while it
    has no instance to speak of."""
    ids = {s["StackName"]: StackOutputs.from_stack(s).instance_id for s in stacks}
    found = Instances(ec2).by_id([i for i in ids.values() if i])
    states: dict[str, str] = {}
    for stack in stacks:
        name, status = stack["StackName"], str(stack["StackStatus"])
        instance = found.get(ids[name])
        if status.startswith("DELETE"):
            states[name] = "deleting"
        elif not ids[name]:
            states[name] = "creating" if status.endswith("IN_PROGRESS") else GONE
        elif instance is not None and instance.state_reason == RECLAIMED:
            states[name] = INTERRUPTED
        elif instance is None or not instance.live:
            states[name] = GONE
        elif known_gone(tag_value(stack, TAG_OWNER) or ""):
            states[name] = OWNER_GONE
        else:
            state = (instance.tags or {}).get(TAG_STATE, "busy")
            states[name] = BUSY if state == "busy" else state
    return states


def stack_summary(stack: Mapping[str, Any]) -> dict[str, Any]:
    """What `ec2-executor list` shows of a stack."""
    created = stack.get("CreationTime")
    return {
        "name": stack["StackName"],
        "dispatch_id": tag_value(stack, TAG_DISPATCH) or "",
        "node_id": tag_value(stack, TAG_NODE) or "",
        "status": stack["StackStatus"],
        "created": created.isoformat() if isinstance(created, datetime) else str(created or ""),
        "instance_type": tag_value(stack, TAG_INSTANCE_TYPE) or "",
        "owner": tag_value(stack, TAG_OWNER) or "-",
        "instance_id": StackOutputs.from_stack(stack).instance_id,
        "usd_per_hour": _number(tag_value(stack, TAG_RATE)),
    }


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
