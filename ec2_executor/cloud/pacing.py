"""AWS calls paced under AWS's rate limits, for the whole process.

AWS throttles each account and region with a token bucket per API action. EC2 publishes its
buckets; CloudFormation does not, and its users report throttling at 5 to 10 calls per second.
Every electron of a process shares the same clients, so a burst of electrons is one burst to
AWS. Here each call first takes a token from its action's bucket and waits, in its own thread,
until the token is there. A throttled answer empties that bucket and slows its refill, so every
other caller of the action backs off too; the rate climbs back over the next half minute.

Pure: the clock and the sleep are injected. `aws.py` hooks a `Pacer` into botocore.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

ENABLED = True
"""False: calls go out unpaced and botocore's standard retries alone meet throttling (as
before pacing existed); the tests and benchmarks compare the two."""


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: float


# EC2's published request buckets, per account, region and action.
EC2_NON_MUTATING = Rate(per_second=20.0, burst=100.0)
EC2_MUTATING = Rate(per_second=5.0, burst=50.0)
EC2_ACTIONS = {
    # Unfiltered DescribeInstances has the smaller bucket: pace every call by it.
    "DescribeInstances": Rate(per_second=10.0, burst=50.0),
    "RunInstances": Rate(per_second=2.0, burst=5.0),
    "StartInstances": Rate(per_second=2.0, burst=5.0),
    "TerminateInstances": Rate(per_second=5.0, burst=100.0),
    "CreateTags": Rate(per_second=10.0, burst=100.0),
}
CLOUDFORMATION = Rate(per_second=4.0, burst=8.0)
"""Below the ~5 calls per second per action at which users report throttling."""
OTHER = Rate(per_second=10.0, burst=20.0)
"""STS, SSM: few calls per electron, far below their limits; paced only to meet throttling."""
_NON_MUTATING = ("Describe", "Get", "List", "Search")

SLOWDOWN = 0.5
"""A throttled answer multiplies its action's refill rate by this ..."""
FLOOR = 0.25
"""... down to this share of the nominal rate."""
RECOVERY = 30.0
"""Seconds to climb from no rate back to the nominal one (linearly)."""
BACKOFF_BASE = 0.5
BACKOFF_CAP = 20.0


def rate_for(service: str, operation: str) -> Rate:
    """The bucket of `operation` of `service` (botocore's hyphenated service id)."""
    if service == "ec2":
        if operation in EC2_ACTIONS:
            return EC2_ACTIONS[operation]
        return EC2_NON_MUTATING if operation.startswith(_NON_MUTATING) else EC2_MUTATING
    if service == "cloudformation":
        return CLOUDFORMATION
    return OTHER


def backoff(attempt: int, draw: Callable[[], float] = random.random) -> float:
    """Seconds before retrying a throttled call after its `attempt`-th try (1-based): capped
    exponential with full jitter, so callers throttled together do not come back together."""
    return draw() * min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** (attempt - 1))


class TokenBucket:
    """A bucket of `rate.burst` tokens refilled at `rate.per_second`, that lends ahead.

    A taker always gets a token and is told how long to wait for it: the bucket may go below
    zero, so takers queue in the order they came, and none of them spins.
    """

    def __init__(self, rate: Rate, now: float) -> None:
        self.nominal = rate
        self.per_second = rate.per_second
        self.tokens = rate.burst
        self.updated = now

    def take(self, now: float) -> float:
        """Take a token; the seconds until it is there (0.0: at once)."""
        self._refill(now)
        self.tokens -= 1.0
        return max(0.0, -self.tokens / self.per_second)

    def throttled(self, now: float) -> None:
        """AWS's bucket ran dry (someone else spends from it too): empty ours, slow its refill."""
        self._refill(now)
        self.tokens = min(self.tokens, 0.0)
        slowest = self.nominal.per_second * FLOOR
        self.per_second = max(slowest, self.per_second * SLOWDOWN)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.updated = now
        self.tokens = min(self.nominal.burst, self.tokens + elapsed * self.per_second)
        climb = elapsed * self.nominal.per_second / RECOVERY
        self.per_second = min(self.nominal.per_second, self.per_second + climb)


class Pacer:
    """The buckets of one account and region, one per (service, action); thread-safe."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock, self._sleep = clock, sleep
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    def wait(self, service: str, operation: str) -> float:
        """Block until the call may go; the seconds waited."""
        if not ENABLED:
            return 0.0
        with self._lock:
            delay = self._bucket(service, operation).take(self._clock())
        if delay > 0.0:
            self._sleep(delay)  # outside the lock: others take their places in the queue
        return delay

    def throttled(self, service: str, operation: str) -> None:
        with self._lock:
            self._bucket(service, operation).throttled(self._clock())

    def _bucket(self, service: str, operation: str) -> TokenBucket:
        key = (service, operation)
        if key not in self._buckets:
            self._buckets[key] = TokenBucket(rate_for(service, operation), self._clock())
        return self._buckets[key]


_PACERS: dict[tuple[str, ...], Pacer] = {}
_PACERS_LOCK = threading.Lock()


def pacer_for(account: tuple[str, ...]) -> Pacer:
    """The one pacer of an account and region (whatever identifies them), made on first use."""
    with _PACERS_LOCK:
        return _PACERS.setdefault(account, Pacer())
