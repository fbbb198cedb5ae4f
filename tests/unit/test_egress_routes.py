"""A route table's default route, judged (`egress.judge`, pure): the routes are written as
DescribeRouteTables returns them, for the cases moto cannot build (a blackhole, a firewall's
VPC endpoint)."""

from __future__ import annotations

from typing import Any

import pytest

from ec2_executor.cloud.egress import Verdict, judge

LOCAL = {"DestinationCidrBlock": "10.0.0.0/16", "GatewayId": "local", "State": "active"}


def _default(**target: str) -> dict[str, Any]:
    return {"DestinationCidrBlock": "0.0.0.0/0", "State": "active", **target}


@pytest.mark.parametrize(
    ("routes", "verdict", "via"),
    [
        ([LOCAL], Verdict.NONE, ""),
        ([LOCAL, {**_default(GatewayId="igw-0a"), "State": "blackhole"}], Verdict.NONE, ""),
        ([LOCAL, _default(GatewayId="igw-0a")], Verdict.OUT, "0.0.0.0/0 via igw-0a"),
        ([LOCAL, _default(NatGatewayId="nat-0b")], Verdict.OUT, "0.0.0.0/0 via nat-0b"),
        ([_default(GatewayId="vpce-0c")], Verdict.UNKNOWN, "0.0.0.0/0 via vpce-0c"),
        ([_default(TransitGatewayId="tgw-0d")], Verdict.UNKNOWN, "0.0.0.0/0 via tgw-0d"),
        ([_default(GatewayId="vgw-0e")], Verdict.UNKNOWN, "0.0.0.0/0 via vgw-0e"),
        (
            [{"DestinationIpv6CidrBlock": "::/0", "EgressOnlyInternetGatewayId": "eigw-0f"}],
            Verdict.UNKNOWN,
            "::/0 via eigw-0f",
        ),
    ],
    ids=["local-only", "blackhole", "igw", "nat", "firewall", "tgw", "vgw", "ipv6-only"],
)
def test_a_default_route_is_judged_by_its_target(
    routes: list[dict[str, Any]], verdict: Verdict, via: str
) -> None:
    assert judge(routes) == (verdict, via)


def test_an_internet_gateway_wins_over_a_route_it_cannot_judge() -> None:
    routes = [
        {"DestinationIpv6CidrBlock": "::/0", "TransitGatewayId": "tgw-1"},
        _default(GatewayId="igw-2"),
    ]
    assert judge(routes) == (Verdict.OUT, "0.0.0.0/0 via igw-2")
