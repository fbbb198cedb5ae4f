"""Which stacks the sweep may delete: only those proven orphaned (pure), and never at import
or construction."""

from __future__ import annotations

from typing import Any

from ec2_executor import sweep
from ec2_executor.cli.states import BUSY, GONE
from ec2_executor.cloud.stacks import TAG_OWNER
from ec2_executor.owner import OWNER_ID

OTHER = "0123456789abcdef"


def _stack(name: str, owner: str | None, status: str = "CREATE_COMPLETE") -> dict[str, Any]:
    tags = [{"Key": TAG_OWNER, "Value": owner}] if owner else []
    return {"StackName": name, "StackStatus": status, "Tags": tags}


def test_only_stacks_whose_instance_ended_and_that_are_not_ours_are_orphans() -> None:
    stacks = [
        _stack("theirs-gone", OTHER),
        _stack("untagged-gone", None),  # made before owners were tagged
        _stack("ours-gone", OWNER_ID),  # this process's electron deletes its own
        _stack("theirs-busy", OTHER),
        _stack("theirs-idle", OTHER),
        _stack("theirs-creating", OTHER, "CREATE_IN_PROGRESS"),
        _stack("theirs-deleting", OTHER, "DELETE_FAILED"),
    ]
    states = {
        "theirs-gone": GONE,
        "untagged-gone": GONE,
        "ours-gone": GONE,
        "theirs-busy": BUSY,
        "theirs-idle": "idle since 2026-12-06T10:00:00Z",
        "theirs-creating": "creating",
        "theirs-deleting": GONE,
    }
    found = [s["StackName"] for s in sweep.orphans(stacks, states)]
    assert found == ["theirs-gone", "untagged-gone"]


def test_the_owner_id_is_random_per_process() -> None:
    assert len(OWNER_ID) == 16
    int(OWNER_ID, 16)


def test_building_an_executor_sweeps_nothing() -> None:
    from ec2_executor.ec2 import EC2Executor

    sweep.forget()
    EC2Executor(region="us-east-1")
    assert not sweep._swept
