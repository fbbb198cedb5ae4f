"""Deploying the product's stack by hand for the real-guest tests, and checking a guest left
nothing behind."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import paramiko
from harness import GuestInstance, LoopbackNetwork, MotoServer

from cdk_stacks.parameters import StackParameters
from cdk_stacks.shape import ALL_SHAPES, NetworkMode
from cdk_stacks.templates import template_for
from ec2_executor.access import ClientIdentity, KeyPair
from ec2_executor.remote import Endpoint, RemoteHost

USER = "ec2-user"  # the image's default user (cloud.cfg.d in tests/harness/guest_image.sh)
PORT = 2222


@dataclass
class Deployed:
    stack: str
    instance_id: str
    client: KeyPair
    host: KeyPair

    def remote(self, guest: GuestInstance, host_key: paramiko.PKey | None = None) -> RemoteHost:
        endpoint = Endpoint(host=guest.private_ip, port=PORT, user=USER)
        identity = ClientIdentity(
            key=self.client.paramiko_key(), authorized_key=self.client.public_openssh
        )
        return RemoteHost(endpoint, identity, host_key or self.host.public_key())


def deploy(
    server: MotoServer,
    subnet: LoopbackNetwork,
    name: str,
    *,
    minutes: int,
    ingress: str,
    idle_minutes: int = 0,
) -> Deployed:
    """The existing-network stack with the executor's parameters (lifetime `minutes`, SSH
    from `ingress`, the idle power-off after `idle_minutes`), created in moto; returns once
    CREATE_COMPLETE."""
    shape = next(s for s in ALL_SHAPES if s.network is NetworkMode.EXISTING)
    body = template_for(shape)
    client, host = KeyPair.generate(), KeyPair.generate()
    parameters = StackParameters(
        InstanceType="t3.small",
        AuthorizedKey=client.public_openssh,
        HostKey=host.private_base64(),
        SshIngressCidr=ingress,
        PythonVersion=f"{sys.version_info.major}.{sys.version_info.minor}",
        CovalentVersion=version("covalent"),
        CloudpickleVersion=version("cloudpickle"),
        SshPort=PORT,
        SshUser=USER,
        MaxLifetimeMinutes=minutes,
        IdleMinutes=idle_minutes,
        ExpectPublicIp=False,
        VpcId=subnet.vpc_id,
        SubnetId=subnet.subnet_id,
    )
    cfn = server.client("cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=body,
        Parameters=parameters.to_cloudformation(declared=frozenset(json.loads(body)["Parameters"])),
    )
    deadline = time.monotonic() + 120
    while (status := cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]) != (
        "CREATE_COMPLETE"
    ):
        assert "FAILED" not in status and "ROLLBACK" not in status, status
        assert time.monotonic() < deadline, f"{name} still {status}"
        time.sleep(0.5)
    resources = cfn.describe_stack_resources(StackName=name)["StackResources"]
    instance = next(r for r in resources if r["ResourceType"] == "AWS::EC2::Instance")
    return Deployed(name, instance["PhysicalResourceId"], client, host)


def assert_guest_gone(guest: GuestInstance) -> None:
    assert guest.nspawn is not None and guest.nspawn.poll() is not None
    assert not Path(f"/proc/{guest.leader}").exists()
    assert not Path(f"/run/netns/{guest.name}").exists()
    assert not Path(f"/sys/class/net/{guest.name.replace('-', 'p')}").exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/**/{guest.name}")), guest.name
