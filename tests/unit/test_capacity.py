"""Where to launch when a zone has no capacity: which refusals move on, in which order."""

from __future__ import annotations

import asyncio

import pytest
from harness import aws_texts

from cdk_stacks.parameters import StackParameters
from ec2_executor.blocking import Deadline
from ec2_executor.cloud.capacity import (
    Attempt,
    Placement,
    Refusal,
    attempts,
    ec2_message,
    first_that_fits,
    placed,
    refusal,
    spread,
    vcpu_limit,
)
from ec2_executor.errors import CapacityError, StackCreationError, VcpuLimitError

TEXTS = aws_texts.every_text()


def _named(text: aws_texts.Ec2Text) -> str:
    return f"{text.kind}:{text.text[:40]}"


def test_every_text_says_where_it_comes_from() -> None:
    for text in [*TEXTS, aws_texts.insufficient_capacity("m5.large", "eu-west-1a", "eu-west-1b")]:
        assert text.source.startswith("https://"), text


@pytest.mark.parametrize("text", TEXTS, ids=_named)
def test_each_text_as_cloudformation_quotes_it(text: aws_texts.Ec2Text) -> None:
    """The instance's CREATE_FAILED reason carries EC2's text and no EC2 error code."""
    reason = aws_texts.create_failed(text)
    assert "Error Code" not in reason
    expected = {"zone": Refusal.ZONE, "spot": Refusal.SPOT}.get(text.kind)
    assert refusal(reason) is expected
    assert vcpu_limit(reason) is (text.kind == "vcpu")
    assert text.text.startswith(ec2_message(reason))  # EC2's words, without the wrapping


@pytest.mark.parametrize("text", TEXTS, ids=_named)
def test_as_a_stack_error_names_them(text: aws_texts.Ec2Text) -> None:
    """As `StackCreationError` words it: the stack, its status and the first failure."""
    reason = (
        "Stack 'ec2-executor-x' failed to create (ROLLBACK_COMPLETE): Instance "
        f"(AWS::EC2::Instance) CREATE_FAILED: {aws_texts.create_failed(text)}"
    )
    expected = {"zone": Refusal.ZONE, "spot": Refusal.SPOT}.get(text.kind)
    assert refusal(reason) is expected
    assert ec2_message(reason) in text.text


def test_an_instance_terminated_for_lack_of_capacity_is_a_zone_refusal() -> None:
    """It had its addresses, then EC2 terminated it during launch; CloudFormation says the
    instance did not stabilise, quoting its state reason."""
    late = aws_texts.did_not_stabilize("i-0abc", aws_texts.INSUFFICIENT_CAPACITY_STATE)
    assert refusal(late) is Refusal.ZONE
    assert "Server.InsufficientInstanceCapacity" in ec2_message(late)
    internal = aws_texts.did_not_stabilize("i-0abc", aws_texts.NOT_CAPACITY[1])
    assert refusal(internal) is None


def test_the_vcpu_limit_is_not_a_zone_refusal() -> None:
    """The quota is regional: another zone meets the same limit."""
    reason = aws_texts.create_failed(aws_texts.vcpu_limit(32))
    assert vcpu_limit(reason)
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
        self.deadlines: list[Deadline] = []

    async def launch(self, attempt: Attempt, deadline: Deadline) -> str:
        self.log.append(f"launch {attempt}")
        self.deadlines.append(deadline)
        if attempt in self.reasons:
            raise StackCreationError(self.reasons[attempt], stack_name="s")
        return f"up in {attempt}"

    async def clear(self) -> None:
        self.log.append("clear")


PROVISION_TIMEOUT = 600.0


def _fit(fake: FakeLaunch, tried: list[Attempt], budget: Deadline | None = None) -> str:
    return asyncio.run(
        first_that_fits(
            tried,
            fake.launch,
            clear=fake.clear,
            name="s",
            instance_type="t3.micro",
            provision_timeout=PROVISION_TIMEOUT,
            budget=budget,
        )
    )


NO_ROOM = aws_texts.create_failed(
    aws_texts.insufficient_capacity("t3.micro", "us-east-1a", "us-east-1b, us-east-1c")
)
NO_SPOT = aws_texts.create_failed(aws_texts.NO_SPOT_CAPACITY)
SPOT_QUOTA = aws_texts.create_failed(aws_texts.SPOT_QUOTA)
LATE = aws_texts.did_not_stabilize("i-0abc", aws_texts.INSUFFICIENT_CAPACITY_STATE)


def test_a_zone_refusal_clears_the_stack_and_tries_the_next_zone() -> None:
    fake = FakeLaunch({Attempt(A, False): NO_ROOM})
    assert _fit(fake, attempts([A, B, C], False)) == f"up in {Attempt(B, False)}"
    assert fake.log == [f"launch {Attempt(A, False)}", "clear", f"launch {Attempt(B, False)}"]


def test_a_late_capacity_failure_clears_the_stack_and_tries_the_next_zone() -> None:
    fake = FakeLaunch({Attempt(A, False): LATE})
    assert _fit(fake, attempts([A, B], False)) == f"up in {Attempt(B, False)}"
    assert fake.log == [f"launch {Attempt(A, False)}", "clear", f"launch {Attempt(B, False)}"]


def test_each_attempt_gets_a_deadline_of_its_own() -> None:
    fake = FakeLaunch({Attempt(A, False): NO_ROOM})
    _fit(fake, attempts([A, B], False))
    first, second = fake.deadlines
    assert first is not second
    assert second.at >= first.at  # the second's clock started at its own launch
    assert second.remaining > PROVISION_TIMEOUT - 60  # not what the first one left over


def test_the_vcpu_limit_is_raised_at_once_without_trying_another_zone() -> None:
    fake = FakeLaunch({Attempt(A, False): aws_texts.create_failed(aws_texts.vcpu_limit(32))})
    with pytest.raises(VcpuLimitError, match="vCPU limit of 32") as raised:
        _fit(fake, attempts([A, B], False))
    assert not isinstance(raised.value, CapacityError)
    assert fake.log == [f"launch {Attempt(A, False)}"]  # not cleared: teardown deletes it


def test_any_other_failure_is_raised_at_once() -> None:
    other = aws_texts.create_failed(aws_texts.NOT_CAPACITY[0])
    fake = FakeLaunch({Attempt(A, False): other})
    with pytest.raises(StackCreationError, match="does not exist") as raised:
        _fit(fake, attempts([A, B], False))
    assert type(raised.value) is StackCreationError
    assert fake.log == [f"launch {Attempt(A, False)}"]


def test_the_spot_quota_skips_the_other_spot_zones_for_on_demand() -> None:
    fake = FakeLaunch({Attempt(A, True): SPOT_QUOTA})
    assert _fit(fake, attempts([A, B, C], "fallback")) == f"up in {Attempt(A, False)}"
    assert fake.log == [f"launch {Attempt(A, True)}", "clear", f"launch {Attempt(A, False)}"]


def test_a_spot_zone_refusal_tries_spot_in_the_next_zone_first() -> None:
    fake = FakeLaunch({Attempt(A, True): NO_SPOT})
    assert _fit(fake, attempts([A, B], "fallback")) == f"up in {Attempt(B, True)}"


def test_no_zone_with_capacity_names_every_zone_with_its_reason() -> None:
    tried = attempts([A, B], False)
    fake = FakeLaunch({tried[0]: NO_ROOM, tried[1]: LATE})
    with pytest.raises(CapacityError) as raised:
        _fit(fake, tried)
    assert fake.log.count("clear") == 2
    message = str(raised.value)
    assert "'t3.micro'" in message and "spot='fallback'" not in message  # it was on-demand
    assert (
        f"{tried[0]}: no capacity in this zone (We currently do not have sufficient t3.micro "
        f"capacity in the Availability Zone you requested (us-east-1a).)"
    ) in message
    assert f"{tried[1]}: no capacity in this zone (Instance i-0abc failed to stabilize: " in message
    assert raised.value.stack_name == "s"


def test_no_attempt_starts_once_the_failover_budget_is_spent() -> None:
    tried = attempts([A, B, C], False)
    fake = FakeLaunch(dict.fromkeys(tried, NO_ROOM))
    with pytest.raises(CapacityError) as raised:
        _fit(fake, tried, budget=Deadline(0.0))
    assert fake.log == [f"launch {tried[0]}", "clear"]  # the first attempt always runs
    message = str(raised.value)
    assert f"{tried[0]}: no capacity in this zone" in message
    assert f"time budget (3 x 'provision_timeout') ran out before {tried[1]}; {tried[2]}." in (
        message
    )


def test_only_spot_tried_the_error_suggests_falling_back_to_on_demand() -> None:
    tried = attempts([A, B], True)
    with pytest.raises(CapacityError) as raised:
        _fit(FakeLaunch(dict.fromkeys(tried, NO_SPOT)), tried)
    assert "or spot='fallback' to fall back to on-demand." in str(raised.value)
