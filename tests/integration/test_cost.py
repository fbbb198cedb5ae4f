"""What electrons cost: prices from a stand-in Price List endpoint, the package's catalog and
moto's spot price history; the cost in an electron's log, error and the local record;
`ec2-executor cost` and `list`; a budget refused before anything is created."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from click.testing import CliRunner
from covalent._shared_files.exceptions import TaskRuntimeError
from executor_support import NewExecutor, execute, harness_options, run
from harness import LoopbackNetwork, MotoServer, free_port, patched_environ
from harness.cloud_state import assert_nothing_left, live_stacks
from harness.moto import REGION
from harness.price_list import PriceListStandIn

from ec2_executor import ConfigurationError
from ec2_executor.cli.main import main
from ec2_executor.cloud.aws import AWS
from ec2_executor.cost import prices, record
from ec2_executor.ec2 import EC2Executor
from ec2_executor.options import Options

cloudpickle.register_pickle_by_value(sys.modules[__name__])

PRICE = 0.5
"""USD per hour the stand-in asks for the harness's t2.micro: no catalog row has it."""
HOURLY = PRICE + 0.005 + 8 * 0.08 / 730
"""With the public IPv4 address and the 8 GiB gp3 volume (the catalog's figures)."""


def double(x: int) -> int:
    return 2 * x


def boom() -> None:
    raise ValueError("boom")


@pytest.fixture
def price_list(moto_server: MotoServer) -> Iterator[PriceListStandIn]:
    """The stand-in, with boto3's Price List endpoint pointed at it; no price cached."""
    prices.forget()
    with (
        PriceListStandIn(
            prices={(REGION, "t2.micro"): PRICE, ("eu-west-1", "m5.large"): 0.25}
        ) as stand_in,
        patched_environ({"AWS_ENDPOINT_URL_PRICING": stand_in.url}),
    ):
        yield stand_in
    prices.forget()


@pytest.fixture
def cost_record(template_cache: Path) -> Path:
    """The local record (beside the tests' template cache), emptied for the test."""
    path = record.record_path()
    path.unlink(missing_ok=True)
    return path


# --- prices ---------------------------------------------------------------------------------


def test_on_demand_price_comes_from_the_price_list_endpoint(price_list: PriceListStandIn) -> None:
    figure = prices.on_demand_price(AWS(Options(region="eu-west-1")), "m5.large")
    assert figure is not None
    assert figure.usd_per_hour == 0.25
    assert figure.source == "Price List API in eu-central-1, effective 2026-11-01"
    [seen] = price_list.requests  # asked once, then cached
    assert seen.target == "AWSPriceListService.GetProducts"
    assert seen.region == "eu-central-1"  # the Price List endpoint nearest eu-west-1
    assert seen.filters == {
        "regionCode": "eu-west-1",
        "instanceType": "m5.large",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    assert prices.on_demand_price(AWS(Options(region="eu-west-1")), "m5.large") == figure
    assert len(price_list.requests) == 1


def test_the_catalog_stands_in_when_the_price_list_refuses(
    price_list: PriceListStandIn,
) -> None:
    price_list.refuse = "AccessDeniedException"
    figure = prices.on_demand_price(AWS(Options(region="eu-west-1")), "m5.large")
    assert figure is not None
    assert figure.usd_per_hour == 0.107  # the catalog's row, not the stand-in's 0.25
    assert figure.source.startswith("catalog of 2024-06-01, https://aws.amazon.com/ec2/pricing")
    assert price_list.requests  # it was asked


def test_the_catalog_stands_in_when_the_price_list_is_unreachable(moto_server: MotoServer) -> None:
    prices.forget()
    closed = f"http://127.0.0.1:{free_port()}"
    with patched_environ({"AWS_ENDPOINT_URL_PRICING": closed}):
        figure = prices.on_demand_price(AWS(Options(region="us-east-1")), "t3.small")
        unknown = prices.on_demand_price(AWS(Options(region="us-east-1")), "x2iedn.metal")
    prices.forget()
    assert figure is not None and figure.usd_per_hour == 0.0208
    assert "catalog of 2024-06-01" in figure.source
    assert unknown is None  # neither the API nor the catalog: said, never guessed


def test_spot_price_comes_from_the_spot_price_history(moto_reset: MotoServer) -> None:
    prices.forget()
    aws = AWS(Options(region=REGION))
    history = moto_reset.client("ec2").describe_spot_price_history(InstanceTypes=["t3.small"])
    expected = float(history["SpotPriceHistory"][0]["SpotPrice"])
    figure = prices.spot_price(aws, "t3.small", zone=f"{REGION}a")
    assert figure is not None
    assert figure.usd_per_hour == expected
    assert figure.source.startswith(f"DescribeSpotPriceHistory, {REGION}a at ")
    rate = prices.rate(aws, "t3.small", spot=True, zone=f"{REGION}a", volume_gib=8, public_ip=True)
    assert rate.market == "spot"
    hourly = rate.usd_per_hour
    assert hourly is not None
    assert hourly == pytest.approx(expected + 0.005 + 8 * 0.08 / 730)
    prices.forget()


# --- an electron's cost -----------------------------------------------------------------------


def _cost(line: str) -> float:
    found = re.search(r"cost \$(\d+\.\d+)", line)
    assert found, line
    return float(found[1])


def test_an_electrons_cost_is_in_its_timing_line_the_record_and_list(
    new_executor: NewExecutor,
    emulated_boot: Any,
    moto_reset: MotoServer,
    price_list: PriceListStandIn,
    cost_record: Path,
    package_log: pytest.LogCaptureFixture,
) -> None:
    ex = new_executor(wait_for_deletion=True)
    listed: list[dict[str, Any]] = []
    real_teardown = ex.teardown

    async def list_then_teardown(metadata: dict[str, Any]) -> None:
        shown = CliRunner().invoke(main, ["list", "--json"], prog_name="ec2-executor")
        listed.extend(json.loads(shown.output))
        await real_teardown(metadata)

    ex.teardown = list_then_teardown  # type: ignore[method-assign, assignment]
    assert run(execute(ex, double, [21], {})) == 42
    [row] = listed
    hourly = HOURLY
    assert row["usd_per_hour"] == pytest.approx(hourly, abs=1e-6)
    assert row["rate"] == f"${hourly:.4f}/h"
    assert row["cost_usd"] is not None and row["cost_usd"] >= 0
    messages = [r.getMessage() for r in package_log.records]
    [done] = {m for m in messages if ": done (" in m}  # caplog may see a record twice
    assert "plan " in done and "delete stack " in done
    assert f"at ${hourly:.4f}/h" in done and "t2.micro on-demand $0.5000/h" in done
    assert "Price List API in us-east-1" in done and "catalog of" in done  # each source said
    assert " so far" not in done  # the deletion was waited for: the final cost
    [charge] = list(record.charges(path=cost_record))
    assert charge.kind == record.ELECTRON and charge.usd is not None
    assert charge.usd == pytest.approx(hourly * charge.seconds / 3600, rel=1e-3)
    assert _cost(done) == pytest.approx(charge.usd, abs=1e-4)
    assert charge.startup_seconds is not None and 0 < charge.startup_seconds < charge.seconds
    assert_nothing_left(moto_reset)


def test_a_deletion_verified_in_the_background_logs_the_final_cost(
    new_executor: NewExecutor,
    emulated_boot: Any,
    moto_reset: MotoServer,
    price_list: PriceListStandIn,
    cost_record: Path,
    package_log: pytest.LogCaptureFixture,
) -> None:
    ex = new_executor(wait_for_deletion=False)

    async def electron_then_deletion() -> None:
        assert await execute(ex, double, [1], {}) == 2
        while not any("deletion verified" in r.getMessage() for r in package_log.records):
            await asyncio.sleep(0.2)

    run(electron_then_deletion())
    messages = [r.getMessage() for r in package_log.records]
    [done] = {m for m in messages if ": done (" in m}  # caplog may see a record twice
    [verified] = {m for m in messages if "deletion verified" in m}
    assert "cost $" in done and " so far" in done
    assert "cost $" in verified and " so far" not in verified
    assert _cost(verified) >= _cost(done)
    [charge] = list(record.charges(path=cost_record))
    assert _cost(verified) == pytest.approx(charge.usd or 0, abs=1e-4)
    assert not live_stacks(moto_reset)


def test_a_failed_electrons_error_says_what_it_cost(
    new_executor: NewExecutor,
    emulated_boot: Any,
    moto_reset: MotoServer,
    price_list: PriceListStandIn,
    cost_record: Path,
) -> None:
    ex = new_executor(wait_for_deletion=True)
    with pytest.raises(TaskRuntimeError, match=r"^The task raised ValueError: boom") as raised:
        run(execute(ex, boom, [], {}))
    assert re.search(r"\[cost \$\d+\.\d{4} so far \(\d+ s at \$0\.50\d\d/h", str(raised.value))
    assert len(list(record.charges(path=cost_record))) == 1
    assert_nothing_left(moto_reset)


def test_a_budget_below_the_expected_minimum_is_refused_before_anything_is_created(
    new_executor: NewExecutor,
    moto_reset: MotoServer,
    price_list: PriceListStandIn,
    cost_record: Path,
) -> None:
    ex = new_executor(budget_usd=0.001)
    with pytest.raises(ConfigurationError) as refused:
        run(execute(ex, double, [1], {}))
    message = str(refused.value)
    least = HOURLY * 65 / 3600  # the published startup
    assert f"'budget_usd' is 0.001, below the expected minimum of ${least:.4f}" in message
    assert "t2.micro on-demand $0.5000/h (Price List API" in message
    assert "published launch, boot and bootstrap times" in message
    assert "cost $0 (no instance launched)" in message
    assert not live_stacks(moto_reset)
    assert not moto_reset.client("ec2").describe_instances()["Reservations"]


def test_the_budget_minimum_follows_the_startups_measured_here(
    new_executor: NewExecutor,
    moto_reset: MotoServer,
    price_list: PriceListStandIn,
    cost_record: Path,
) -> None:
    for seconds in (100.0, 200.0, 300.0):
        record.add(_charge(datetime.now(UTC), usd=0.01, startup_seconds=seconds))
    ex = new_executor(budget_usd=0.02)
    with pytest.raises(ConfigurationError) as refused:
        run(execute(ex, double, [1], {}))
    least = HOURLY * 200 / 3600  # the median
    assert f"expected minimum of ${least:.4f}" in str(refused.value)
    assert "median launch, boot and bootstrap of 3 electron(s) measured here" in str(refused.value)
    assert not live_stacks(moto_reset)


# --- ec2-executor cost ------------------------------------------------------------------------


def _charge(
    at: datetime, *, usd: float | None, kind: str = record.ELECTRON, **more: Any
) -> record.Charge:
    return record.Charge(
        at=at.isoformat(timespec="seconds"),
        kind=kind,
        stack="s",
        task="t",
        region="us-east-1",
        instance_type="t3.small",
        market="on-demand",
        seconds=3600.0,
        usd=usd,
        usd_per_hour=usd,
        **more,
    )


def test_cost_sums_the_record_over_the_period(cost_record: Path) -> None:
    now = datetime.now(UTC)
    for charge in (
        _charge(now - timedelta(days=10), usd=5.0),  # before the period
        _charge(now - timedelta(days=2), usd=0.25),
        _charge(now - timedelta(hours=1), usd=0.5),
        _charge(now - timedelta(hours=1), usd=0.125, kind=record.POOL),
        _charge(now - timedelta(hours=1), usd=None),  # no price known
    ):
        record.add(charge)
    with cost_record.open("a") as f:
        f.write("not json\n")  # a torn line is skipped, not fatal
    shown = CliRunner().invoke(main, ["cost", "--since", "7d", "--json"], prog_name="ec2-executor")
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.output)
    assert summary["charges"] == 4
    assert summary["total_usd"] == pytest.approx(0.875)
    assert summary["unpriced"] == 1
    by_kind = {r["kind"]: r for r in summary["rows"]}
    assert by_kind[record.ELECTRON]["usd"] == pytest.approx(0.75)
    assert by_kind[record.ELECTRON]["charges"] == 3
    assert by_kind[record.POOL]["usd"] == pytest.approx(0.125)
    table = CliRunner().invoke(main, ["cost", "--since", "1d"], prog_name="ec2-executor")
    assert "Total $0.6250 for 3 charge(s)" in table.output
    assert "1 charge(s) had no known price" in table.output


# --- warm instances -----------------------------------------------------------------------------


def test_on_a_warm_instance_each_electron_pays_its_time_and_the_idle_is_the_pools(
    loopback_network: LoopbackNetwork,
    remote_cache: str,
    emulated_boot: Any,
    moto_reset: MotoServer,
    price_list: PriceListStandIn,
    cost_record: Path,
    package_log: pytest.LogCaptureFixture,
) -> None:
    from ec2_executor.warm.pool import POOL, retire_all_idle

    # One set of options (one SSH port): one reuse key.
    options = harness_options(loopback_network.subnet_id, remote_cache, keep_warm_minutes=5)
    POOL.idle_seconds = 600.0  # never expires mid-test: the retirement below ends it

    async def two_then_retire() -> None:
        for node in (0, 1):
            ex = EC2Executor(**options, wait_for_deletion=True)
            assert await execute(ex, double, [node], {}, node_id=node) == 2 * node
        await retire_all_idle()

    try:
        run(two_then_retire())
    finally:
        POOL.idle_seconds = None
    charges = list(record.charges(path=cost_record))
    electrons = [c for c in charges if c.kind == record.ELECTRON]
    idle = [c for c in charges if c.kind == record.POOL]
    assert len(electrons) == 2 and len(idle) == 2  # lent once, then retired
    first, second = electrons
    assert first.startup_seconds is not None  # it launched the instance
    assert second.startup_seconds is None  # it was lent one
    assert {c.stack for c in charges} == {first.stack}  # one instance for all
    for charge in charges:
        tolerance = HOURLY * 0.001 / 3600  # seconds are recorded to the millisecond
        assert charge.usd == pytest.approx(HOURLY * charge.seconds / 3600, abs=tolerance)
    messages = {r.getMessage() for r in package_log.records}
    assert len([m for m in messages if ": done (" in m and "cost $" in m]) == 2
    assert any("warm pool idle, cost $" in m for m in messages)
    assert_nothing_left(moto_reset)
