"""One watcher per process and account: what many electrons ask of AWS, read in shared rounds.

Each electron asks about its own stack (is it complete, has it failed, is it gone?) and its
own instance (has it an address, does it still run?). Asked one electron at a time, that is
calls in proportion to the electrons, and CloudFormation throttles at about 5 per second. Here
each question waits for the next round of its kind, and one round answers every question asked
since the last one in as few calls as AWS allows: one `ListStacks` page for all the stacks in
progress, one filtered `DescribeInstances` for all the instances. Rounds are spaced, so the
calls per second stay bounded however many electrons wait.

A round runs in a thread of its own, started on demand and ended once idle, and answers through
`concurrent.futures.Future`s: the electrons may run on any event loop (the Covalent server's, a
test's `asyncio.run`). An electron that stops waiting (a cancel) takes its question back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ec2_executor.logs import log

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

SPACING = 1.0
"""Seconds between the starts of two rounds of one kind, at the least."""
CALLS_PER_SECOND = 2.0
"""A round that took many calls (many pages) is followed by a longer pause: calls / this."""
IDLE = 30.0
"""Seconds a round's thread waits for a question before it ends (a new question starts it)."""


@dataclass(frozen=True)
class Answers(Generic[K, V]):
    """What one round read: a value (None: AWS does not know it) or an error, per key."""

    found: Mapping[K, V | Exception | None]
    calls: int
    """AWS calls the round made (its pages), which sets the pause before the next."""


class Rounds(Generic[K, V]):
    """Questions about keys, answered together: `read` gets every key asked since the last
    round and answers each."""

    def __init__(self, read: Callable[[frozenset[K]], Answers[K, V]], *, label: str) -> None:
        self.read, self.label = read, label
        self.rounds = 0
        """Rounds run so far (for tests and benchmarks)."""
        self._asked: dict[K, list[concurrent.futures.Future[V | None]]] = {}
        self._lock = threading.Condition()
        self._running = False
        self._next_at = 0.0

    async def get(self, key: K) -> V | None:
        """`key`'s value as the next round reads it (None: AWS does not know it); raises the
        round's error for it."""
        return await asyncio.wrap_future(self.ask(key))

    def ask(self, key: K) -> concurrent.futures.Future[V | None]:
        answer: concurrent.futures.Future[V | None] = concurrent.futures.Future()
        with self._lock:
            self._asked.setdefault(key, []).append(answer)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name=self.label, daemon=True).start()
            self._lock.notify()
        return answer

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.monotonic()
            try:
                answers = self.read(frozenset(batch))
            except Exception as exc:  # noqa: BLE001  (every question of the round gets it)
                answers = Answers({key: exc for key in batch}, calls=1)
            self.rounds += 1
            for key, waiting in batch.items():
                _settle(waiting, answers.found.get(key))
            pause = max(SPACING, answers.calls / CALLS_PER_SECOND)
            with self._lock:
                self._next_at = started + pause

    def _next_batch(self) -> dict[K, list[concurrent.futures.Future[V | None]]] | None:
        """The questions of the next round, once its time has come; None: idle, ended."""
        with self._lock:
            idle_until = time.monotonic() + IDLE
            while True:
                now = time.monotonic()
                if self._asked and now >= self._next_at:
                    batch, self._asked = self._asked, {}
                    live = {k: w for k, w in batch.items() if not all(f.cancelled() for f in w)}
                    if live:
                        return live
                    continue
                if not self._asked and now >= idle_until:
                    self._running = False
                    return None
                until = self._next_at if self._asked else idle_until
                self._lock.wait(max(0.0, until - now))


def _settle(
    waiting: list[concurrent.futures.Future[V | None]], answer: V | Exception | None
) -> None:
    for future in waiting:
        if not future.set_running_or_notify_cancel():
            continue  # the electron stopped waiting
        if isinstance(answer, Exception):
            future.set_exception(answer)
        else:
            future.set_result(answer)


_ROUNDS: dict[tuple[int, str], tuple[Any, Rounds[Any, Any]]] = {}
_ROUNDS_LOCK = threading.Lock()


def rounds_for(
    client: Any, kind: str, read: Callable[[frozenset[K]], Answers[K, V]]
) -> Rounds[K, V]:
    """The process's rounds of `kind` over `client`. Clients are shared per account and region
    (`aws.AWS.client`): so are the rounds."""
    key = (id(client), kind)
    with _ROUNDS_LOCK:
        known = _ROUNDS.get(key)
        if known is None or known[0] is not client:  # an id reused by a newer client
            known = (client, Rounds(read, label=f"ec2-executor-{kind}"))
            _ROUNDS[key] = known
            log.debug("watching %s for this process", kind)
        rounds: Rounds[K, V] = known[1]
        return rounds
