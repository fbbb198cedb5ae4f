"""How many instances this process's electrons hold at once, per account and region: the
`max_concurrent_instances` cap, and the queue of electrons that met the regional vCPU quota.

An electron takes a slot before it creates its stack and gives it back once the stack is
deleted. At the cap, or after its launch met the vCPU quota, it waits in one first-come queue
for a slot another electron gives back. Waiting is an `await` on a `concurrent.futures.Future`:
the electrons may run on any event loop, and a cancel ends the wait at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable

from ec2_executor.logs import log

_Grant = concurrent.futures.Future[None]


class Slots:
    """The slots of one account and region; thread-safe."""

    def __init__(self) -> None:
        self.held = 0
        self.cap = 0
        """The smallest `max_concurrent_instances` any executor of the process set; 0: none."""
        self.waited = 0
        """Waits so far (for tests and benchmarks)."""
        self._queue: deque[_Grant] = deque()
        self._lock = threading.Lock()

    def limit(self, cap: int) -> None:
        """Executors that set different caps: the smallest wins."""
        with self._lock:
            if cap > 0:
                self.cap = min(self.cap, cap) if self.cap else cap

    async def take(self, name: str) -> None:
        """A slot: at once while the process is below its cap and nobody waits, else after
        those in the queue before it."""
        with self._lock:
            while self._queue and self._queue[0].cancelled():
                self._queue.popleft()
            if not self._queue and (not self.cap or self.held < self.cap):
                self.held += 1
                return
            grant = self._enqueue()
        log.info(
            "%s: waiting for an instance of this process to end ('max_concurrent_instances' "
            "is %s, %s waiting)",
            name,
            self.cap or "not set",
            len(self._queue),
        )
        await self._granted(grant)

    async def retake(self, name: str, *, on_quota: Callable[[], Exception]) -> None:
        """After a launch met the vCPU quota: give the slot back and wait for another
        electron of the process to end; raise `on_quota()` at once when no other electron
        holds an instance, so that nothing of this process would ever free the quota."""
        with self._lock:
            self.held -= 1
            others = self.held
            if others > 0:
                grant = self._enqueue()
        if others <= 0:
            self._grant_next()
            raise on_quota()
        log.info(
            "%s: the account's vCPU quota is reached; waiting for one of this process's %d "
            "instances to end (%d waiting)",
            name,
            others,
            len(self._queue),
        )
        await self._granted(grant)

    def give_back(self) -> None:
        """The electron's instance is gone: its slot goes to the first in the queue."""
        with self._lock:
            self.held -= 1
        self._grant_next()

    def _enqueue(self) -> _Grant:
        grant: _Grant = concurrent.futures.Future()
        self._queue.append(grant)
        self.waited += 1
        return grant

    def _grant_next(self) -> None:
        """Hand the slot just freed to the first in the queue (skipping waits given up)."""
        with self._lock:
            while self._queue and (not self.cap or self.held < self.cap):
                grant = self._queue.popleft()
                if grant.set_running_or_notify_cancel():
                    self.held += 1
                    grant.set_result(None)
                    return

    async def _granted(self, grant: _Grant) -> None:
        try:
            await asyncio.wrap_future(grant)
        except asyncio.CancelledError:
            if grant.done() and not grant.cancelled():  # granted as we were cancelled
                self.give_back()
            raise


_SLOTS: dict[tuple[str, ...], Slots] = {}
_SLOTS_LOCK = threading.Lock()


def slots_for(account: tuple[str, ...]) -> Slots:
    """The one `Slots` of an account and region, made on first use."""
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(account, Slots())
