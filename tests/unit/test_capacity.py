"""Where to launch when a zone has no capacity: which refusals move on, in which order."""

from __future__ import annotations

import asyncio

import pytest

from cdk_stacks.parameters import StackParameters
from ec2_executor.cloud.capacity import (
    Attempt,
    Placement,
    Refusal,
    attempts,
    first_that_fits,
    placed,
    refusal,
    spread,
)
from ec2_executor.errors import CapacityError, StackCreationError

# CREATE_FAILED reasons as CloudFormation reports EC2's refusals.
ZONE_REASONS = [
    'Resource handler returned message: "We currently do not have sufficient t3.micro capacity '
    "in the Availability Zone you requested (us-east-1a). Our system will be working on "
    'provisioning additional capacity." (Service: Ec2, Status Code: 500) '
    "(HandlerErrorCode: GeneralServiceException)",
    "Insufficient capacity. (Service: AmazonEC2; Status Code: 500; "
    "Error Code: InsufficientInstanceCapacity; Request ID: 1)",
    "Your requested instance type (t4g.micro) is not supported in your requested Availability "
    "Zone (us-east-1e). Please retry your request by not specifying an Availability Zone.",
    "The requested configuration is currently not supported. (Service: Ec2, Status Code: 400) "
    "(Error Code: Unsupported)",
    "There is no Spot capacity available that matches your request. (Error Code: "
    "InsufficientInstanceCapacity)",
    "capacity-not-available",
]
SPOT_REASONS = [
    "Max spot instance count exceeded (Service: AmazonEC2; Status Code: 400; "
    "Error Code: MaxSpotInstanceCountExceeded)",
    "Your Spot request price of 0.001 is lower than the minimum required Spot request "
    "fulfillment price of 0.0035. (Error Code: SpotMaxPriceTooLow)",
    # As CloudFormation's CREATE_FAILED reason quotes it: EC2's text, no EC2 error code.
    'Resource handler returned message: "Max spot instance count exceeded (Service: Ec2, '
    'Status Code: 400, Request ID: 5d2c0e4b)" (RequestToken: 1f0e, HandlerErrorCode: '
    "GeneralServiceException)",
]
OTHER_REASONS = [
    "You have requested more vCPU capacity than your current vCPU limit of 32 allows "
    "(Error Code: VcpuLimitExceeded)",
    "The image id '[ami-0123]' does not exist (Error Code: InvalidAMIID.NotFound)",
    "Resource creation cancelled",
    "",
    "The operation is not supported. (Error Code: UnsupportedOperation)",
]


@pytest.mark.parametrize("reason", ZONE_REASONS)
def test_a_zone_without_capacity_is_worth_another_zone(reason: str) -> None:
    assert refusal(reason) is Refusal.ZONE


@pytest.mark.parametrize("reason", SPOT_REASONS)
def test_a_spot_refusal_is_the_same_in_every_zone(reason: str) -> None:
    assert refusal(reason) is Refusal.SPOT


@pytest.mark.parametrize("reason", OTHER_REASONS)
def test_other_failures_are_not_capacity(reason: str) -> None:
    assert refusal(reason) is None


A, B, C = (Placement(zone=z, subnet_id=f"subnet-{z[-1]}") for z in ("us-east-1a", "b", "c"))


def test_attempts_on_demand_and_spot_try_each_zone_once() -> None:
    assert attempts([A, B], False) == [Attempt(A, False), Attempt(B, False)]
    assert attempts([A, B], True) == [Attempt(A, True), Attempt(B, True)]


def test_attempts_with_fallback_try_spot_everywhere_then_on_demand() -> None:
    assert attempts([A, B, C], "fallback") == [
        Attempt(A, True),
        Attempt(B, True),
        Attempt(C, True),
        Attempt(A, False),
        Attempt(B, False),
        Attempt(C, False),
    ]


def test_spread_rotates_the_sorted_zones_by_the_key() -> None:
    zones = ["us-east-1c", "us-east-1a", "us-east-1b"]
    ordered = sorted(zones)
    starts = set()
    for n in range(60):
        got = spread(zones, f"stack-{n}", lambda z: z)
        start = ordered.index(got[0])
        assert got == ordered[start:] + ordered[:start]
        assert got == spread(zones, f"stack-{n}", lambda z: z)  # the same key, the same order
        starts.add(start)
    assert starts == {0, 1, 2}, "electrons should start in every zone"
    assert spread([], "stack", lambda z: z) == []


def test_placed_sets_the_subnet_or_the_zone_and_the_market() -> None:
    base = StackParameters(InstanceType="t3.micro", UseSpot=True)
    in_subnet = placed(base, Attempt(A, False))
    assert (in_subnet["SubnetId"], in_subnet["UseSpot"]) == ("subnet-a", False)
    assert in_subnet["AvailabilityZone"] == ""  # the default: the subnet decides
    in_zone = placed(base, Attempt(Placement(zone="us-east-1b"), True))
    assert (in_zone["AvailabilityZone"], in_zone["UseSpot"]) == ("us-east-1b", True)
    assert "SubnetId" not in in_zone and in_zone["InstanceType"] == "t3.micro"


class FakeLaunch:
    """Fails each attempt with the reason given for its zone and market; else succeeds."""

    def __init__(self, reasons: dict[Attempt, str]) -> None:
        self.reasons = reasons
        self.log: list[str] = []

    async def launch(self, attempt: Attempt) -> str:
        self.log.append(f"launch {attempt}")
        if attempt in self.reasons:
            raise StackCreationError(self.reasons[attempt], stack_name="s")
        return f"up in {attempt}"

    async def clear(self) -> None:
        self.log.append("clear")


def _fit(fake: FakeLaunch, tried: list[Attempt]) -> str:
    return asyncio.run(
        first_that_fits(tried, fake.launch, clear=fake.clear, name="s", instance_type="t3.micro")
    )


def test_a_zone_refusal_clears_the_stack_and_tries_the_next_zone() -> None:
    fake = FakeLaunch({Attempt(A, False): ZONE_REASONS[0]})
    assert _fit(fake, attempts([A, B, C], False)) == f"up in {Attempt(B, False)}"
    assert fake.log == [f"launch {Attempt(A, False)}", "clear", f"launch {Attempt(B, False)}"]


def test_any_other_failure_is_raised_at_once() -> None:
    fake = FakeLaunch({Attempt(A, False): OTHER_REASONS[0]})
    with pytest.raises(StackCreationError, match="VcpuLimitExceeded") as raised:
        _fit(fake, attempts([A, B], False))
    assert not isinstance(raised.value, CapacityError)
    assert fake.log == [f"launch {Attempt(A, False)}"]  # not cleared: teardown deletes it


def test_a_spot_refusal_skips_the_other_spot_zones_for_on_demand() -> None:
    fake = FakeLaunch({Attempt(A, True): SPOT_REASONS[1]})
    assert _fit(fake, attempts([A, B, C], "fallback")) == f"up in {Attempt(A, False)}"
    assert fake.log == [f"launch {Attempt(A, True)}", "clear", f"launch {Attempt(A, False)}"]


def test_a_spot_zone_refusal_tries_spot_in_the_next_zone_first() -> None:
    fake = FakeLaunch({Attempt(A, True): ZONE_REASONS[4]})
    assert _fit(fake, attempts([A, B], "fallback")) == f"up in {Attempt(B, True)}"


def test_no_zone_with_capacity_names_every_attempt() -> None:
    tried = attempts([A, B], False)
    fake = FakeLaunch(dict.fromkeys(tried, ZONE_REASONS[1]))
    with pytest.raises(CapacityError) as raised:
        _fit(fake, tried)
    assert fake.log.count("clear") == 2
    message = str(raised.value)
    assert "'t3.micro'" in message and "spot='fallback'" in message
    for attempt in tried:
        assert f"{attempt}: no capacity in this zone" in message
    assert raised.value.stack_name == "s"
