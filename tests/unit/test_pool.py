"""The warm pool's bookkeeping: which idle instance is lent, when one is kept, when retired.

The pool's AWS side effects (`tag_state`, `retire_soon`) run in the background; here they are
recorded instead, so each test sees exactly what the pool asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from ec2_executor.access import KeyPair, client_identity
from ec2_executor.cloud.stacks import StackOutputs
from ec2_executor.options import Options
from ec2_executor.remote import Endpoint, RemoteHost
from ec2_executor.warm import pool as pool_module
from ec2_executor.warm.pool import LIFETIME_MARGIN, Pool, WarmInstance

HOUR = 3600.0


class Effects:
    """The calls the pool made to its AWS side effects, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def tag_state(self, instance: WarmInstance, state: str) -> None:
        self.calls.append(("tag", instance.stack_name, state))

    def retire_soon(self, instance: WarmInstance, reason: str) -> None:
        self.calls.append(("retire", instance.stack_name, reason))

    def of(self, kind: str) -> list[tuple[str, str]]:
        return [(name, what) for k, name, what in self.calls if k == kind]


@pytest.fixture
def effects(monkeypatch: pytest.MonkeyPatch) -> Iterator[Effects]:
    recorded = Effects()
    monkeypatch.setattr(pool_module, "tag_state", recorded.tag_state)
    monkeypatch.setattr(pool_module, "retire_soon", recorded.retire_soon)
    yield recorded


_IDENTITY = client_identity(None)
_HOST_KEY = KeyPair.generate()


def _instance(name: str, *, key: str = "k", life: float = HOUR, warm: int = 5) -> WarmInstance:
    """A warm instance with `life` seconds left before its lifetime ends it."""
    return WarmInstance(
        key=key,
        options=Options(keep_warm_minutes=warm),
        stack_name=name,
        outputs=StackOutputs(instance_id=f"i-{name}", private_ip="127.0.0.1"),
        identity=_IDENTITY,
        host_key=_HOST_KEY,
        remote=RemoteHost(
            Endpoint(host="127.0.0.1", port=22, user="u"), _IDENTITY, _HOST_KEY.public_key()
        ),
        ends_at=time.monotonic() + life,
    )


def test_an_empty_pool_lends_nothing(effects: Effects) -> None:
    assert Pool().take("k") is None
    assert effects.calls == []


def test_an_instance_given_back_is_lent_to_its_key_only(effects: Effects) -> None:
    async def scenario() -> None:
        pool = Pool()
        one = _instance("one")
        pool.give_back(one)
        assert pool.idle() == [one]
        assert pool.take("other key") is None
        assert pool.take("k") is one
        assert pool.idle() == [] and pool.take("k") is None
        assert one.timer is None  # taken: its expiry no longer runs

    asyncio.run(scenario())
    assert [state.split(" since")[0] for _, state in effects.of("tag")] == ["idle", "busy"]
    assert effects.of("retire") == []


def test_the_most_recently_used_is_lent_first(effects: Effects) -> None:
    async def scenario() -> None:
        pool = Pool()
        older, newer = _instance("older"), _instance("newer")
        pool.give_back(older)
        pool.give_back(newer)
        assert pool.take("k") is newer
        assert pool.take("k") is older

    asyncio.run(scenario())


def test_an_idle_instance_expires_and_is_retired(effects: Effects) -> None:
    async def scenario() -> None:
        pool = Pool(idle_seconds=0.02)
        pool.give_back(_instance("idle"))
        await asyncio.sleep(0.1)
        assert pool.idle() == [] and pool.take("k") is None

    asyncio.run(scenario())
    assert effects.of("retire") == [("idle", "idle for 0 s")]


def test_a_taken_instance_does_not_expire(effects: Effects) -> None:
    async def scenario() -> None:
        pool = Pool(idle_seconds=0.02)
        pool.give_back(_instance("busy"))
        assert pool.take("k") is not None
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert effects.of("retire") == []


def test_expiry_follows_keep_warm_minutes_unless_overridden() -> None:
    assert Pool().expiry(Options(keep_warm_minutes=7)) == 7 * 60
    assert Pool(idle_seconds=3).expiry(Options(keep_warm_minutes=7)) == 3


def test_the_lifetime_shortens_the_idle_time(effects: Effects) -> None:
    """An instance is kept only until its lifetime's margin, even if keep_warm allows more."""

    async def scenario() -> float:
        pool = Pool()
        instance = _instance("old", life=LIFETIME_MARGIN + 60, warm=30)
        pool.give_back(instance)
        assert instance.timer is not None
        return instance.timer.when() - asyncio.get_running_loop().time()

    kept = asyncio.run(scenario())
    assert 55 < kept <= 60


def test_an_instance_near_its_lifetime_is_retired_not_kept(effects: Effects) -> None:
    async def scenario() -> None:
        pool = Pool()
        pool.give_back(_instance("old", life=LIFETIME_MARGIN - 1))
        assert pool.idle() == []

    asyncio.run(scenario())
    assert effects.of("retire") == [("old", "its 'max_lifetime_minutes' is nearly over")]
    assert effects.of("tag") == []


def test_take_retires_instances_too_near_their_lifetime(effects: Effects) -> None:
    async def scenario() -> None:
        pool = Pool()
        fresh, aging = _instance("fresh"), _instance("aging", life=LIFETIME_MARGIN + 60)
        pool.give_back(fresh)
        pool.give_back(aging)
        aging.ends_at = time.monotonic() + LIFETIME_MARGIN - 1  # time passed while idle
        assert pool.take("k") is fresh
        assert pool.idle() == []

    asyncio.run(scenario())
    assert effects.of("retire") == [("aging", "its 'max_lifetime_minutes' is nearly over")]
    assert effects.of("tag")[-1] == ("fresh", "busy")


def test_drain_empties_the_pool_and_stops_every_timer(effects: Effects) -> None:
    async def scenario() -> None:
        pool = Pool()
        instances = [_instance("a"), _instance("b", key="other")]
        for instance in instances:
            pool.give_back(instance)
        drained = pool.drain()
        assert sorted(i.stack_name for i in drained) == ["a", "b"]
        assert pool.idle() == [] and pool.take("k") is None
        assert all(i.timer is not None and i.timer.cancelled() for i in instances)

    asyncio.run(scenario())
    assert effects.of("retire") == []  # the caller retires what it drained
