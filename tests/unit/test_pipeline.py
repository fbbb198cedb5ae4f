"""The pure steps of an electron's pipeline: stack parameters and the SSH endpoint."""

from __future__ import annotations

import pytest

from cdk_stacks.shape import NetworkMode, StackShape
from ec2_executor.access import KeyPair, client_identity
from ec2_executor.cloud.lookups import Image, Plan, Versions
from ec2_executor.cloud.network import NetworkPlan
from ec2_executor.cloud.stacks import StackOutputs
from ec2_executor.electron import endpoint, stack_parameters
from ec2_executor.errors import RemoteError
from ec2_executor.options import Options

VERSIONS = Versions(python="3.11", covalent="0.240.0", cloudpickle="3.1.3")


def _plan(network: NetworkPlan) -> Plan:
    return Plan(
        identity=client_identity(None),
        image=Image(latest_ami_parameter="/aws/service/x", image_id="ami-0abc"),
        key_name="",
        network=network,
        versions=VERSIONS,
    )


EXISTING = NetworkPlan(
    shape=StackShape(network=NetworkMode.EXISTING),
    vpc_id="vpc-1",
    subnet_id="subnet-1",
    public_ip=False,
    ingress_cidr="10.0.0.0/16",
)
CREATED = NetworkPlan(shape=StackShape(network=NetworkMode.CREATED), ingress_cidr="203.0.113.7/32")


def test_parameters_carry_the_options_plan_and_host_key() -> None:
    options = Options(instance_type="t3.large", volume_size=20, ssh_port=2222, spot=True)
    host_key = KeyPair.generate()
    plan = _plan(EXISTING)
    values = stack_parameters(options, plan, host_key)
    assert values["InstanceType"] == "t3.large"
    assert (values["VolumeSize"], values["SshPort"], values["UseSpot"]) == (20, 2222, True)
    assert values["HostKey"] == host_key.private_base64()
    assert values["AuthorizedKey"] == plan.identity.authorized_key
    assert (values["VpcId"], values["SubnetId"], values["ExpectPublicIp"]) == (
        "vpc-1",
        "subnet-1",
        False,
    )
    assert values["ImageId"] == "ami-0abc"
    assert (values["PythonVersion"], values["CovalentVersion"]) == ("3.11", "0.240.0")
    assert "***" in repr(values) and host_key.private_base64() not in repr(values)


def test_a_created_network_passes_no_vpc_or_subnet() -> None:
    values = stack_parameters(Options(), _plan(CREATED), KeyPair.generate())
    assert "VpcId" not in values and "SubnetId" not in values
    assert values["SshIngressCidr"] == "203.0.113.7/32"


def test_endpoint_follows_use_private_ip() -> None:
    outputs = StackOutputs(instance_id="i-1", private_ip="10.0.0.5", public_ip="198.51.100.9")
    public = endpoint(Options(), outputs, "s")
    private = endpoint(Options(use_private_ip=True, ssh_port=2222), outputs, "s")
    assert (public.host, public.port, public.user) == ("198.51.100.9", 22, "ec2-user")
    assert (private.host, private.port) == ("10.0.0.5", 2222)
    with pytest.raises(RemoteError, match="reports no public address for i-1"):
        endpoint(Options(), StackOutputs(instance_id="i-1", private_ip="10.0.0.5"), "s")
