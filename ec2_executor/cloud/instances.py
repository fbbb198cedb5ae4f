"""The instances the executor reads: one `DescribeInstances` reader, typed views, and one rule
for an instance EC2 does not know (None, or absent from a batch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ec2_executor.blocking import Deadline, poll, run_blocking
from ec2_executor.cloud.aws import AWS, aws_errors, forget_session
from ec2_executor.cloud.watcher import Answers, rounds_for
from ec2_executor.errors import AWSError, CredentialsError
from ec2_executor.logs import log
from ec2_executor.options import Options

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

LIVE_STATES = frozenset({"pending", "running"})
"""The states in which an instance can still run a task."""
STACK_ID_TAG = "aws:cloudformation:stack-id"
"""CloudFormation's tag on what a stack creates, there from the instance's launch on."""
FILTER_VALUES = 200
"""Values one `DescribeInstances` filter takes."""


@dataclass(frozen=True)
class Instance:
    """What the executor needs of one instance."""

    instance_id: str
    state: str
    private_ip: str = ""
    public_ip: str = ""
    tags: Mapping[str, str] | None = None

    @classmethod
    def from_ec2(cls, found: Mapping[str, Any]) -> Instance:
        return cls(
            instance_id=str(found["InstanceId"]),
            state=str(found["State"]["Name"]),
            private_ip=str(found.get("PrivateIpAddress", "")),
            public_ip=str(found.get("PublicIpAddress", "")),
            tags={t["Key"]: t["Value"] for t in found.get("Tags", [])},
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
        found, _ = self._filtered("instance-id", ids)
        return {i.instance_id: i for i in found}

    def of_stacks(self, stack_ids: Sequence[str]) -> tuple[dict[str, Instance], int]:
        """The live instance of each stack (by stack id) that has launched one, and the calls
        it took: CloudFormation names the instance only later (DescribeStackResource, one call
        per stack), but tags it with the stack's id from its launch on."""
        found, calls = self._filtered(f"tag:{STACK_ID_TAG}", stack_ids)
        return {i.tags[STACK_ID_TAG]: i for i in found if i.live and i.tags}, calls

    def _filtered(self, name: str, values: Sequence[str]) -> tuple[list[Instance], int]:
        """The instances whose `name` is one of `values`, and the calls (pages) it took."""
        found: list[Instance] = []
        calls = 0
        with aws_errors("describing instances"):
            for start in range(0, len(values), FILTER_VALUES):
                chunk = list(values[start : start + FILTER_VALUES])
                pages = self.ec2.get_paginator("describe_instances").paginate(
                    Filters=[{"Name": name, "Values": chunk}]
                )
                for page in pages:
                    calls += 1
                    found += [
                        Instance.from_ec2(i) for r in page["Reservations"] for i in r["Instances"]
                    ]
        return found, calls

    async def watched(self, instance_id: str) -> Instance | None:
        """The instance as the process's next round of instance reads finds it; None when EC2
        does not know it (any more)."""
        return await rounds_for(self.ec2, "instances", self._read_by_id).get(instance_id)

    async def launched_by(self, stack_id: str) -> Instance | None:
        """The stack's live instance as the process's next round finds it; None before its
        launch."""
        return await rounds_for(self.ec2, "launches", self._read_of_stacks).get(stack_id)

    def _read_by_id(self, ids: frozenset[str]) -> Answers[str, Instance]:
        found, calls = self._filtered("instance-id", sorted(ids))
        known = {i.instance_id: i for i in found}
        return Answers({i: known.get(i) for i in ids}, calls=calls)

    def _read_of_stacks(self, stack_ids: frozenset[str]) -> Answers[str, Instance]:
        known, calls = self.of_stacks(sorted(stack_ids))
        return Answers({s: known.get(s) for s in stack_ids}, calls=calls)


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


async def instance_state(
    options: Options, instance_id: str, *, deadline: float = ANSWER_DEADLINE, label: str = ""
) -> str | None:
    """The instance's state (`GONE` if EC2 does not know it), or None if no answer came."""

    def client() -> EC2Client:
        ec2: EC2Client = AWS(options).client("ec2", max_attempts=2)  # the retries are ours
        return ec2

    async def look() -> str | None:
        try:
            ec2 = await run_blocking(client)
            found = await Instances(ec2).watched(instance_id)  # with every other electron's
            return found.state if found else GONE
        except (AWSError, CredentialsError) as exc:
            if isinstance(exc, AWSError) and exc.code in _EXPIRED:
                forget_session(options)  # the next look reads the credentials afresh
            log.warning("%s: could not read %s's state (%s); retrying", label, instance_id, exc)
        return None

    return await poll(look, deadline=Deadline(deadline), first=1.0, ceiling=15.0)
