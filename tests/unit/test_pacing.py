"""The pacer's token buckets, on an injected clock: no real sleeping."""

from __future__ import annotations

import threading

import pytest

from ec2_executor.cloud import pacing
from ec2_executor.cloud.pacing import Pacer, Rate, TokenBucket, backoff, rate_for


class FakeClock:
    """A clock that moves only when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_full_bucket_lends_its_burst_at_once_then_one_token_per_refill() -> None:
    bucket = TokenBucket(Rate(per_second=2.0, burst=5.0), now=0.0)
    assert [bucket.take(0.0) for _ in range(5)] == [0.0] * 5
    # Past the burst, takers queue in order, half a second apart.
    assert [bucket.take(0.0) for _ in range(3)] == pytest.approx([0.5, 1.0, 1.5])


def test_the_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(Rate(per_second=4.0, burst=8.0), now=0.0)
    for _ in range(8):
        bucket.take(0.0)
    assert bucket.take(1.0) == 0.0  # four tokens came back in a second
    assert bucket.tokens == pytest.approx(3.0)
    bucket.take(100.0)
    assert bucket.tokens == pytest.approx(7.0)  # never more than the burst


def test_a_throttle_empties_the_bucket_and_slows_it_down_to_a_floor() -> None:
    bucket = TokenBucket(Rate(per_second=4.0, burst=8.0), now=0.0)
    bucket.throttled(0.0)
    assert bucket.tokens == 0.0
    assert bucket.per_second == pytest.approx(2.0)
    assert bucket.take(0.0) == pytest.approx(0.5)  # at the slowed rate
    for _ in range(5):
        bucket.throttled(0.0)
    assert bucket.per_second == pytest.approx(4.0 * pacing.FLOOR)


def test_a_throttle_keeps_the_queue_it_found() -> None:
    bucket = TokenBucket(Rate(per_second=4.0, burst=1.0), now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)  # one token lent ahead
    bucket.throttled(0.0)
    assert bucket.tokens == pytest.approx(-1.0)


def test_the_rate_climbs_back_to_nominal_after_a_throttle() -> None:
    bucket = TokenBucket(Rate(per_second=4.0, burst=8.0), now=0.0)
    bucket.throttled(0.0)
    bucket.take(pacing.RECOVERY / 4)
    assert bucket.per_second == pytest.approx(3.0)
    bucket.take(pacing.RECOVERY * 10)
    assert bucket.per_second == 4.0


def test_ec2_actions_get_their_published_buckets_and_cloudformation_a_careful_one() -> None:
    assert rate_for("ec2", "DescribeSubnets") == Rate(per_second=20.0, burst=100.0)
    assert rate_for("ec2", "CreateSecurityGroup") == Rate(per_second=5.0, burst=50.0)
    assert rate_for("ec2", "RunInstances") == Rate(per_second=2.0, burst=5.0)
    assert rate_for("ec2", "DescribeInstances") == Rate(per_second=10.0, burst=50.0)
    assert rate_for("cloudformation", "DescribeStacks") == Rate(per_second=4.0, burst=8.0)
    assert rate_for("cloudformation", "CreateStack") == pacing.CLOUDFORMATION


def test_the_pacer_keeps_one_bucket_per_service_and_action() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    for _ in range(8):
        pacer.wait("cloudformation", "DescribeStacks")
    assert clock.slept == []
    assert pacer.wait("cloudformation", "DescribeStackEvents") == 0.0  # a bucket of its own
    assert pacer.wait("cloudformation", "DescribeStacks") == pytest.approx(0.25)
    assert clock.slept == pytest.approx([0.25])


def test_a_throttled_action_makes_every_caller_of_it_wait() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    pacer.wait("ec2", "DescribeInstances")
    pacer.throttled("ec2", "DescribeInstances")
    assert pacer.wait("ec2", "DescribeInstances") == pytest.approx(0.2)  # 5 per second now
    assert pacer.wait("ec2", "DescribeSubnets") == 0.0


def test_a_disabled_pacer_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacing, "ENABLED", False)
    clock = FakeClock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    for _ in range(20):
        assert pacer.wait("ec2", "RunInstances") == 0.0
    assert clock.slept == []


def test_threads_share_the_bucket_and_queue_one_behind_the_other() -> None:
    clock = FakeClock()
    waits: list[float] = []
    lock = threading.Lock()
    pacer = Pacer(clock=clock, sleep=lambda seconds: None)  # the clock stays: pure queueing

    def call() -> None:
        waited = pacer.wait("ec2", "RunInstances")
        with lock:
            waits.append(waited)

    threads = [threading.Thread(target=call) for _ in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(waits) == pytest.approx([0.0] * 5 + [0.5, 1.0, 1.5, 2.0])


def test_backoff_grows_exponentially_to_a_cap_with_full_jitter() -> None:
    assert backoff(1, draw=lambda: 1.0) == pacing.BACKOFF_BASE
    assert backoff(3, draw=lambda: 1.0) == pacing.BACKOFF_BASE * 4
    assert backoff(30, draw=lambda: 1.0) == pacing.BACKOFF_CAP
    assert backoff(30, draw=lambda: 0.0) == 0.0


def test_one_pacer_per_account_and_region() -> None:
    first = pacing.pacer_for(("test-profile", "eu-west-1"))
    assert pacing.pacer_for(("test-profile", "eu-west-1")) is first
    assert pacing.pacer_for(("test-profile", "us-east-1")) is not first
