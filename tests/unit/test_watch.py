"""The watcher around setup and run: a cancel or a gone instance stops the work, whatever it
waits on; the work's own end is reported as it is."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from ec2_executor import watch
from ec2_executor.errors import ConnectionLostError, RemoteError
from ec2_executor.watch import CancelRequested, watched

GONE = ConnectionLostError("Instance i-1 is terminated")


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(watch, "CANCEL_POLL", 0.01)
    monkeypatch.setattr(watch, "INSTANCE_POLL", 0.03)
    yield


class World:
    """What the watcher asks (cancel requested? instance gone?) and what it is told (stop)."""

    def __init__(self, *, cancelled: bool = False, gone: ConnectionLostError | None = None):
        self.cancelled = cancelled
        self.gone = gone
        self.stops: list[Exception] = []
        self.work_cancelled = False

    async def cancel_requested(self) -> bool:
        return self.cancelled

    async def instance_gone(self) -> ConnectionLostError | None:
        return self.gone

    async def on_stop(self, reason: Exception) -> None:
        self.stops.append(reason)

    async def sleep(self, seconds: float = 30.0, *, then: Any = None) -> Any:
        """Work that waits (and notes whether it was cancelled), then returns or raises."""
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.work_cancelled = True
            raise
        if isinstance(then, BaseException):
            raise then
        return then

    def watch(self, work: Any) -> Any:
        return watched(
            work,
            cancel_requested=self.cancel_requested,
            instance_gone=self.instance_gone,
            on_stop=self.on_stop,
        )


def test_finished_work_returns_its_result() -> None:
    world = World()
    assert asyncio.run(world.watch(world.sleep(0.05, then="result"))) == "result"
    assert world.stops == []


def test_a_cancel_stops_the_work_then_raises() -> None:
    world = World(cancelled=True)
    with pytest.raises(CancelRequested):
        asyncio.run(world.watch(world.sleep()))
    assert [type(r) for r in world.stops] == [CancelRequested]
    assert world.work_cancelled


def test_a_gone_instance_stops_the_work_with_its_error() -> None:
    world = World(gone=GONE)
    with pytest.raises(ConnectionLostError) as raised:
        asyncio.run(world.watch(world.sleep()))
    assert raised.value is GONE
    assert world.stops == [GONE]
    assert world.work_cancelled


def test_the_instance_is_not_asked_about_before_its_poll() -> None:
    """Each look is an AWS call: only every INSTANCE_POLL seconds, not every CANCEL_POLL."""
    world = World(gone=GONE)
    asked = 0

    async def counted() -> ConnectionLostError | None:
        nonlocal asked
        asked += 1
        return None

    world.instance_gone = counted  # type: ignore[method-assign]
    asyncio.run(world.watch(world.sleep(0.2)))
    assert 1 <= asked <= 0.2 / watch.INSTANCE_POLL + 1


def test_a_work_failure_while_cancel_is_requested_is_a_cancel() -> None:
    """The cancel deletes the stack under the work, which fails: the cancel is the story."""
    world = World()
    failure = RemoteError("connection reset")

    async def fails_once_cancelled() -> None:
        world.cancelled = True
        raise failure

    with pytest.raises(CancelRequested) as raised:
        asyncio.run(world.watch(fails_once_cancelled()))
    assert raised.value.__cause__ is failure


def test_a_lost_connection_of_a_gone_instance_is_the_instance_error() -> None:
    world = World(gone=GONE)
    lost = ConnectionLostError("connection dropped")
    with pytest.raises(ConnectionLostError) as raised:
        asyncio.run(world.watch(world.sleep(0, then=lost)))
    assert raised.value is GONE and raised.value.__cause__ is lost


def test_a_failure_that_is_not_ours_is_raised_as_is() -> None:
    world = World(cancelled=True, gone=GONE)
    bug = KeyError("a bug")
    with pytest.raises(KeyError) as raised:
        asyncio.run(world.watch(world.sleep(0, then=bug)))
    assert raised.value is bug and world.stops == []


def test_being_cancelled_ourselves_cancels_the_work() -> None:
    world = World()

    async def interrupt() -> None:
        watcher = asyncio.ensure_future(world.watch(world.sleep()))
        await asyncio.sleep(0.05)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        # Before asyncio.run's own clean-up could cancel what was left behind.
        assert world.work_cancelled

    asyncio.run(interrupt())
    assert world.stops == []
