"""No way out to the internet is caught by the plan, before any resource, without false alarms:
route tables built here on the moto server, judged by `lookups.plan` and by `doctor`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from executor_support import harness_options
from harness import MotoServer
from harness.moto import REGION

from ec2_executor.cloud import lookups
from ec2_executor.cloud.aws import AWS
from ec2_executor.cloud.images import Recipe
from ec2_executor.errors import ConfigurationError
from ec2_executor.options import Options, build

pytestmark = pytest.mark.usefixtures("moto_reset")


@dataclass
class Vpc:
    ec2: Any
    vpc_id: str
    subnets: list[str]

    def table_for(self, subnet_id: str) -> str:
        """A route table of the subnet's own (routes only to the VPC itself)."""
        table = self.ec2.create_route_table(VpcId=self.vpc_id)["RouteTable"]["RouteTableId"]
        self.ec2.associate_route_table(RouteTableId=table, SubnetId=subnet_id)
        return str(table)

    def route(self, table: str, **target: str) -> None:
        self.ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", **target)


@pytest.fixture
def vpc(moto_reset: MotoServer) -> Vpc:
    """A VPC with no way out at all (no gateway, no route but its own), two public subnets."""
    ec2 = moto_reset.client("ec2")
    vpc_id = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = []
    for index, zone in enumerate("ab"):
        subnet = ec2.create_subnet(
            VpcId=vpc_id, CidrBlock=f"10.20.{index}.0/24", AvailabilityZone=f"{REGION}{zone}"
        )["Subnet"]["SubnetId"]
        ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
        subnets.append(subnet)
    return Vpc(ec2, vpc_id, subnets)


def _options(**overrides: Any) -> Options:
    return build(harness_options("", "/tmp/unused", **overrides))


def _plan(options: Options) -> lookups.Plan:
    return lookups.plan(AWS(options), options)


def _bake_image(moto: MotoServer, options: Options) -> str:
    """A baked image for `options`' electrons, as `bake` tags one (no bake needed here)."""
    ec2 = moto.client("ec2")
    stock = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=stock, MinCount=1, MaxCount=1)["Instances"][0]
    versions = lookups.Versions.installed(options.python_version)
    recipe: Recipe = lookups.recipe(versions, "x86_64", volume_size=options.volume_size)
    tags = [{"Key": k, "Value": v} for k, v in recipe.tags().items()]
    image = ec2.create_image(
        InstanceId=instance["InstanceId"],
        Name="baked-for-egress",
        TagSpecifications=[{"ResourceType": "image", "Tags": tags}],
    )["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])  # no later boot sees it run
    return str(image)


def test_a_subnet_with_no_default_route_is_refused_for_the_stock_image(vpc: Vpc) -> None:
    table = vpc.table_for(vpc.subnets[0])
    with pytest.raises(ConfigurationError) as refused:
        _plan(_options(subnet=vpc.subnets[0]))
    message = str(refused.value)
    assert vpc.subnets[0] in message and table in message and "0.0.0.0/0" in message
    assert "internet or NAT gateway" in message  # ... and the fix


def test_the_main_route_table_counts_when_the_subnet_has_none_of_its_own(vpc: Vpc) -> None:
    with pytest.raises(ConfigurationError, match="no default route"):
        _plan(_options(subnet=vpc.subnets[0]))
    gateway = vpc.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    vpc.ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc.vpc_id)
    main = vpc.ec2.describe_route_tables(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc.vpc_id]},
            {"Name": "association.main", "Values": ["true"]},
        ]
    )["RouteTables"][0]["RouteTableId"]
    vpc.route(main, GatewayId=gateway)
    assert _plan(_options(subnet=vpc.subnets[0])).warnings == ()


def test_a_baked_image_only_warns(vpc: Vpc, moto_reset: MotoServer) -> None:
    options = _options(subnet=vpc.subnets[0])
    image = _bake_image(moto_reset, options)
    plan = _plan(options)
    assert plan.image.image_id == image
    (warning,) = plan.warnings
    assert vpc.subnets[0] in warning and "no default route" in warning


def _internet_gateway(vpc: Vpc) -> dict[str, str]:
    gateway = vpc.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    vpc.ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc.vpc_id)
    return {"GatewayId": gateway}


def _nat_gateway(vpc: Vpc) -> dict[str, str]:
    allocation = vpc.ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = vpc.ec2.create_nat_gateway(SubnetId=vpc.subnets[1], AllocationId=allocation)
    return {"NatGatewayId": nat["NatGateway"]["NatGatewayId"]}


def _transit_gateway(vpc: Vpc) -> dict[str, str]:
    gateway = vpc.ec2.create_transit_gateway()["TransitGateway"]["TransitGatewayId"]
    return {"TransitGatewayId": gateway}


def _nat_instance(vpc: Vpc) -> dict[str, str]:
    eni = vpc.ec2.create_network_interface(SubnetId=vpc.subnets[1])["NetworkInterface"]
    return {"NetworkInterfaceId": eni["NetworkInterfaceId"]}


def _peering(vpc: Vpc) -> dict[str, str]:
    other = vpc.ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    peering = vpc.ec2.create_vpc_peering_connection(VpcId=vpc.vpc_id, PeerVpcId=other)
    return {"VpcPeeringConnectionId": peering["VpcPeeringConnection"]["VpcPeeringConnectionId"]}


@pytest.mark.parametrize(
    ("target", "judged"),
    [
        (_internet_gateway, True),
        (_nat_gateway, True),
        (_transit_gateway, False),
        (_nat_instance, False),
        (_peering, False),
    ],
    ids=["internet-gateway", "nat-gateway", "transit-gateway", "nat-instance-eni", "peering"],
)
def test_a_default_route_is_judged_by_its_target(
    vpc: Vpc, target: Callable[[Vpc], dict[str, str]], judged: bool
) -> None:
    table = vpc.table_for(vpc.subnets[0])
    via = target(vpc)
    vpc.route(table, **via)
    plan = _plan(_options(subnet=vpc.subnets[0]))  # never refused: a default route exists
    assert plan.network.subnet_id == vpc.subnets[0]
    if judged:
        assert plan.warnings == ()
    else:
        (warning,) = plan.warnings
        assert next(iter(via.values())) in warning and "cannot judge" in warning


def test_an_ipv6_default_route_alone_is_a_warning(vpc: Vpc) -> None:
    table = vpc.table_for(vpc.subnets[0])
    gateway = vpc.ec2.create_egress_only_internet_gateway(VpcId=vpc.vpc_id)
    eigw = gateway["EgressOnlyInternetGateway"]["EgressOnlyInternetGatewayId"]
    vpc.ec2.create_route(
        RouteTableId=table, DestinationIpv6CidrBlock="::/0", EgressOnlyInternetGatewayId=eigw
    )
    (warning,) = _plan(_options(subnet=vpc.subnets[0])).warnings
    assert "::/0" in warning and eigw in warning


def test_a_vpc_s_subnets_without_a_way_out_are_not_tried(vpc: Vpc) -> None:
    routed, closed = vpc.subnets
    vpc.route(vpc.table_for(routed), **_internet_gateway(vpc))
    vpc.table_for(closed)
    plan = _plan(_options(vpc=vpc.vpc_id, subnet=""))
    assert [p.subnet_id for p in plan.network.placements] == [routed]
    assert plan.network.subnet_id == routed
    (warning,) = plan.warnings
    assert closed in warning and "not tried" in warning


def test_a_created_vpc_needs_no_check(moto_reset: MotoServer) -> None:
    plan = _plan(_options(subnet="", use_private_ip=False, create_vpc=True))
    assert plan.network.subnet_id == "" and plan.warnings == ()


def test_the_default_vpc_routes_out_as_on_aws(moto_reset: MotoServer) -> None:
    plan = _plan(_options(subnet="", use_private_ip=False))
    assert plan.network.subnet_id and plan.warnings == ()


def _doctor(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COVALENT_CONFIG_DIR": str(tmp_path / "covalent-config")}
    return subprocess.run(
        ["ec2-executor", "doctor", *flags],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )


def test_doctor_fails_the_network_without_a_way_out_and_warns_of_one_it_cannot_judge(
    vpc: Vpc, tmp_path: Path
) -> None:
    table = vpc.table_for(vpc.subnets[0])
    flags = ["-o", f"subnet={vpc.subnets[0]}", "-o", "ssh_ingress_cidr=127.0.0.1/32"]
    done = _doctor(tmp_path, *flags)
    assert done.returncode == 1
    (line,) = [line for line in done.stdout.splitlines() if "network" in line]
    assert line.startswith("FAIL") and table in line

    vpc.route(table, **_transit_gateway(vpc))
    done = _doctor(tmp_path, *flags)
    lines = [line for line in done.stdout.splitlines() if "network" in line]
    assert lines[0].startswith("ok") and lines[1].startswith("warn") and "cannot judge" in lines[1]


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
def test_behind_a_proxy_ssh_ingress_is_asked_for_never_detected(
    moto_reset: MotoServer, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "http://user:secret@127.0.0.1:9")  # nothing listens there
    options = _options(subnet="", use_private_ip=False, ssh_ingress_cidr="")
    with pytest.raises(ConfigurationError) as refused:
        _plan(options)
    message = str(refused.value)
    assert "'ssh_ingress_cidr'" in message and "http://127.0.0.1:9" in message
    assert "secret" not in message  # the proxy's credentials stay out of the error
    live = moto_reset.client("cloudformation").list_stacks()["StackSummaries"]
    assert live == []  # refused before any resource


def test_an_explicit_ingress_needs_no_detection_behind_a_proxy(
    moto_reset: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    options = _options(subnet="", use_private_ip=False, ssh_ingress_cidr="198.51.100.7/32")
    assert _plan(options).network.ingress_cidr == "198.51.100.7/32"
