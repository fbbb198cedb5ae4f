"""The instances the executor reads: one `DescribeInstances` reader, typed views, and one rule
for an instance EC2 does not know (None, or absent from a batch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ec2_executor.blocking import Deadline, poll, run_blocking
from ec2_executor.cloud.aws import AWS, aws_errors, forget_session
from ec2_executor.errors import AWSError, CredentialsError
from ec2_executor.logs import log
from ec2_executor.options import Options

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

LIVE_STATES = frozenset({"pending", "running"})
"""The states in which an instance can still run a task."""


@dataclass(frozen=True)
class Instance:
    """What the executor needs of one instance."""

    instance_id: str
    state: str
    private_ip: str = ""
    public_ip: str = ""
    tags: Mapping[str, str] | None = None
    state_reason: str = ""
    """EC2's code for the last state change, e.g. `Server.SpotInstanceTermination`."""
    state_message: str = ""
    """EC2's message for it, such as "Server.InsufficientInstanceCapacity: ..." for an instance
    terminated during launch ('' when EC2 gives none)."""

    @classmethod
    def from_ec2(cls, found: Mapping[str, Any]) -> Instance:
        return cls(
            instance_id=str(found["InstanceId"]),
            state=str(found["State"]["Name"]),
            private_ip=str(found.get("PrivateIpAddress", "")),
            public_ip=str(found.get("PublicIpAddress", "")),
            tags={t["Key"]: t["Value"] for t in found.get("Tags", [])},
            state_reason=str((found.get("StateReason") or {}).get("Code", "")),
            state_message=str((found.get("StateReason") or {}).get("Message", "")),
        )

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


class Instances:
    """Reads instances through one EC2 client (the caller picks its retries)."""

    def __init__(self, ec2: EC2Client) -> None:
        self.ec2 = ec2

    def get(self, instance_id: str) -> Instance | None:
        """The instance; None when EC2 does not know it (any more)."""
        try:
            with aws_errors(f"looking up instance {instance_id}"):
                found = self.ec2.describe_instances(InstanceIds=[instance_id])
        except AWSError as exc:
            if exc.code.startswith("InvalidInstanceID.NotFound"):
                return None
            raise
        instances = [i for r in found["Reservations"] for i in r["Instances"]]
        return Instance.from_ec2(instances[0]) if instances else None

    def by_id(self, ids: Sequence[str]) -> dict[str, Instance]:
        """The instances EC2 still knows among `ids` (terminated ones too, for a while), in
        as few calls as a filter allows."""
        if not ids:
            return {}
        with aws_errors("describing instances"):
            pages = self.ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-id", "Values": list(ids)}]
            )
            return {
                i["InstanceId"]: Instance.from_ec2(i)
                for page in pages
                for r in page["Reservations"]
                for i in r["Instances"]
            }


# --- is the instance still there? -------------------------------------------------------------
# Asked for hours, maybe, while a task runs; a task must not fail because the question could
# not be answered: throttling, a network blip or credentials that expired mid-task (an STS or
# SSO session of an hour) are retried under a deadline, with the session rebuilt so refreshed
# credentials are read again. Only a definite answer says the instance is gone.

ANSWER_DEADLINE = 120.0
"""Seconds one look may spend retrying before it gives up (and the task goes on)."""
GONE = "gone"
"""The state of an instance EC2 does not know."""
_EXPIRED = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "InvalidClientTokenId",
        "AuthFailure",
        "UnrecognizedClientException",
    }
)


async def instance_seen(
    options: Options, instance_id: str, *, deadline: float = ANSWER_DEADLINE, label: str = ""
) -> Instance | None:
    """The instance (state `GONE` if EC2 does not know it), or None if no answer came."""

    def read() -> Instance:
        ec2 = AWS(options).client("ec2", max_attempts=2)  # the retries are ours, under a deadline
        return Instances(ec2).get(instance_id) or Instance(instance_id, GONE)

    async def look() -> Instance | None:
        try:
            return await run_blocking(read)
        except (AWSError, CredentialsError) as exc:
            if isinstance(exc, AWSError) and exc.code in _EXPIRED:
                forget_session(options)  # the next look reads the credentials afresh
            log.warning("%s: could not read %s's state (%s); retrying", label, instance_id, exc)
        return None

    return await poll(look, deadline=Deadline(deadline), first=1.0, ceiling=15.0)
