"""Stop an electron's work early, whatever it is waiting on: a cancel, or its instance gone.

One watcher around each of setup and run, instead of a check in every wait: planning, the
stack's creation, the wait for SSH, the bootstrap and the task itself all end within
`CANCEL_POLL` seconds of a cancel, and within `INSTANCE_POLL` of the instance going away.

Is the instance still there? That is asked for hours, maybe, while a task runs, and a task must
not fail because the question could not be answered: throttling, a network blip or credentials
that expired mid-task (an STS or SSO session of an hour) are retried under a deadline, with the
session rebuilt so refreshed credentials are read again. Only a definite answer (the instance
is not running, or EC2 does not know it) says the instance is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from ec2_executor.blocking import Deadline, poll, run_blocking
from ec2_executor.cloud.aws import AWS, error_code, forget_session
from ec2_executor.errors import ConnectionLostError, EC2ExecutorError
from ec2_executor.logs import log
from ec2_executor.options import Options

T = TypeVar("T")

CANCEL_POLL = 2.0
"""Seconds between two questions to Covalent: has this task been cancelled?"""
INSTANCE_POLL = 10.0
"""Seconds between two looks at the instance's state (one DescribeInstances call)."""


class CancelRequested(Exception):
    """Covalent asked to cancel the task; the caller turns this into Covalent's own error."""


async def watched(
    work: Coroutine[Any, Any, T],
    *,
    cancel_requested: Callable[[], Awaitable[bool]],
    instance_gone: Callable[[], Awaitable[ConnectionLostError | None]],
    on_stop: Callable[[Exception], Awaitable[None]],
) -> T:
    """Await `work`; stop it (`on_stop` with the reason, then cancel it) once a cancel or a gone
    instance is seen.

    Raises `CancelRequested` on a cancel, even when the work failed first (a cancel deletes the
    stack under it); the gone instance's `ConnectionLostError` when it went away, even when the
    work noticed first (a dropped connection says less than "terminated").
    """
    task = asyncio.ensure_future(work)
    next_look = time.monotonic() + INSTANCE_POLL
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CANCEL_POLL)
            if done:
                return await _outcome(task, cancel_requested, instance_gone)
            stop: Exception | None = None
            if await cancel_requested():
                stop = CancelRequested("The task was cancelled.")
            elif time.monotonic() >= next_look:
                next_look = time.monotonic() + INSTANCE_POLL
                stop = await instance_gone()
            if stop is not None:
                await on_stop(stop)
                await _cancel(task)
                raise stop
    finally:
        await _cancel(task)  # we were cancelled ourselves (an interrupt): so is the work


async def _outcome(
    task: asyncio.Future[T],
    cancel_requested: Callable[[], Awaitable[bool]],
    instance_gone: Callable[[], Awaitable[ConnectionLostError | None]],
) -> T:
    error = task.exception()
    if isinstance(error, EC2ExecutorError):
        if await cancel_requested():
            raise CancelRequested("The task was cancelled.") from error
        if isinstance(error, ConnectionLostError):
            gone = await instance_gone()
            if gone is not None:
                raise gone from error
    return task.result()


async def _cancel(task: asyncio.Future[Any]) -> None:
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: the reason to stop is the story
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


# --- is the instance still there? ----------------------------------------------------------

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
