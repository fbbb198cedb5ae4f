"""Where the instance goes (VPC, subnet, shape) and who may reach its SSH port.

The rule when neither `vpc` nor `subnet` is given: use the account's default VPC when it has
one, else create a VPC for the electron. A created VPC costs create/delete time and counts
against the default quota of 5 VPCs per region (so at most 5 electrons at once); the default
VPC has neither cost. `create_vpc=True` asks for the created network anyway.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cdk_stacks.shape import NetworkMode, StackShape
from ec2_executor.cloud.aws import aws_errors
from ec2_executor.cloud.capacity import Placement, spread
from ec2_executor.errors import ConfigurationError
from ec2_executor.options import Options

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

IP_CHECK_URL = "https://checkip.amazonaws.com"


@dataclass(frozen=True, kw_only=True)
class NetworkPlan:
    shape: StackShape
    vpc_id: str = ""
    subnet_id: str = ""
    public_ip: bool = True
    """Whether the subnet gives instances a public address."""
    ingress_cidr: str
    placements: tuple[Placement, ...] = ()
    """Where to launch, in the order to try: the chosen subnet first, then the VPC's other
    zones that offer the instance type (or the zones for a created subnet)."""
    warnings: tuple[str, ...] = ()
    """What may go wrong that the executor cannot judge (the plan logs them)."""


def plan_network(ec2: EC2Client, options: Options, *, spread_key: str = "") -> NetworkPlan:
    """Resolve the network for `options`, refusing ids that do not exist or do not fit.

    `spread_key` (the stack name) picks where in the region's zones this electron starts.
    """
    needs_public = not options.use_private_ip
    subnets = _choose_subnets(ec2, options, needs_public, spread_key)
    if not subnets:
        if options.use_private_ip:
            raise ConfigurationError(
                "Option 'use_private_ip' is True, but the network is a VPC created for the "
                "electron, which this machine cannot reach privately; give the 'vpc' or "
                "'subnet' this machine reaches (over a VPN or from inside it), or set "
                "use_private_ip=False."
            )
        zones = _zones_offering(ec2, options)
        return NetworkPlan(
            shape=StackShape(network=NetworkMode.CREATED),
            ingress_cidr=ingress_cidr(options),
            # No offering listed: one try in the region's first zone, as before.
            placements=tuple(Placement(zone) for zone in spread(zones, spread_key, str))
            or (Placement(""),),
        )
    subnet = subnets[0]
    public = bool(subnet.get("MapPublicIpOnLaunch"))
    if needs_public and not public:
        raise ConfigurationError(
            f"Option 'subnet' is {subnet['SubnetId']!r}, which gives instances no public "
            f"address; choose a public subnet, or set use_private_ip=True if this machine "
            f"reaches the VPC privately."
        )
    return NetworkPlan(
        shape=StackShape(network=NetworkMode.EXISTING),
        vpc_id=subnet["VpcId"],
        subnet_id=subnet["SubnetId"],
        public_ip=public,
        ingress_cidr=ingress_cidr(options, vpc_cidr=lambda: _vpc_cidr(ec2, subnet["VpcId"])),
        placements=tuple(Placement(s["AvailabilityZone"], s["SubnetId"]) for s in subnets),
    )


def _choose_subnets(
    ec2: EC2Client, options: Options, needs_public: bool, spread_key: str
) -> list[Any]:
    """The subnets to try in order (one per zone); empty means "create a VPC"."""
    if options.subnet:
        subnet = _subnet(ec2, options.subnet)
        if options.vpc and subnet["VpcId"] != options.vpc:
            raise ConfigurationError(
                f"Option 'subnet' is {options.subnet!r}, which is in {subnet['VpcId']!r}, not in "
                f"the 'vpc' {options.vpc!r}; give a subnet of that VPC or drop one of the two."
            )
        _check_zone_offers(ec2, options, subnet)
        return [subnet]  # the user chose the zone: no other is tried
    if options.vpc:
        _vpc(ec2, options.vpc)
        return _pick_subnets(ec2, options, options.vpc, needs_public, spread_key)
    if options.create_vpc:
        return []
    default_vpc = _default_vpc(ec2)
    return _pick_subnets(ec2, options, default_vpc, needs_public, spread_key) if default_vpc else []


def _check_zone_offers(ec2: EC2Client, options: Options, subnet: Any) -> None:
    zones = _zones_offering(ec2, options)
    if zones and subnet["AvailabilityZone"] not in zones:
        raise ConfigurationError(
            f"Option 'subnet' is {subnet['SubnetId']!r}, in zone {subnet['AvailabilityZone']!r}, "
            f"which does not offer 'instance_type' {options.instance_type!r}; give a subnet in "
            f"one of {', '.join(zones)}, or leave 'subnet' empty."
        )


def _subnet(ec2: EC2Client, subnet_id: str) -> Any:
    with aws_errors(f"looking up subnet {subnet_id!r}"):
        found = ec2.describe_subnets(Filters=[{"Name": "subnet-id", "Values": [subnet_id]}])
    if not found["Subnets"]:
        raise ConfigurationError(
            f"Option 'subnet' is {subnet_id!r}, but no such subnet exists in this region; check "
            f"the id and the 'region', or leave 'subnet' empty."
        )
    return found["Subnets"][0]


def _vpc(ec2: EC2Client, vpc_id: str) -> Any:
    with aws_errors(f"looking up VPC {vpc_id!r}"):
        found = ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    if not found["Vpcs"]:
        raise ConfigurationError(
            f"Option 'vpc' is {vpc_id!r}, but no such VPC exists in this region; check the id "
            f"and the 'region', or leave 'vpc' empty."
        )
    return found["Vpcs"][0]


def _vpc_cidr(ec2: EC2Client, vpc_id: str) -> str:
    return str(_vpc(ec2, vpc_id)["CidrBlock"])


def _default_vpc(ec2: EC2Client) -> str:
    with aws_errors("looking up the default VPC"):
        found = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
    return found["Vpcs"][0]["VpcId"] if found["Vpcs"] else ""


def _pick_subnets(
    ec2: EC2Client, options: Options, vpc_id: str, needs_public: bool, spread_key: str
) -> list[Any]:
    """One subnet per zone that offers the instance type, public when needed, in spread order
    (a zone's default subnet first)."""
    with aws_errors(f"listing the subnets of {vpc_id!r}"):
        subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    candidates = [s for s in subnets if s.get("MapPublicIpOnLaunch") or not needs_public]
    if not candidates:
        raise ConfigurationError(
            f"Option 'vpc' is {vpc_id!r}, which has no subnet that gives instances a public "
            f"address; give a public 'subnet', or set use_private_ip=True."
        )
    zones = _zones_offering(ec2, options)
    offered = [s for s in candidates if s["AvailabilityZone"] in zones]
    if zones and not offered:
        raise ConfigurationError(
            f"Option 'instance_type' is {options.instance_type!r}, which no zone of "
            f"{vpc_id!r}'s usable subnets offers (it is offered in {', '.join(zones)}); add a "
            f"subnet in one of those zones, give another 'vpc', or pick another type."
        )
    per_zone: dict[str, Any] = {}
    for subnet in sorted(offered or candidates, key=lambda s: not s.get("DefaultForAz")):
        per_zone.setdefault(subnet["AvailabilityZone"], subnet)
    return spread(list(per_zone.values()), spread_key, lambda s: str(s["AvailabilityZone"]))


def _zones_offering(ec2: EC2Client, options: Options) -> list[str]:
    """The region's zones that offer the instance type, sorted (empty if EC2 lists none)."""
    instance_type = options.instance_type
    with aws_errors(f"listing the zones that offer {instance_type!r}"):
        offers = ec2.describe_instance_type_offerings(
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": [instance_type]}],
        )["InstanceTypeOfferings"]
    return sorted({offer["Location"] for offer in offers})


def ingress_cidr(options: Options, *, vpc_cidr: Callable[[], str] = str) -> str:
    """Who may reach SSH: the option, else the VPC for private access, else this machine.

    `vpc_cidr` is asked only when needed (it is an AWS call).
    """
    if options.ssh_ingress_cidr:
        return options.ssh_ingress_cidr
    if options.use_private_ip and (cidr := vpc_cidr()):
        return cidr
    return f"{detect_public_ip()}/32"


def detect_public_ip(timeout: float = 3.0) -> str:
    """This machine's public IPv4 address as AWS sees it. Never falls back to 0.0.0.0/0.

    Never through an HTTPS proxy: the lookup would see the proxy's address, while SSH
    (paramiko) goes direct, so ingress would admit the proxy and not this machine."""
    proxy = https_proxy()
    if proxy:
        raise ConfigurationError(
            f"An HTTPS proxy is set ({proxy}), so this machine's public address cannot be "
            f"detected: {IP_CHECK_URL} would see the proxy's, while SSH goes direct. Set "
            f"'ssh_ingress_cidr' to the address range the instance sees this machine's SSH "
            f"come from, like '203.0.113.7/32'."
        )
    try:
        with urllib.request.urlopen(IP_CHECK_URL, timeout=timeout) as response:
            text = response.read(64).decode().strip()
        return str(ipaddress.IPv4Address(text))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"Could not detect this machine's public IPv4 address from {IP_CHECK_URL} ({exc}); "
            f"set 'ssh_ingress_cidr' to the address range that reaches the instance, like "
            f"'203.0.113.7/32'."
        ) from exc


def https_proxy() -> str:
    """The proxy urllib would send the address lookup through ('' for none), without its
    credentials."""
    proxy = urllib.request.getproxies().get("https", "")
    host = urllib.parse.urlsplit(IP_CHECK_URL).hostname or ""
    if not proxy or urllib.request.proxy_bypass(host):
        return ""
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
