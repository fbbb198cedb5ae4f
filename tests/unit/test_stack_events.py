"""Stack events: each logged once with its elapsed time; the first failure names the cause."""

from __future__ import annotations

from datetime import UTC, datetime

from ec2_executor.cli.states import stack_summary
from ec2_executor.cloud.stacks import EventLog, StackOutputs


def event(n: int, resource: str, status: str, reason: str = "") -> dict[str, str]:
    return {
        "EventId": str(n),
        "LogicalResourceId": resource,
        "ResourceStatus": status,
        "ResourceStatusReason": reason,
    }


def test_events_are_logged_once_each_in_order() -> None:
    lines: list[str] = []
    log = EventLog("s", logger=lines.append)
    log.record([event(1, "s", "CREATE_IN_PROGRESS", "User Initiated")])
    log.record(
        [
            event(1, "s", "CREATE_IN_PROGRESS", "User Initiated"),
            event(2, "SshAccess", "CREATE_IN_PROGRESS"),
        ]
    )
    assert len(lines) == 2
    assert lines[0].startswith("s +") and lines[0].endswith("s CREATE_IN_PROGRESS User Initiated")
    assert lines[1].endswith("SshAccess CREATE_IN_PROGRESS")


def test_first_failure_is_the_root_cause_not_the_rollback() -> None:
    log = EventLog("s", logger=lambda _: None)
    log.record(
        [
            event(1, "SshAccess", "CREATE_COMPLETE"),
            event(2, "Instance", "CREATE_FAILED", "The image id '[ami-1]' does not exist"),
            event(3, "s", "ROLLBACK_IN_PROGRESS", "The following resource(s) failed to create"),
            event(4, "SshAccess", "DELETE_FAILED", "resource in use"),
        ]
    )
    assert log.first_failure() == "Instance: The image id '[ami-1]' does not exist"
    assert EventLog("t", logger=lambda _: None).first_failure() == "no resource reported a reason"


def test_outputs_without_a_public_address() -> None:
    outputs = StackOutputs.from_stack(
        {
            "Outputs": [
                {"OutputKey": "InstanceId", "OutputValue": "i-1"},
                {"OutputKey": "PrivateIp", "OutputValue": "10.0.0.5"},
            ]
        }
    )
    assert outputs == StackOutputs(instance_id="i-1", private_ip="10.0.0.5", public_ip="")


def test_summary_reads_the_tags() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    row = stack_summary(
        {
            "StackName": "ec2-executor-x",
            "StackStatus": "CREATE_COMPLETE",
            "CreationTime": created,
            "Tags": [
                {"Key": "ec2-executor:dispatch-id", "Value": "d"},
                {"Key": "ec2-executor:node-id", "Value": "3"},
                {"Key": "ec2-executor:instance-type", "Value": "t3.micro"},
            ],
            "Outputs": [{"OutputKey": "InstanceId", "OutputValue": "i-0abc"}],
        }
    )
    assert row == {
        "name": "ec2-executor-x",
        "dispatch_id": "d",
        "node_id": "3",
        "status": "CREATE_COMPLETE",
        "created": created.isoformat(),
        "instance_type": "t3.micro",
        "owner": "-",  # made before stacks carried their owner
        "instance_id": "i-0abc",
        "usd_per_hour": None,  # made before stacks carried their rate
    }
