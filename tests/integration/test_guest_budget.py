"""`budget_usd` on a real guest (tests/harness/guests.py): the budget shortens the instance's
own lifetime timer, the guest powers itself off when it is spent, and the electron fails with
an error that names the budget, the price and the time."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
from executor_support import execute, guest_options, run
from harness import GuestBoot, GuestNetwork, LoopbackNetwork, MotoServer, patched_environ
from harness.cloud_state import live_stacks
from harness.moto import REGION
from harness.price_list import PriceListStandIn
from remote_tasks import sleepy

from ec2_executor import BudgetSpentError
from ec2_executor.cloud.stacks import stack_name
from ec2_executor.cost import prices, record
from ec2_executor.ec2 import EC2Executor

pytestmark = pytest.mark.guest
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PRICE = 0.6
"""USD per hour of the guests' t2.micro, from the stand-in Price List endpoint."""
HOURLY = PRICE + 8 * 0.08 / 730  # no public address on the guests' subnet: no IPv4 charge
BUDGET = 0.012
"""Above the minimum (HOURLY for the published 65 s: $0.0109), and it buys 1 minute."""


@pytest.fixture
def priced(template_cache: Path) -> Iterator[PriceListStandIn]:
    prices.forget()
    record.record_path().unlink(missing_ok=True)  # no startup measured: the published figure
    with (
        PriceListStandIn(prices={(REGION, "t2.micro"): PRICE}) as stand_in,
        patched_environ({"AWS_ENDPOINT_URL_PRICING": stand_in.url}),
    ):
        yield stand_in
    prices.forget()


def test_a_spent_budget_powers_the_guest_off_and_fails_the_electron_naming_it(
    guest_boot: GuestBoot,
    guest_subnet: LoopbackNetwork,
    guest_net: GuestNetwork,
    moto_server: MotoServer,
    priced: PriceListStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ec2_executor.watch.INSTANCE_POLL", 0.5)
    ex = EC2Executor(**guest_options(guest_subnet.subnet_id, guest_net.gateway, budget_usd=BUDGET))
    parameters: dict[str, str] = {}
    failed_at: list[float] = []

    async def electron() -> None:
        task = asyncio.ensure_future(execute(ex, sleepy, [600], {}, dispatch_id="budget"))
        while not guest_boot.guests and not task.done():
            await asyncio.sleep(0.2)
        stack = moto_server.client("cloudformation").describe_stacks(
            StackName=stack_name("budget", 0)
        )["Stacks"][0]
        parameters.update({p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]})
        with pytest.raises(BudgetSpentError) as spent:
            await task
        failed_at.append(time.monotonic())
        message = str(spent.value)
        assert f"the budget of ${BUDGET:.4f} ('budget_usd') at ${HOURLY:.4f}/h" in message
        assert "t2.micro on-demand $0.6000/h (Price List API in us-east-1" in message
        assert "it buys 1 min" in message and "powered itself off at " in message
        assert " UTC" in message and "[cost $" in message

    run(electron())
    assert parameters["MaxLifetimeMinutes"] == "1"  # the budget's, not max_lifetime_minutes'
    assert parameters["LifetimeLimit"] == "budget_usd"
    [guest] = guest_boot.guests
    stopped = guest_boot.wait_stopped(guest.instance_id, timeout=120)
    # The electron fails as soon as the power-off drops its connection (nothing else touched
    # the instance, and not before the budget's minute: `lived` below); its teardown's deletion
    # may then terminate the instance in moto before the guest has finished powering off.
    assert stopped.stop_reason in ("the guest powered itself off", "instance is terminated")
    lived = failed_at[0] - guest.seen_running_at
    assert 55 < lived < 150, lived  # the timer's minute from the guest's boot, then noticed
    assert not live_stacks(moto_server)
