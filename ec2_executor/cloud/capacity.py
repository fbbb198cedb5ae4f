"""Where to launch when a zone has no capacity: the other zones, then (if asked) on-demand.

EC2 refuses a launch for lack of capacity per zone (no room for the type, no spot capacity, a
type "not supported in your requested Availability Zone"), or takes it and then terminates the
instance during launch (state reason `Server.InsufficientInstanceCapacity`). CloudFormation
reports either as the instance's CREATE_FAILED reason, quoting EC2's text without its error
code: `Resource handler returned message: "<EC2's text> (Service: Ec2, Status Code: 500,
Request ID: ...)" (RequestToken: ..., HandlerErrorCode: ...)`. This module decides which zones
to try, in which order, and whether a failure is worth another zone; the electron supplies the
launch itself.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cdk_stacks.parameters import StackParameters
from ec2_executor.blocking import Deadline
from ec2_executor.errors import CapacityError, StackCreationError, VcpuLimitError
from ec2_executor.logs import log

T = TypeVar("T")

# EC2's texts as CloudFormation quotes them (and the codes, which older reasons carried).
# `Server.InsufficientInstanceCapacity` is the state reason of an instance terminated during
# launch, which CloudFormation quotes when the instance does not stabilise.
_ZONE_REFUSALS = re.compile(
    r"InsufficientInstanceCapacity|InsufficientCapacity|InsufficientHostCapacity"
    r"|do not have sufficient .{0,40}capacity"
    r"|insufficient capacity available to satisfy the launch request"
    r"|no Spot capacity available|capacity-not-available|capacity-oversubscribed"
    r"|not supported in your requested Availability Zone"
    r"|Error Code: Unsupported\b",
    re.IGNORECASE,
)
# Spot refused in every zone alike: only on-demand can help.
# EC2's own text for the spot quota is "Max spot instance count exceeded": CloudFormation
# quotes the text, not the code.
_SPOT_REFUSALS = re.compile(
    r"MaxSpotInstanceCountExceeded|Max spot instance count exceeded"
    r"|SpotMaxPriceTooLow|price-too-low",
    re.IGNORECASE,
)

# The account's vCPU quota is regional: another zone would meet the same limit.
_VCPU_LIMIT = re.compile(
    r"VcpuLimitExceeded|more vCPU capacity than your current vCPU limit", re.IGNORECASE
)


def vcpu_limit(reason: str) -> bool:
    """Whether a launch failed on the account's regional vCPU quota."""
    return bool(_VCPU_LIMIT.search(reason))


class Refusal(enum.Enum):
    ZONE = "no capacity in this zone"
    SPOT = "spot refused everywhere"


def refusal(reason: str) -> Refusal | None:
    """Why a launch was refused, when another zone or market could succeed; else None."""
    if _SPOT_REFUSALS.search(reason):
        return Refusal.SPOT
    if _ZONE_REFUSALS.search(reason):
        return Refusal.ZONE
    return None


@dataclass(frozen=True)
class Placement:
    """A zone to launch in, and the subnet there (none when the stack creates its own)."""

    zone: str
    subnet_id: str = ""

    def __str__(self) -> str:
        zone = self.zone or "the region's first zone"
        return f"{zone} ({self.subnet_id})" if self.subnet_id else zone


@dataclass(frozen=True)
class Attempt:
    placement: Placement
    spot: bool

    def __str__(self) -> str:
        return f"{self.placement} {'spot' if self.spot else 'on-demand'}"


def spread(zones: Sequence[T], key: str, zone_of: Callable[[T], str]) -> list[T]:
    """`zones` sorted by zone name, then rotated by a digest of `key` (the stack name): each
    electron starts in a different zone, so concurrent electrons spread over the region
    instead of all asking the first zone."""
    ordered = sorted(zones, key=zone_of)
    if not ordered:
        return ordered
    start = int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(ordered)
    return ordered[start:] + ordered[:start]


def attempts(placements: Sequence[Placement], spot: bool | str) -> list[Attempt]:
    """Every zone in order; with spot="fallback", every zone on spot, then every zone on-demand."""
    if spot == "fallback":
        return [Attempt(p, True) for p in placements] + [Attempt(p, False) for p in placements]
    return [Attempt(p, bool(spot)) for p in placements]


def placed(parameters: StackParameters, attempt: Attempt) -> StackParameters:
    """The stack parameters for one attempt: its subnet or zone, and its market."""
    where = attempt.placement
    placed: dict[str, str | int | bool] = {**parameters, "UseSpot": attempt.spot}
    if where.subnet_id:
        placed["SubnetId"] = where.subnet_id
    else:
        placed["AvailabilityZone"] = where.zone
    return StackParameters(**placed)


FAILOVER_ROUNDS = 3
"""The failover as a whole may take this many times 'provision_timeout': each attempt gets the
whole 'provision_timeout', and a new attempt starts only while the budget holds one more."""


def failover_budget(provision_timeout: float) -> Deadline:
    return Deadline(FAILOVER_ROUNDS * provision_timeout)


_QUOTED = re.compile(r'Resource handler returned message: "(?P<text>.*?)(?: \(Service: |"|$)')
_FIRST_SENTENCE = re.compile(r"^.*?\)?\.(?=\s|$)")
_STATE = re.compile(r"\. Current state: [\w-]+\. Reason: ")


def ec2_message(reason: str) -> str:
    """EC2's own words in a CREATE_FAILED reason (its first sentence), without
    CloudFormation's wrapping; the reason itself when it has no quote."""
    found = _QUOTED.search(reason)
    text = found["text"] if found else reason.rsplit(": ", 1)[-1]
    text = _STATE.sub(": ", text)  # an instance that did not stabilise: keep EC2's reason
    first = _FIRST_SENTENCE.match(text)
    return (first[0] if first else text).strip()


async def first_that_fits(
    tried_in_order: Sequence[Attempt],
    launch: Callable[[Attempt, Deadline], Awaitable[T]],
    *,
    clear: Callable[[], Awaitable[None]],
    name: str,
    instance_type: str,
    provision_timeout: float,
    budget: Deadline | None = None,
) -> T:
    """`launch` each attempt, with a deadline of its own, until one succeeds. A capacity
    refusal, early or late, moves on to the next attempt once `clear` has removed the failed
    stack; any other failure is raised as is. No attempt starts once `budget` (by default
    `failover_budget`) has less than `provision_timeout` left; the final error names every
    zone tried with EC2's reason, and those left untried."""
    budget = budget or failover_budget(provision_timeout)
    tried: list[str] = []
    untried: list[str] = []
    spot_refused = False
    for attempt in tried_in_order:
        if attempt.spot and spot_refused:
            continue
        if tried and budget.remaining < provision_timeout:
            untried.append(str(attempt))
            continue
        try:
            return await launch(attempt, Deadline(provision_timeout))
        except StackCreationError as exc:
            if vcpu_limit(str(exc)):  # the caller removes the stack, as for any other failure
                raise VcpuLimitError(str(exc), stack_name=name) from exc
            why = refusal(str(exc))
            if why is None:
                raise
            spot_refused = spot_refused or (why is Refusal.SPOT and attempt.spot)
            tried.append(f"{attempt}: {why.value} ({ec2_message(str(exc))})")
            log.warning(
                "%s: %s refused %s (%s); trying elsewhere", name, attempt, instance_type, exc
            )
            await clear()
    ran_out = (
        f" The failover's time budget ({FAILOVER_ROUNDS} x 'provision_timeout') ran out before "
        f"{'; '.join(untried)}."
        if untried
        else ""
    )
    only_spot = all(attempt.spot for attempt in tried_in_order)
    fallback = ", or spot='fallback' to fall back to on-demand" if only_spot else ""
    raise CapacityError(
        f"Stack {name!r}: no zone had capacity for {instance_type!r}; tried "
        f"{'; '.join(tried) or 'nothing'}.{ran_out} Try again later, or another "
        f"'instance_type' or 'region'{fallback}.",
        stack_name=name,
    )
