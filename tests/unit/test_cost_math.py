"""Pure pieces of cost and budget: the lifetime a budget buys, its refusal, the Price List
answer's parsing, the catalog's rows, and the meter's arithmetic."""

from __future__ import annotations

import json
import math

import pytest

from ec2_executor.cost import budget as budgets
from ec2_executor.cost import prices
from ec2_executor.cost.meter import Meter
from ec2_executor.errors import ConfigurationError
from ec2_executor.options import Options


def _rate(usd_per_hour: float | None) -> prices.Rate:
    instance = None if usd_per_hour is None else prices.Figure(usd_per_hour, "test")
    return prices.Rate(
        region="us-east-1",
        instance_type="t3.small",
        market=prices.ON_DEMAND,
        instance=instance,
        volume=prices.Figure(0.0, "test"),
    )


@pytest.fixture(autouse=True)
def _no_record(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("EC2_EXECUTOR_CACHE_DIR", str(tmp_path))  # an empty record


def test_a_budget_buys_whole_minutes_rounded_down() -> None:
    checked = budgets.check(0.05, _rate(1.2), max_lifetime_minutes=120)
    assert checked.minutes == 2  # $0.05 at $1.2/h is 2.5 minutes
    assert checked.limited


def test_a_budget_never_outlives_max_lifetime_minutes() -> None:
    checked = budgets.check(100.0, _rate(0.01), max_lifetime_minutes=30)
    assert checked.minutes == 30
    assert not checked.limited


def test_a_budget_below_the_published_startup_is_refused() -> None:
    least = 3.6 * budgets.PUBLISHED_STARTUP / 3600
    with pytest.raises(ConfigurationError, match=r"'budget_usd' is 0\.05, below the expected"):
        budgets.check(0.05, _rate(3.6), max_lifetime_minutes=120)
    budgets.check(math.ceil(least * 10000) / 10000, _rate(3.6), max_lifetime_minutes=120)


def test_a_budget_without_a_price_is_refused_naming_what_to_do() -> None:
    with pytest.raises(ConfigurationError, match="allow 'pricing:GetProducts'"):
        budgets.check(1.0, _rate(None), max_lifetime_minutes=120)


@pytest.mark.parametrize("value", [-1, 0.00001, 1e9, float("nan"), True, "lots"])
def test_budget_usd_bounds(value: object) -> None:
    with pytest.raises(ConfigurationError, match="Option 'budget_usd' is"):
        Options(budget_usd=value)  # type: ignore[arg-type]


def test_budget_usd_zero_means_none() -> None:
    assert Options(budget_usd=0).budget_usd == 0


def test_price_list_products_are_read_as_aws_writes_them() -> None:
    product = {
        "terms": {
            "OnDemand": {
                "X.JRTCKXETXF": {
                    "effectiveDate": "2026-10-01T00:00:00Z",
                    "priceDimensions": {
                        "X.JRTCKXETXF.6YS6EN2CT7": {
                            "unit": "Hrs",
                            "pricePerUnit": {"USD": "0.0208000000"},
                        }
                    },
                }
            }
        }
    }
    figure = prices.parse_products([json.dumps(product)], "us-east-1")
    assert figure == prices.Figure(0.0208, "Price List API in us-east-1, effective 2026-10-01")
    assert prices.parse_products([], "us-east-1") is None


def test_every_catalog_row_has_its_date_and_source() -> None:
    data = prices.catalog()
    rows = [*data["instances"], *data["gp3"], data["public_ipv4"]]
    for row in rows:
        assert row["date"] and row["source"].startswith("https://"), row
    assert data["public_ipv4"]["usd_per_hour"] == 0.005


def test_the_price_list_endpoint_is_one_of_the_three() -> None:
    for region, endpoint in (
        ("us-west-2", "us-east-1"),
        ("eu-west-3", "eu-central-1"),
        ("ap-northeast-1", "ap-south-1"),
        ("sa-east-1", "us-east-1"),
    ):
        assert prices.price_list_region(region) == endpoint
        assert endpoint in prices.PRICE_LIST_REGIONS


def test_the_meter_charges_rate_times_time() -> None:
    meter = Meter()
    assert meter.summary() == "cost $0 (no instance launched)"
    meter.start(_rate(3.6), at=1000.0)
    meter.stop(at=1100.0)
    assert meter.usd == pytest.approx(0.1)
    assert meter.summary().startswith("cost $0.1000 (100 s at $3.6000/h")
    unknown = Meter()
    unknown.start(_rate(None), at=1000.0)
    unknown.stop(at=1010.0)
    assert unknown.usd is None and unknown.summary().startswith("cost unknown (10 s;")
