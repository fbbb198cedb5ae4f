"""What an instance costs per hour, and where each figure came from.

An electron pays for three things while its instance exists: the instance (on-demand or spot),
its public IPv4 address, and its gp3 root volume. On-demand prices come from the AWS Price List
API (`pricing:GetProducts`) when it is allowed and answers, else from `catalog.json` shipped
with the package; spot prices from `DescribeSpotPriceHistory`; the address and the volume from
the catalog. Every `Figure` names its source, so a log line says how far to trust it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from botocore.config import Config

from ec2_executor.cloud.aws import AWS, aws_errors
from ec2_executor.errors import EC2ExecutorError
from ec2_executor.logs import log

HOURS_PER_MONTH = 730.0
"""AWS prorates a GB-month over 730 hours in its own pricing examples."""
PRICE_LIST_REGIONS = ("us-east-1", "eu-central-1", "ap-south-1")
"""The only regions where the Price List API answers."""
PRICE_LIST_CONFIG = Config(
    connect_timeout=3, read_timeout=10, retries={"mode": "standard", "max_attempts": 2}
)
"""Short: the catalog stands in when the Price List API does not answer promptly."""
SPOT_PRICE_TTL = 300.0
"""Seconds a spot price is reused before it is asked again (spot prices move slowly)."""
UNREACHABLE_TTL = 600.0
"""Seconds the catalog stands in without asking again, once the Price List API failed."""
ON_DEMAND, SPOT = "on-demand", "spot"


@dataclass(frozen=True)
class Figure:
    """A price in USD per hour, and where it came from."""

    usd_per_hour: float
    source: str

    def __str__(self) -> str:
        return f"${self.usd_per_hour:.4f}/h ({self.source})"


@dataclass(frozen=True)
class Rate:
    """What one instance costs per hour while it exists, part by part."""

    region: str
    instance_type: str
    market: str
    """`ON_DEMAND` or `SPOT`."""
    instance: Figure | None
    """None: no price is known for the type in the region (neither API nor catalog)."""
    volume: Figure
    public_ipv4: Figure | None = None
    """None: the instance has no public address."""

    @property
    def usd_per_hour(self) -> float | None:
        if self.instance is None:
            return None
        parts = [self.instance, self.volume, *([self.public_ipv4] if self.public_ipv4 else [])]
        return sum(p.usd_per_hour for p in parts)

    def cost(self, seconds: float) -> float | None:
        """USD for `seconds` of the instance's existence (EC2 bills Linux by the second)."""
        hourly = self.usd_per_hour
        return None if hourly is None else hourly * max(seconds, 0.0) / 3600.0

    def __str__(self) -> str:
        hourly = self.usd_per_hour
        total = "price unknown" if hourly is None else f"${hourly:.4f}/h"
        instance = self.instance or "no price known"
        parts = [f"{self.instance_type} {self.market} {instance}", f"gp3 {self.volume}"]
        if self.public_ipv4:
            parts.append(f"public IPv4 {self.public_ipv4}")
        return f"{total}: {'; '.join(parts)}"


def rate(
    aws: AWS,
    instance_type: str,
    *,
    spot: bool,
    zone: str = "",
    volume_gib: int,
    public_ip: bool,
) -> Rate:
    """The hourly rate of one instance in `aws`'s region; never raises for a missing price."""
    region = aws.options.region
    instance = spot_price(aws, instance_type, zone) if spot else on_demand_price(aws, instance_type)
    return Rate(
        region=region,
        instance_type=instance_type,
        market=SPOT if spot else ON_DEMAND,
        instance=instance,
        volume=volume_price(region, volume_gib),
        public_ipv4=public_ipv4_price() if public_ip else None,
    )


# --- on-demand: the Price List API, else the catalog ---------------------------------------

_LOCK = threading.Lock()
_ON_DEMAND: dict[tuple[str, str], Figure | None] = {}
_PRICE_LIST_DOWN: dict[str, tuple[float, str]] = {}
"""Price List endpoint region -> (monotonic time it failed, why)."""


def price_list_region(region: str) -> str:
    """The Price List endpoint nearest `region` (it answers for every region)."""
    if region.startswith(("eu-", "me-", "af-", "il-")):
        return "eu-central-1"
    if region.startswith("ap-"):
        return "ap-south-1"
    return "us-east-1"


def on_demand_price(aws: AWS, instance_type: str) -> Figure | None:
    """The on-demand Linux price of `instance_type` in the region, asked once per process."""
    key = (aws.options.region, instance_type)
    with _LOCK:
        if key in _ON_DEMAND:
            return _ON_DEMAND[key]
    found = _price_list_price(aws, instance_type)
    figure = found if found is not None else catalog_price(*key)
    with _LOCK:
        _ON_DEMAND[key] = figure
    return figure


def _price_list_price(aws: AWS, instance_type: str) -> Figure | None:
    region = aws.options.region
    endpoint = price_list_region(region)
    with _LOCK:
        down = _PRICE_LIST_DOWN.get(endpoint)
        if down and time.monotonic() - down[0] < UNREACHABLE_TTL:
            return None
    try:
        with aws_errors(f"reading the price of {instance_type} from the Price List API"):
            client = aws.session.client(
                "pricing",
                region_name=endpoint,
                config=PRICE_LIST_CONFIG,
            )
            answer = client.get_products(
                ServiceCode="AmazonEC2", Filters=price_list_filters(region, instance_type)
            )
        figure = parse_products(answer.get("PriceList", []), endpoint)
    except (EC2ExecutorError, ValueError, KeyError, TypeError) as exc:
        with _LOCK:
            _PRICE_LIST_DOWN[endpoint] = (time.monotonic(), str(exc))
        log.info("prices: the Price List API gave no price (%s); using the catalog", exc)
        return None
    if figure is None:
        log.info(
            "prices: the Price List API has no %s in %s; using the catalog", instance_type, region
        )
    return figure


def price_list_filters(region: str, instance_type: str) -> list[dict[str, str]]:
    """One product: Linux, shared tenancy, no pre-installed software, capacity in use."""
    wanted = {
        "regionCode": region,
        "instanceType": instance_type,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in wanted.items()]


def parse_products(price_list: list[Any], endpoint: str) -> Figure | None:
    """The hourly on-demand price in GetProducts' `PriceList` (JSON strings, one per product);
    the highest when several products match (never an understatement)."""
    best: tuple[float, str] | None = None
    for text in price_list:
        product = json.loads(text) if isinstance(text, str) else text
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                if not str(dimension.get("unit", "Hrs")).startswith("Hr"):
                    continue
                usd = float(dimension["pricePerUnit"]["USD"])
                if usd > 0 and (best is None or usd > best[0]):
                    best = (usd, str(term.get("effectiveDate", ""))[:10])
    if best is None:
        return None
    effective = f", effective {best[1]}" if best[1] else ""
    return Figure(best[0], f"Price List API in {endpoint}{effective}")


# --- spot: DescribeSpotPriceHistory --------------------------------------------------------

_SPOT: dict[tuple[str, str, str], tuple[float, Figure | None]] = {}


def spot_price(aws: AWS, instance_type: str, zone: str = "") -> Figure | None:
    """The current spot price in `zone` (the region's highest when no zone is given); the
    on-demand price, said so, when EC2 gives none (spot never bills above it by default)."""
    key = (aws.options.region, instance_type, zone)
    with _LOCK:
        cached = _SPOT.get(key)
        if cached and time.monotonic() - cached[0] < SPOT_PRICE_TTL:
            return cached[1]
    why = "EC2 reported none"
    figure: Figure | None = None
    try:
        figure = _spot_history(aws, instance_type, zone)
    except EC2ExecutorError as exc:
        why = str(exc)
    if figure is None:
        ceiling = on_demand_price(aws, instance_type)
        log.info(
            "prices: no spot price for %s (%s); counting the on-demand price", instance_type, why
        )
        if ceiling is not None:
            figure = Figure(
                ceiling.usd_per_hour, f"on-demand ceiling, no spot price: {ceiling.source}"
            )
    with _LOCK:
        _SPOT[key] = (time.monotonic(), figure)
    return figure


def _spot_history(aws: AWS, instance_type: str, zone: str) -> Figure | None:
    ask: dict[str, Any] = {
        "InstanceTypes": [instance_type],
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": datetime.now(UTC),
    }
    if zone:
        ask["AvailabilityZone"] = zone
    with aws_errors(f"reading the spot price of {instance_type}"):
        history = aws.ec2.describe_spot_price_history(**ask).get("SpotPriceHistory", [])
    latest: dict[str, tuple[datetime, float]] = {}
    for entry in history:
        where, at = str(entry.get("AvailabilityZone", "")), entry.get("Timestamp")
        stamp = at if isinstance(at, datetime) else datetime.min.replace(tzinfo=UTC)
        if where not in latest or stamp > latest[where][0]:
            latest[where] = (stamp, float(entry["SpotPrice"]))
    if not latest:
        return None
    where, (stamp, usd) = max(latest.items(), key=lambda item: item[1][1])
    return Figure(usd, f"DescribeSpotPriceHistory, {where} at {stamp:%Y-%m-%d %H:%M} UTC")


# --- the catalog -----------------------------------------------------------------------------


@cache
def catalog() -> dict[str, Any]:
    """`catalog.json`: dated fallback prices, each row with the page it was taken from."""
    text = resources.files("ec2_executor.cost").joinpath("catalog.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def _catalog_source(row: dict[str, Any]) -> str:
    return f"catalog of {row['date']}, {row['source']}"


def catalog_price(region: str, instance_type: str) -> Figure | None:
    for row in catalog()["instances"]:
        if row["region"] == region and row["instance_type"] == instance_type:
            return Figure(float(row["usd_per_hour"]), _catalog_source(row))
    return None


def volume_price(region: str, gib: int) -> Figure:
    """A gp3 volume of `gib` GiB per hour; us-east-1's figure, said so, for another region."""
    rows = {row["region"]: row for row in catalog()["gp3"]}
    row = rows.get(region)
    source = _catalog_source(row) if row else f"us-east-1's {_catalog_source(rows['us-east-1'])}"
    row = row or rows["us-east-1"]
    per_hour = float(row["usd_per_gb_month"]) * gib / HOURS_PER_MONTH
    return Figure(per_hour, f"{gib} GiB at ${row['usd_per_gb_month']}/GB-month, {source}")


def public_ipv4_price() -> Figure:
    row = catalog()["public_ipv4"]
    return Figure(float(row["usd_per_hour"]), _catalog_source(row))


def forget() -> None:
    """Drop every cached price and failure (tests; a process that wants fresh prices)."""
    with _LOCK:
        _ON_DEMAND.clear()
        _SPOT.clear()
        _PRICE_LIST_DOWN.clear()
