"""`budget_usd`: refuse a budget that cannot pay for the instance's start, and turn the rest
into the instance's own lifetime.

The instance enforces it with the timer that enforces `max_lifetime_minutes` (`bootcmd` in
`cdk_stacks/user_data.py`): the budget only shortens that timer, and `LifetimeLimit` makes the
power-off say which of the two ended it. So the budget holds even when the dispatcher is gone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ec2_executor.cost import record
from ec2_executor.cost.prices import Rate
from ec2_executor.errors import ConfigurationError

PUBLISHED_STARTUP = 65.0
"""Seconds from CreateStack to a ready bootstrap before this machine has measured any: the
published figures of BENCHMARKS.md's paper estimate (launch 10-30 s, boot to SSH 5-25 s,
bootstrap 2-70 s), taken at their lower middle."""
BILLED_MINIMUM = 60.0
"""EC2 bills a Linux instance by the second, with a minimum of one minute."""


@dataclass(frozen=True)
class Budget:
    """A checked budget: the rate it was checked against and the lifetime it buys."""

    usd: float
    rate: Rate
    minutes: int
    """The instance's lifetime: what the budget pays for, at most `max_lifetime_minutes`."""
    limited: bool
    """The budget, not `max_lifetime_minutes`, sets the lifetime."""

    def __str__(self) -> str:
        return f"${self.usd:.4f} ('budget_usd') at {self.rate}"


def expected_startup() -> tuple[float, str]:
    """Seconds the instance bills before a task can start, and where that figure comes from."""
    measured = record.median_startup()
    if measured is not None:
        seconds, count = measured
        return (
            seconds,
            f"the median launch, boot and bootstrap of {count} electron(s) measured here",
        )
    return (
        PUBLISHED_STARTUP,
        "the published launch, boot and bootstrap times (none measured here yet)",
    )


def check(budget_usd: float, rate: Rate, max_lifetime_minutes: int) -> Budget:
    """The lifetime `budget_usd` buys at `rate`; a `ConfigurationError` when it cannot even pay
    for the instance's start (or no price is known to hold it to)."""
    hourly = rate.usd_per_hour
    if hourly is None:
        raise ConfigurationError(
            f"Option 'budget_usd' is {budget_usd!r}, but no price is known for "
            f"{rate.instance_type} in {rate.region} (not in the Price List API's answer nor in "
            f"the package's catalog); allow 'pricing:GetProducts', or drop 'budget_usd'."
        )
    startup, why = expected_startup()
    least = hourly * max(startup, BILLED_MINIMUM) / 3600.0
    minutes = min(math.floor(budget_usd / hourly * 60.0), max_lifetime_minutes)
    if budget_usd < least or minutes < 1:
        raise ConfigurationError(
            f"Option 'budget_usd' is {budget_usd!r}, below the expected minimum of "
            f"${least:.4f} for this electron: {rate}, for {max(startup, BILLED_MINIMUM):.0f} s "
            f"({why}; EC2 bills at least {BILLED_MINIMUM:.0f} s). Raise 'budget_usd' to at "
            f"least {math.ceil(least * 10000) / 10000:.4f}, or drop it."
        )
    return Budget(
        usd=budget_usd,
        rate=rate,
        minutes=minutes,
        limited=minutes < max_lifetime_minutes,
    )
