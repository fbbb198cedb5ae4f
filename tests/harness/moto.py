"""A real moto server on loopback, the boto3 environment that points at it, and a loopback VPC."""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from .strict import make_moto_strict

REGION = "us-east-1"

LOOPBACK_VPC_CIDR = "127.0.0.0/16"
LOOPBACK_SUBNET_CIDR = "127.0.2.0/24"

# Variables that could make boto3 reach real AWS or read real credentials: removed while the
# harness environment is in force.
AWS_ENV_UNSET: tuple[str, ...] = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_CA_BUNDLE",
    "AWS_STS_REGIONAL_ENDPOINTS",
)


@dataclass(frozen=True)
class Keys:
    """An access key pair."""

    access_key_id: str
    secret_access_key: str


TESTING_KEYS = Keys("testing", "testing")
"""What a moto server that checks no credentials is called with."""


def aws_environment(
    endpoint_url: str, config_dir: Path, keys: Keys = TESTING_KEYS
) -> dict[str, str]:
    """The environment variables that point boto3 (and the AWS CLI/CDK) at `endpoint_url`.

    Credentials and config files are written to `config_dir`, so nothing is read from ~/.aws.
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    credentials = config_dir / "credentials"
    config = config_dir / "config"
    credentials.write_text(
        f"[default]\naws_access_key_id = {keys.access_key_id}\n"
        f"aws_secret_access_key = {keys.secret_access_key}\n"
    )
    config.write_text(f"[default]\nregion = {REGION}\n")
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": keys.access_key_id,
        "AWS_SECRET_ACCESS_KEY": keys.secret_access_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(config),
        # Never ask an instance metadata service (169.254.169.254) for anything.
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextlib.contextmanager
def patched_environ(
    values: Mapping[str, str], unset: tuple[str, ...] = AWS_ENV_UNSET
) -> Iterator[None]:
    """Set `values` and remove `unset` in os.environ; restore the previous state on exit."""
    saved = {name: os.environ.get(name) for name in (*values, *unset)}
    for name in unset:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def reset_moto(url: str) -> None:
    """Forget every resource in the moto server (`POST /moto-api/reset`)."""
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def drop_no_value_list_items() -> None:
    """Make moto's CloudFormation drop a list item that resolves to `AWS::NoValue`, as AWS
    does (moto keeps a None there, and its launch templates then fail on `Fn::If` tag slots).
    Patched in this process, where the threaded moto server runs; idempotent."""
    from moto.cloudformation import parsing

    if getattr(parsing.clean_json, "drops_no_value", False):
        return
    original = parsing.clean_json

    def clean_json(resource_json: Any, resources_map: Any) -> Any:
        if isinstance(resource_json, list):
            cleaned = [clean_json(item, resources_map) for item in resource_json]
            return [item for item in cleaned if item is not None]
        return original(resource_json, resources_map)

    clean_json.drops_no_value = True  # type: ignore[attr-defined]
    parsing.clean_json = clean_json


def answer_ebs_default_kms_key_id() -> None:
    """Give moto's EC2 the GetEbsDefaultKmsKeyId it lacks (it has ModifyEbsDefaultKmsKeyId):
    the key ModifyEbsDefaultKmsKeyId set, else "alias/aws/ebs", as AWS answers an account
    that never set one. Patched in this process, where the threaded moto server runs."""
    from moto.core.responses import ActionResult
    from moto.ec2.responses.elastic_block_store import ElasticBlockStore

    def get_ebs_default_kms_key_id(self: Any) -> ActionResult:
        self.error_on_dryrun()
        return ActionResult({"KmsKeyId": self.ec2_backend.default_kms_key_id or "alias/aws/ebs"})

    ElasticBlockStore.get_ebs_default_kms_key_id = get_ebs_default_kms_key_id  # type: ignore[attr-defined]


def tag_snapshots_of_create_image() -> None:
    """Make moto's CreateImage take a "snapshot" tag specification and tag the image's
    snapshot with it, as AWS does (moto raises NotImplementedError). Idempotent."""
    from moto.ec2.models.amis import AmiBackend

    original = AmiBackend.create_image
    if getattr(original, "tags_snapshots", False):
        return

    def create_image(
        self: Any, instance_id: str, name: str, description: str, tag_specifications: Any
    ) -> Any:
        ours = [t for t in tag_specifications if t.get("ResourceType") == "snapshot"]
        rest = [t for t in tag_specifications if t.get("ResourceType") != "snapshot"]
        image = original(self, instance_id, name, description, tag_specifications=rest)
        for spec in ours:
            for tag in spec.get("Tags", []):
                image.ebs_snapshot.add_tag(tag["Key"], tag["Value"])
        return image

    create_image.tags_snapshots = True  # type: ignore[attr-defined]
    AmiBackend.create_image = create_image  # type: ignore[method-assign]


def fidelity_fixes() -> None:
    drop_no_value_list_items()
    answer_ebs_default_kms_key_id()
    tag_snapshots_of_create_image()
    make_moto_strict()


def serve_in_this_process(argv: list[str]) -> None:
    """`python -m harness.moto -H HOST -p PORT`: moto's own server, with the fidelity fix."""
    from moto.server import main

    fidelity_fixes()
    main(argv)


@dataclass
class MotoServer:
    """A moto server bound to 127.0.0.1, in a thread of this process (`start`)."""

    host: str
    port: int
    _stop: Callable[[], None] = field(repr=False)
    keys: Keys = TESTING_KEYS
    """The credentials the harness calls this server with (an admin's, once `harness.iam`
    enforces IAM)."""
    env: dict[str, str] = field(default_factory=dict)
    """The boto3 environment for this server, once `environment()` made it: what the executor
    under test signs with."""

    @classmethod
    def start(cls, port: int = 0) -> MotoServer:
        """Start a server on `port` (0: a free port) and wait until it accepts requests."""
        fidelity_fixes()
        # One line per request otherwise; keep warnings and errors.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        host, bound_port = server.get_host_and_port()
        return cls(host=host, port=bound_port, _stop=server.stop)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self._stop()

    def reset(self) -> None:
        reset_moto(self.url)

    def client(self, service: str, **kwargs: Any) -> Any:
        """A boto3 client for this server that does not depend on the process environment
        (`endpoint_url` may name a proxy in front of it)."""
        kwargs.setdefault("region_name", REGION)
        kwargs.setdefault("endpoint_url", self.url)
        session: Any = boto3.session.Session()
        return session.client(
            service,
            aws_access_key_id=self.keys.access_key_id,
            aws_secret_access_key=self.keys.secret_access_key,
            **kwargs,
        )

    def reclaim_spot(self, instance_id: str) -> None:
        """What EC2 does to a spot instance it takes back: terminate it, its state reason
        `Server.SpotInstanceTermination` (moto's TerminateInstances says the user did it). For
        a server in this process (`start`): the reason is set in moto's own model."""
        from moto.backends import get_backend
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.ec2.models.instances import StateReason

        backend = get_backend("ec2")[DEFAULT_ACCOUNT_ID][REGION]
        backend.terminate_instances([instance_id])
        code = "Server.SpotInstanceTermination"
        instance = backend.get_instance(instance_id)
        instance.state_reason = StateReason(f"{code}: Spot instance termination", code)

    def environment(self, config_dir: Path, keys: Keys | None = None) -> dict[str, str]:
        """Make (and remember in `env`) the boto3 environment for this server, signing with
        `keys` (default: the harness's own)."""
        self.env = aws_environment(self.url, config_dir, keys or self.keys)
        return dict(self.env)


@dataclass(frozen=True)
class LoopbackNetwork:
    """A VPC and a subnet whose instances get private IPs in 127.0.2.0/24."""

    vpc_id: str
    subnet_id: str
    vpc_cidr: str = LOOPBACK_VPC_CIDR
    subnet_cidr: str = LOOPBACK_SUBNET_CIDR


def create_loopback_network(ec2: Any) -> LoopbackNetwork:
    """Create the loopback VPC (127.0.0.0/16) and subnet (127.0.2.0/24, public IPs on launch).

    moto hands out private IPs from the subnet in order, from .4 on (127.0.2.4, .5, ...), so every
    instance launched in this subnet has an address that Linux routes to `lo`. Like a public
    subnet on AWS, its VPC routes out through an internet gateway.
    """
    vpc_id = ec2.create_vpc(CidrBlock=LOOPBACK_VPC_CIDR)["Vpc"]["VpcId"]
    subnet_id = ec2.create_subnet(
        VpcId=vpc_id, CidrBlock=LOOPBACK_SUBNET_CIDR, AvailabilityZone=f"{REGION}a"
    )["Subnet"]["SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=subnet_id, MapPublicIpOnLaunch={"Value": True})
    route_out(ec2, vpc_id)
    return LoopbackNetwork(vpc_id=vpc_id, subnet_id=subnet_id)


def route_out(ec2: Any, vpc_id: str) -> str:
    """An internet gateway for `vpc_id` and the route 0.0.0.0/0 to it in the VPC's main route
    table, as a public subnet has on AWS; returns the gateway's id."""
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc_id)
    main = ec2.describe_route_tables(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "association.main", "Values": ["true"]},
        ]
    )["RouteTables"][0]["RouteTableId"]
    ec2.create_route(RouteTableId=main, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)
    return str(gateway)


if __name__ == "__main__":
    import sys

    serve_in_this_process(sys.argv[1:])
