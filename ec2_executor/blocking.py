"""Blocking calls (boto3, Fabric) off the Covalent server's event loop, and one polling helper.

A dedicated pool, not `asyncio.to_thread`'s default (cpu + 4 threads): sixteen electrons each
waiting on a remote command would otherwise starve every other electron on a 2-core server.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache, partial
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=64, thread_name_prefix="ec2-executor")


def submit_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """Start `fn` on the pool; unlike an awaited call it runs on if the caller is cancelled."""
    return _pool().submit(fn, *args, **kwargs)


async def run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool(), partial(fn, *args, **kwargs))


class Deadline:
    """A point in monotonic time; `remaining` never goes below zero."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    @property
    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def passed(self) -> bool:
        return self.remaining == 0.0


async def poll(
    check: Callable[[], Awaitable[T | None]],
    *,
    deadline: Deadline,
    first: float = 0.5,
    factor: float = 1.5,
    ceiling: float = 5.0,
    jitter: float = 0.0,
) -> T | None:
    """Await `check` until it returns a value or the deadline passes (then None), backing off.

    `jitter`: the share of each pause drawn at random, so that many pollers spread out.
    """
    interval = first
    while True:
        result = await check()
        if result is not None or deadline.passed:
            return result
        pause = interval * (1.0 - jitter * random.random())
        await asyncio.sleep(min(pause, deadline.remaining))
        interval = min(interval * factor, ceiling)


_BACKGROUND: set[asyncio.Task[None]] = set()
"""Work started by `in_background`, until it ends."""


def in_background(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` on the loop without awaiting it."""
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(_BACKGROUND.discard)
