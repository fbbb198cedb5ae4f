"""The process's shared reads (`cloud.watcher.Rounds`) and instance slots (`cloud.slots`),
with a stand-in for AWS: questions asked together are answered by one read; the queue at the
cap or the quota is first come, first served, and a cancel leaves no slot behind."""

from __future__ import annotations

import asyncio

import pytest

from ec2_executor.cloud import watcher
from ec2_executor.cloud.slots import Slots
from ec2_executor.cloud.watcher import Answers, Rounds


class QuotaUsed(Exception):
    pass


@pytest.fixture(autouse=True)
def quick_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher, "SPACING", 0.05)


def test_questions_asked_together_share_a_read() -> None:
    reads: list[frozenset[str]] = []

    def read(keys: frozenset[str]) -> Answers[str, str]:
        reads.append(keys)
        return Answers({k: k.upper() for k in keys if k != "gone"}, calls=1)

    rounds: Rounds[str, str] = Rounds(read, label="test")

    async def many() -> list[str | None]:
        return await asyncio.gather(*(rounds.get(k) for k in [*"abcdefghij", "gone"]))

    assert asyncio.run(many()) == [*"ABCDEFGHIJ", None]
    assert len(reads) <= 2  # the first question may start a round alone
    assert set().union(*reads) == {*"abcdefghij", "gone"}


def test_a_failed_read_fails_each_question_of_its_round() -> None:
    def read(keys: frozenset[str]) -> Answers[str, str]:
        if "bad" in keys and len(keys) == 1:
            return Answers({"bad": ValueError("bad key")}, calls=1)
        raise RuntimeError("AWS is down")

    rounds: Rounds[str, str] = Rounds(read, label="test")
    with pytest.raises(ValueError, match="bad key"):
        asyncio.run(rounds.get("bad"))
    with pytest.raises(RuntimeError, match="down"):
        asyncio.run(rounds.get("other"))


def test_at_the_cap_electrons_wait_in_order_and_the_smallest_cap_wins() -> None:
    slots = Slots()
    slots.limit(3)
    slots.limit(1)
    slots.limit(0)  # "no cap" does not lift another executor's

    async def scenario() -> list[str]:
        order: list[str] = []
        await slots.take("a")

        async def later(name: str) -> None:
            await slots.take(name)
            order.append(name)

        b = asyncio.ensure_future(later("b"))
        await asyncio.sleep(0.01)
        c = asyncio.ensure_future(later("c"))
        await asyncio.sleep(0.01)
        assert order == [] and slots.held == 1
        slots.give_back()
        await b
        assert order == ["b"]
        slots.give_back()
        await c
        return order

    assert asyncio.run(scenario()) == ["b", "c"]
    assert slots.cap == 1 and slots.waited == 2


def test_at_the_quota_an_electron_waits_for_another_or_fails_alone() -> None:
    slots = Slots()

    async def scenario() -> None:
        await slots.take("a")
        await slots.take("b")
        waiting = asyncio.ensure_future(slots.retake("b", on_quota=QuotaUsed))
        await asyncio.sleep(0.01)
        assert not waiting.done() and slots.held == 1
        slots.give_back()  # a ends: b launches again
        await waiting
        assert slots.held == 1
        with pytest.raises(QuotaUsed):  # b alone holds nothing to wait for
            await slots.retake("b", on_quota=QuotaUsed)
        assert slots.held == 0

    asyncio.run(scenario())


def test_a_cancelled_wait_leaves_no_slot_taken() -> None:
    slots = Slots()
    slots.limit(1)

    async def scenario() -> None:
        await slots.take("a")
        waiting = asyncio.ensure_future(slots.take("b"))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        slots.give_back()
        assert slots.held == 0
        await slots.take("c")  # at once: nobody waits
        assert slots.held == 1

    asyncio.run(scenario())
