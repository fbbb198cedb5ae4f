"""Stop an electron's work early, whatever it is waiting on: a cancel, or its instance gone.

One watcher around each of setup and run, instead of a check in every wait: planning, the
stack's creation, the wait for SSH, the bootstrap and the task itself all end within
`CANCEL_POLL` seconds of a cancel, and within `INSTANCE_POLL` of the instance going away.

Is the instance still there? That is asked for hours, maybe, while a task runs, and a task must
not fail because the question could not be answered: `cloud.instances.instance_seen` gives
only a definite answer, or None.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ec2_executor.errors import ConnectionLostError, EC2ExecutorError

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
