"""Is the instance still there? Asked every few seconds while a task runs, for hours maybe.

A task must not fail because the question could not be answered: throttling, a network blip
or credentials that expired mid-task (an STS or SSO session of an hour) get retried under a
deadline, with the session rebuilt so refreshed credentials are read again. Only a definite
answer (the instance is not running, or EC2 does not know it) says the instance is gone.
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from ec2_executor.aws import AWS, error_code, forget_session
from ec2_executor.blocking import Deadline, poll, run_blocking
from ec2_executor.logs import log
from ec2_executor.options import Options

ANSWER_DEADLINE = 120.0
"""Seconds one look may spend retrying before it gives up (and the task goes on)."""
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


def _describe(options: Options, instance_id: str) -> str:
    ec2 = AWS(options).client("ec2", max_attempts=2)  # the retries are ours, under a deadline
    found = ec2.describe_instances(InstanceIds=[instance_id])
    instances = [i for r in found["Reservations"] for i in r["Instances"]]
    return str(instances[0]["State"]["Name"]) if instances else "gone"


async def instance_state(
    options: Options, instance_id: str, *, deadline: float = ANSWER_DEADLINE, label: str = ""
) -> str | None:
    """The instance's state ('gone' if EC2 does not know it), or None if no answer came."""

    async def look() -> str | None:
        try:
            return await run_blocking(_describe, options, instance_id)
        except ClientError as exc:
            code = error_code(exc)
            if code.startswith("InvalidInstanceID.NotFound"):
                return "gone"
            if code in _EXPIRED:
                forget_session(options)  # the next look reads the credentials afresh
            log.warning("%s: could not read %s's state (%s); retrying", label, instance_id, exc)
        except BotoCoreError as exc:
            log.warning("%s: could not read %s's state (%s); retrying", label, instance_id, exc)
        return None

    return await poll(look, deadline=Deadline(deadline), first=1.0, ceiling=15.0)
