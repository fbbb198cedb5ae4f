"""Whether a subnet's instances have a way out to the internet: its route table's default route.

The stock image's bootstrap installs Python and packages; in a subnet with no way out those
installs fail only when `provision_timeout` runs out. So a subnet whose route table has no
default route at all is refused before anything is created when the image needs installs; a
baked image needs none, and gets a warning. A default route through an internet or NAT gateway
is a way out. Through anything else (a transit gateway, a firewall or other VPC endpoint, a NAT
instance's network interface, a peering, a virtual private gateway) the executor cannot see
where it leads: a warning, never a refusal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from ec2_executor.cloud.aws import aws_errors
from ec2_executor.errors import ConfigurationError

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

    from ec2_executor.cloud.network import NetworkPlan

DEFAULT_ROUTES = ("0.0.0.0/0", "::/0")
WAY_OUT = ("igw-", "nat-")
"""Route targets that reach the internet: an internet gateway, a NAT gateway."""
TARGETS = (
    "GatewayId",
    "NatGatewayId",
    "TransitGatewayId",
    "NetworkInterfaceId",
    "InstanceId",
    "VpcPeeringConnectionId",
    "EgressOnlyInternetGatewayId",
    "LocalGatewayId",
    "CarrierGatewayId",
    "CoreNetworkArn",
)
"""A route's target fields, as DescribeRouteTables names them."""


class Verdict(Enum):
    OUT = "out"
    """An IPv4 default route through an internet or NAT gateway."""
    UNKNOWN = "unknown"
    """A default route through something the executor cannot judge."""
    NONE = "none"
    """No default route at all (or only a blackhole)."""


@dataclass(frozen=True)
class Egress:
    subnet_id: str
    route_table: str
    verdict: Verdict
    via: str = ""
    """The default route's destination and target, for the messages."""


def judge(routes: Sequence[Mapping[str, Any]]) -> tuple[Verdict, str]:
    """The verdict on a route table's routes, and the default route it rests on."""
    defaults = [
        r
        for r in routes
        if r.get("State") != "blackhole"
        and (
            r.get("DestinationCidrBlock") in DEFAULT_ROUTES
            or r.get("DestinationIpv6CidrBlock") in DEFAULT_ROUTES
        )
    ]
    described = [f"{_destination(r)} via {_target(r)}" for r in defaults]
    for route, text in zip(defaults, described, strict=True):
        if route.get("DestinationCidrBlock") == "0.0.0.0/0" and _target(route).startswith(WAY_OUT):
            return Verdict.OUT, text
    if defaults:
        return Verdict.UNKNOWN, ", ".join(described)
    return Verdict.NONE, ""


def _destination(route: Mapping[str, Any]) -> str:
    return str(route.get("DestinationCidrBlock") or route.get("DestinationIpv6CidrBlock"))


def _target(route: Mapping[str, Any]) -> str:
    return next((str(route[k]) for k in TARGETS if route.get(k)), "an unnamed target")


def subnets_egress(ec2: EC2Client, vpc_id: str, subnet_ids: Sequence[str]) -> list[Egress]:
    """Each subnet's route table (its own, else the VPC's main one) and its verdict."""
    with aws_errors(f"reading the route tables of {vpc_id!r}"):
        tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])[
            "RouteTables"
        ]
    main = next((t for t in tables if any(a.get("Main") for a in t.get("Associations", []))), None)
    found = []
    for subnet_id in subnet_ids:
        own = next(
            (
                t
                for t in tables
                if any(a.get("SubnetId") == subnet_id for a in t.get("Associations", []))
            ),
            main,
        )
        if own is None:  # no table at all: nothing routes out
            found.append(Egress(subnet_id, "(none)", Verdict.NONE))
            continue
        verdict, via = judge(own.get("Routes", []))
        found.append(Egress(subnet_id, own["RouteTableId"], verdict, via))
    return found


def checked(ec2: EC2Client, network: NetworkPlan, *, installs: bool) -> NetworkPlan:
    """`network` with its warnings, and without the subnets that have no way out when the
    image needs installs; refuses it when none is left. A created VPC routes out by design."""
    if not network.subnet_id:
        return network
    subnets = [p.subnet_id for p in network.placements] or [network.subnet_id]
    verdicts = subnets_egress(ec2, network.vpc_id, subnets)
    warnings = [_unknown(e, installs) for e in verdicts if e.verdict is Verdict.UNKNOWN]
    closed = [e for e in verdicts if e.verdict is Verdict.NONE]
    if not installs:
        warnings += [_closed_baked(e) for e in closed]
        return dataclasses.replace(network, warnings=(*network.warnings, *warnings))
    if len(closed) == len(verdicts):
        raise ConfigurationError(_closed_refusal(closed[0]))
    gone = {e.subnet_id for e in closed}
    placements = tuple(p for p in network.placements if p.subnet_id not in gone)
    if closed:
        warnings.append(
            f"subnets {', '.join(sorted(gone))} are not tried: their route tables have no "
            f"default route, so the stock image's installs could not reach the internet"
        )
    return dataclasses.replace(
        network,
        subnet_id=placements[0].subnet_id if placements else network.subnet_id,
        placements=placements,
        warnings=(*network.warnings, *warnings),
    )


def _closed_refusal(egress: Egress) -> str:
    return (
        f"Subnet {egress.subnet_id!r} has no way out to the internet: its route table "
        f"{egress.route_table} has no default route (0.0.0.0/0). The stock image's bootstrap "
        f"installs Python, covalent and cloudpickle, and would only time out after "
        f"'provision_timeout'. Add a route 0.0.0.0/0 to an internet or NAT gateway, give "
        f"another 'subnet' or 'vpc', or use a baked image ('ec2-executor bake', run where "
        f"there is a way out)."
    )


def _closed_baked(egress: Egress) -> str:
    return (
        f"subnet {egress.subnet_id}'s route table {egress.route_table} has no default route: "
        f"the image needs no installs, but the task cannot reach the internet"
    )


def _unknown(egress: Egress, installs: bool) -> str:
    consequence = (
        "if it does not lead to the internet, the stock image's installs time out after "
        "'provision_timeout'"
        if installs
        else "the image needs no installs; the task reaches the internet only if it does"
    )
    return (
        f"subnet {egress.subnet_id}'s route table {egress.route_table} routes out through "
        f"{egress.via}, which the executor cannot judge; {consequence}"
    )
