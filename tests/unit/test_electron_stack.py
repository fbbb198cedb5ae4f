"""The synthesised `ElectronStack`, shape by shape, checked with `aws_cdk.assertions`.

Each shape is synthesised once for the module (a synth costs seconds). The user data is checked
as the instance would see it: the template's `Fn::Sub` string with sample parameter values
substituted, parsed as YAML, its shell fragments and the embedded bootstrap run through `bash -n`.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import posixpath
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from aws_cdk.assertions import Match, Template
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdk_stacks.parameters import BY_NAME, PARAMETERS, StackParameters, render
from cdk_stacks.shape import ALL_SHAPES, NetworkMode, StackShape
from cdk_stacks.synth import add_stack, new_app
from cdk_stacks.templates import MAX_INLINE_TEMPLATE_BYTES
from cdk_stacks.user_data import (
    BOOTSTRAP_PATH,
    HOST_KEY_PATH,
    SSHD_DROP_IN_PATH,
    user_data_size,
)
from ec2_executor import electron as electron_module
from ec2_executor.access import ClientIdentity, client_identity
from ec2_executor.cloud.lookups import Image, Plan, Versions
from ec2_executor.cloud.network import NetworkPlan
from ec2_executor.electron import Electron, stack_parameters
from ec2_executor.errors import ConfigurationError
from ec2_executor.options import BOUNDS, MAX_EXTRA_TAGS, PARAMETER_OF_OPTION, Options

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP_FILE = REPO / "ec2_executor" / "instance" / "bootstrap.sh"
EC2_USER_DATA_LIMIT = 16 * 1024  # bytes, before base64 (EC2 User Guide)

COMMON_TYPES = {"AWS::EC2::SecurityGroup", "AWS::EC2::Instance", "AWS::EC2::LaunchTemplate"}
CREATED_NETWORK_TYPES = {
    "AWS::EC2::VPC",
    "AWS::EC2::Subnet",
    "AWS::EC2::InternetGateway",
    "AWS::EC2::VPCGatewayAttachment",
    "AWS::EC2::RouteTable",
    "AWS::EC2::SubnetRouteTableAssociation",
    "AWS::EC2::Route",
}
EXPECTED_TYPES = {
    NetworkMode.EXISTING: COMMON_TYPES,
    NetworkMode.CREATED: COMMON_TYPES | CREATED_NETWORK_TYPES,
}
# Distinctive sample values, so an assertion cannot pass on a default by accident.
SAMPLE_PORT = 2201
SAMPLE_MINUTES = 37
SAMPLE_VERSIONS = {
    "--python": "3.10",  # not the float 3.1
    "--covalent": "0.240.0",
    "--cloudpickle": "3.1.1",
}
SAMPLE_USER = "runner"


def _shape_id(shape: StackShape) -> str:
    return shape.network.value


@pytest.fixture(scope="module")
def templates() -> dict[StackShape, Template]:
    """Every shape in one app, so the app synthesises once for the whole module."""
    app = new_app()
    stacks = {shape: add_stack(app, shape) for shape in ALL_SHAPES}
    return {shape: Template.from_stack(stack) for shape, stack in stacks.items()}


@pytest.fixture(params=ALL_SHAPES, ids=_shape_id)
def shape(request: pytest.FixtureRequest) -> StackShape:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def template(templates: dict[StackShape, Template], shape: StackShape) -> Template:
    return templates[shape]


@pytest.fixture
def as_json(template: Template) -> dict[str, Any]:
    return dict(template.to_json())


def _only(found: Mapping[str, Any]) -> tuple[str, Any]:
    assert len(found) == 1, found
    return next(iter(found.items()))


# --- resources ----------------------------------------------------------------------------------


def test_resource_types_are_exactly_the_expected_set(
    as_json: dict[str, Any], shape: StackShape
) -> None:
    types = {resource["Type"] for resource in as_json["Resources"].values()}
    assert types == EXPECTED_TYPES[shape.network]
    for name, resource in as_json["Resources"].items():
        kind = resource["Type"]
        assert not kind.startswith(("AWS::IAM::", "AWS::Lambda::", "Custom::")), name
        assert kind not in ("AWS::CloudFormation::CustomResource", "AWS::CDK::Metadata"), name
    assert sum(r["Type"] == "AWS::EC2::Instance" for r in as_json["Resources"].values()) == 1


def test_spot_market_only_on_request(template: Template, as_json: dict[str, Any]) -> None:
    template.has_condition("SpotRequested", {"Fn::Equals": [{"Ref": "UseSpot"}, "true"]})
    data = as_json["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    market = data["InstanceMarketOptions"]["Fn::If"]
    assert market[0] == "SpotRequested" and market[2] == {"Ref": "AWS::NoValue"}
    assert market[1]["MarketType"] == "spot"
    assert market[1]["SpotOptions"]["InstanceInterruptionBehavior"] == "terminate"
    template.has_resource_properties(
        "AWS::EC2::Instance",
        {
            "LaunchTemplate": {
                "LaunchTemplateId": {"Ref": "LaunchTemplate"},
                "Version": {"Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]},
            }
        },
    )


# Resources a launch creates without a resource of their own in the template; stack tags do not
# reach them, so the template must carry the tags to each.
IMPLICIT_TAGGABLES = {"volume", "network-interface", "spot-instances-request"}


def test_every_taggable_resource_gets_the_stack_tags(as_json: dict[str, Any]) -> None:
    """Stack tags propagate to every template resource that takes `Tags`; the root volume,
    network interface and spot request get them from the instance and the launch template."""
    from cdk_stacks.parameters import TAG_SLOTS

    resources = as_json["Resources"]
    spec = _cloudformation_spec()
    for name, resource in resources.items():
        properties = spec.get(resource["Type"], set())
        if "Tags" in properties:
            # CloudFormation copies stack tags to it, unless the template sets a key itself.
            assert "Tags" not in resource.get("Properties", {}), name
    instance = resources["Instance"]["Properties"]
    assert instance["PropagateTagsToVolumeOnCreation"] is True  # the root volume
    data = resources["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    covered: dict[str, list[Any]] = {}
    for entry in data["TagSpecifications"]:
        if "Fn::If" in entry:
            assert entry["Fn::If"][0] == "SpotRequested"
            entry = entry["Fn::If"][1]
        covered[entry["ResourceType"]] = entry["Tags"]
    assert set(covered) | {"volume"} == IMPLICIT_TAGGABLES
    slots = [
        {
            "Fn::If": [
                f"HasTag{n}Key",
                {"Key": {"Ref": f"Tag{n}Key"}, "Value": {"Ref": f"Tag{n}Value"}},
                {"Ref": "AWS::NoValue"},
            ]
        }
        for n in range(1, TAG_SLOTS + 1)
    ]
    for kind, tags in covered.items():
        assert tags == slots, kind
    for n in range(1, TAG_SLOTS + 1):
        assert as_json["Conditions"][f"HasTag{n}Key"] == {
            "Fn::Not": [{"Fn::Equals": [{"Ref": f"Tag{n}Key"}, ""]}]
        }


def _cloudformation_spec() -> dict[str, set[str]]:
    """Resource type -> property names, from cfn-lint's copy of the CloudFormation schemas."""
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    types = {
        "AWS::EC2::VPC",
        "AWS::EC2::Subnet",
        "AWS::EC2::InternetGateway",
        "AWS::EC2::VPCGatewayAttachment",
        "AWS::EC2::RouteTable",
        "AWS::EC2::SubnetRouteTableAssociation",
        "AWS::EC2::Route",
        "AWS::EC2::SecurityGroup",
        "AWS::EC2::Instance",
        "AWS::EC2::LaunchTemplate",
    }
    spec = {}
    for kind in types:
        schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", kind)
        spec[kind] = set(schema.schema.get("properties", {}))
    return spec


def test_tags_fill_the_slots_in_order() -> None:
    from cdk_stacks.parameters import TAG_SLOTS, tag_parameters

    assert tag_parameters([("project", "climate"), ("ec2-executor:node-id", "3")]) == {
        "Tag1Key": "project",
        "Tag1Value": "climate",
        "Tag2Key": "ec2-executor:node-id",
        "Tag2Value": "3",
    }
    every = StackParameters(**tag_parameters([(f"k{n}", "v") for n in range(TAG_SLOTS)]))
    assert every[f"Tag{TAG_SLOTS}Key"] == f"k{TAG_SLOTS - 1}"
    with pytest.raises(ValueError, match="slots"):
        tag_parameters([(f"k{n}", "v") for n in range(TAG_SLOTS + 1)])


def test_no_cdk_bootstrap_or_metadata(as_json: dict[str, Any], template: Template) -> None:
    assert "BootstrapVersion" not in as_json.get("Parameters", {})
    assert "CheckBootstrapVersion" not in as_json.get("Rules", {})
    template.resource_count_is("AWS::CDK::Metadata", 0)
    for name, resource in as_json["Resources"].items():
        assert "aws:cdk:path" not in resource.get("Metadata", {}), name


def test_template_fits_inline(as_json: dict[str, Any]) -> None:
    compact = json.dumps(as_json, separators=(",", ":"), sort_keys=True).encode()
    indented = json.dumps(as_json, indent=1).encode()  # as `cdk synth` writes it
    assert len(compact) < MAX_INLINE_TEMPLATE_BYTES == 51_200
    assert len(indented) < MAX_INLINE_TEMPLATE_BYTES


def test_template_declares_the_parameter_table(as_json: dict[str, Any], shape: StackShape) -> None:
    """Every parameter of the table, with its type, default and bounds, and nothing else."""
    declared = as_json["Parameters"]
    expected = [p for p in PARAMETERS if p.declared_in(shape.network)]
    assert list(declared) == [p.name for p in expected]
    shape_only = {"ExpectPublicIp", "VpcId", "SubnetId"}
    assert (shape.network is NetworkMode.EXISTING) == (shape_only <= set(declared))
    for p in expected:
        cfn = declared[p.name]
        assert cfn["Type"] == p.type, p.name
        assert cfn.get("MinValue") == p.min_value, p.name
        assert cfn.get("MaxValue") == p.max_value, p.name
        assert cfn.get("NoEcho", False) == p.no_echo, p.name
        if p.default is None:
            assert "Default" not in cfn, p.name
        else:
            assert str(cfn["Default"]) == render(p.default), p.name
        if p.is_flag:
            assert cfn["AllowedValues"] == ["true", "false"], p.name


@pytest.mark.parametrize(("option", "parameter"), list(PARAMETER_OF_OPTION.items()))
def test_option_bounds_lie_within_the_parameter_bounds(option: str, parameter: str) -> None:
    """An option the executor accepts must never be refused by CloudFormation."""
    low, high, _ = BOUNDS[option]
    bounds = BY_NAME[parameter]
    assert bounds.min_value is not None and bounds.max_value is not None
    assert bounds.min_value <= low <= high <= bounds.max_value


def test_option_bounds_cover_every_number_parameter() -> None:
    numbers = {p.name for p in PARAMETERS if p.type == "Number"}
    assert set(PARAMETER_OF_OPTION.values()) == numbers
    assert set(PARAMETER_OF_OPTION) == set(BOUNDS)


def test_stack_parameters_refuse_unknown_names_and_values_out_of_bounds() -> None:
    with pytest.raises(ValueError, match="Not stack parameters: VolumeSzie"):
        StackParameters(VolumeSzie=8)
    with pytest.raises(ValueError, match="VolumeSize is 0, outside 1 to 16384"):
        StackParameters(VolumeSize=0)
    with pytest.raises(ValueError, match="UseSpot must be True or False"):
        StackParameters(UseSpot="yes")
    with pytest.raises(ValueError, match="without a value: AuthorizedKey"):
        StackParameters(InstanceType="t3.micro").to_cloudformation(
            declared=frozenset({"InstanceType", "AuthorizedKey"})
        )


# --- network access -----------------------------------------------------------------------------


def test_ingress_only_ssh_port_from_ingress_cidr(template: Template) -> None:
    _, group = _only(template.find_resources("AWS::EC2::SecurityGroup"))
    rules = [dict(rule) for rule in group["Properties"]["SecurityGroupIngress"]]
    assert all(rule.pop("Description", "") for rule in rules), "every rule says why"
    assert rules == [
        {
            "IpProtocol": "tcp",
            "FromPort": {"Ref": "SshPort"},
            "ToPort": {"Ref": "SshPort"},
            "CidrIp": {"Ref": "SshIngressCidr"},
        }
    ]
    template.resource_count_is("AWS::EC2::SecurityGroupIngress", 0)
    # The CIDR has no default: an open range must be asked for, never inherited.
    template.has_parameter(
        "SshIngressCidr",
        {"Type": "String", "Default": Match.absent(), "AllowedPattern": Match.any_value()},
    )
    template.has_parameter("SshPort", {"Type": "Number", "Default": 22})


def test_no_literal_open_ingress_anywhere(as_json: dict[str, Any]) -> None:
    def ingress_rules(resource: dict[str, Any]) -> list[dict[str, Any]]:
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::EC2::SecurityGroupIngress":
            return [props]
        return list(props.get("SecurityGroupIngress", []))

    for name, resource in as_json["Resources"].items():
        for rule in ingress_rules(resource):
            assert rule.get("CidrIp") != "0.0.0.0/0", name
            assert rule.get("CidrIpv6") not in ("::/0",), name
            assert "SourcePrefixListId" not in rule, name


def test_instance_uses_the_stack_security_group(template: Template) -> None:
    group_id, _ = _only(template.find_resources("AWS::EC2::SecurityGroup"))
    template.has_resource_properties(
        "AWS::EC2::Instance", {"SecurityGroupIds": [{"Fn::GetAtt": [group_id, "GroupId"]}]}
    )


# --- instance hardening -------------------------------------------------------------------------


def test_imdsv2_required(template: Template) -> None:
    template.has_resource_properties(
        "AWS::EC2::Instance",
        {"MetadataOptions": Match.object_like({"HttpTokens": "required"})},
    )


def test_root_volume_gp3_encrypted_deleted_with_instance(template: Template) -> None:
    template.has_resource_properties(
        "AWS::EC2::Instance",
        {
            "BlockDeviceMappings": [
                {
                    "DeviceName": {"Ref": "RootDeviceName"},
                    "Ebs": {
                        "VolumeType": "gp3",
                        "Encrypted": True,
                        "DeleteOnTermination": True,
                        "VolumeSize": {"Ref": "VolumeSize"},
                    },
                }
            ]
        },
    )


def test_shutdown_terminates_instance(template: Template) -> None:
    template.has_resource_properties(
        "AWS::EC2::Instance", {"InstanceInitiatedShutdownBehavior": "terminate"}
    )


def test_secrets_are_no_echo(template: Template) -> None:
    template.has_parameter("HostKey", {"NoEcho": True, "Default": Match.absent()})
    template.has_parameter("AuthorizedKey", {"Default": Match.absent()})


def test_image_defaults_to_al2023_ssm_parameter(template: Template) -> None:
    template.has_parameter(
        "LatestAmi",
        {
            "Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
            "Default": Match.string_like_regexp(r"^/aws/service/ami-amazon-linux-latest/al2023-"),
        },
    )
    template.has_resource_properties(
        "AWS::EC2::Instance",
        {"ImageId": {"Fn::If": ["HasImageId", {"Ref": "ImageId"}, {"Ref": "LatestAmi"}]}},
    )


# --- outputs ------------------------------------------------------------------------------------


def test_outputs(template: Template, as_json: dict[str, Any], shape: StackShape) -> None:
    instance_id, _ = _only(template.find_resources("AWS::EC2::Instance"))
    outputs = as_json["Outputs"]
    assert set(outputs) == {"InstanceId", "PrivateIp", "PublicIp"}
    assert outputs["InstanceId"]["Value"] == {"Ref": instance_id}
    assert outputs["PrivateIp"]["Value"] == {"Fn::GetAtt": [instance_id, "PrivateIp"]}
    assert outputs["PublicIp"]["Value"] == {"Fn::GetAtt": [instance_id, "PublicIp"]}
    assert "Condition" not in outputs["InstanceId"]
    assert "Condition" not in outputs["PrivateIp"]
    if shape.network is NetworkMode.EXISTING:
        assert outputs["PublicIp"]["Condition"] == "PublicIpExpected"
        template.has_condition(
            "PublicIpExpected", {"Fn::Equals": [{"Ref": "ExpectPublicIp"}, "true"]}
        )
    else:  # the created subnet always maps a public address
        assert "Condition" not in outputs["PublicIp"]


# --- network per shape --------------------------------------------------------------------------


def test_existing_network_comes_from_parameters(templates: dict[StackShape, Template]) -> None:
    template = templates[StackShape(network=NetworkMode.EXISTING)]
    template.has_parameter("VpcId", {"Type": "AWS::EC2::VPC::Id"})
    template.has_parameter("SubnetId", {"Type": "AWS::EC2::Subnet::Id"})
    template.has_resource_properties("AWS::EC2::Instance", {"SubnetId": {"Ref": "SubnetId"}})
    template.has_resource_properties("AWS::EC2::SecurityGroup", {"VpcId": {"Ref": "VpcId"}})


def test_created_network_is_public_and_routed_before_the_instance(
    templates: dict[StackShape, Template],
) -> None:
    template = templates[StackShape(network=NetworkMode.CREATED)]
    vpc_id, _ = _only(template.find_resources("AWS::EC2::VPC"))
    subnet_id, subnet = _only(template.find_resources("AWS::EC2::Subnet"))
    gateway_id, _ = _only(template.find_resources("AWS::EC2::InternetGateway"))
    attachment_id, attachment = _only(template.find_resources("AWS::EC2::VPCGatewayAttachment"))
    table_id, table = _only(template.find_resources("AWS::EC2::RouteTable"))
    _, association = _only(template.find_resources("AWS::EC2::SubnetRouteTableAssociation"))
    route_id, route = _only(template.find_resources("AWS::EC2::Route"))
    _, instance = _only(template.find_resources("AWS::EC2::Instance"))

    assert subnet["Properties"]["MapPublicIpOnLaunch"] is True
    assert subnet["Properties"]["VpcId"] == {"Ref": vpc_id}
    assert attachment["Properties"] == {
        "VpcId": {"Ref": vpc_id},
        "InternetGatewayId": {"Ref": gateway_id},
    }
    assert table["Properties"]["VpcId"] == {"Ref": vpc_id}
    assert association["Properties"] == {
        "SubnetId": {"Ref": subnet_id},
        "RouteTableId": {"Ref": table_id},
    }
    assert route["Properties"] == {
        "RouteTableId": {"Ref": table_id},
        "DestinationCidrBlock": "0.0.0.0/0",
        "GatewayId": {"Ref": gateway_id},
    }
    assert attachment_id in route.get("DependsOn", [])  # a route to a detached IGW fails
    assert route_id in instance.get("DependsOn", [])  # the bootstrap needs the internet
    assert instance["Properties"]["SubnetId"] == {"Ref": subnet_id}
    template.has_resource_properties("AWS::EC2::SecurityGroup", {"VpcId": {"Ref": vpc_id}})


# --- user data ----------------------------------------------------------------------------------

_SUB_TOKEN = re.compile(r"\$\{(!|[^}]*\})")


def fn_sub(text: str, values: dict[str, str]) -> str:
    """CloudFormation's `Fn::Sub` over a string: `${Name}` -> value, `${!` -> `${`."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(1)
        if token == "!":
            return "${"
        name = token[:-1]
        if name not in values:
            raise KeyError(f"Fn::Sub refers to {name!r}, which is not a parameter")
        return values[name]

    return _SUB_TOKEN.sub(replace, text)


def sub_names(text: str) -> set[str]:
    return {token[:-1] for token in _SUB_TOKEN.findall(text) if token != "!"}


def test_fn_sub_helper() -> None:
    values = {"A": "1", "B": "two"}
    assert fn_sub("x${A}y${B}", values) == "x1ytwo"
    assert fn_sub("${!A} ${!HOME:-/root} ${!x[1]}", values) == "${A} ${HOME:-/root} ${x[1]}"
    assert fn_sub("$A $(cmd) ${!!x}", values) == "$A $(cmd) ${!x}"
    with pytest.raises(KeyError):
        fn_sub("${Missing}", values)


@pytest.fixture(scope="module")
def host_key_pem() -> str:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def sample_parameters(host_key_pem: str) -> StackParameters:
    return StackParameters(
        InstanceType="t3.small",
        AuthorizedKey="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBCMdW2lwR8y4W2xd7h7bmM0g ec2-executor",
        HostKey=base64.b64encode(host_key_pem.encode()).decode(),
        SshIngressCidr="203.0.113.7/32",
        PythonVersion=SAMPLE_VERSIONS["--python"],
        CovalentVersion=SAMPLE_VERSIONS["--covalent"],
        CloudpickleVersion=SAMPLE_VERSIONS["--cloudpickle"],
        SshPort=SAMPLE_PORT,
        SshUser=SAMPLE_USER,
        MaxLifetimeMinutes=SAMPLE_MINUTES,
        VpcId="vpc-0123456789abcdef0",
        SubnetId="subnet-0123456789abcdef0",
    )


@pytest.fixture
def user_data_sub(template: Template) -> str:
    _, instance = _only(template.find_resources("AWS::EC2::Instance"))
    sub = instance["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert isinstance(sub, str), "expected the one-argument (string) form of Fn::Sub"
    return sub


@pytest.fixture
def user_data(
    user_data_sub: str, as_json: dict[str, Any], sample_parameters: StackParameters
) -> str:
    declared = frozenset(as_json["Parameters"])
    values = {
        item["ParameterKey"]: item["ParameterValue"]
        for item in sample_parameters.to_cloudformation(declared=declared)
    }
    return fn_sub(user_data_sub, values)


@pytest.fixture
def cloud_config(user_data: str) -> dict[str, Any]:
    document = yaml.safe_load(user_data)
    assert isinstance(document, dict)
    return document


def _write_files(cloud_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = cloud_config["write_files"]
    by_path = {entry["path"]: entry for entry in entries}
    assert len(by_path) == len(entries), "duplicate write_files paths"
    return by_path


def _bash_n(script: str, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(script)
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"bash -n {name}:\n{done.stderr}\n---\n{script}"


def test_user_data_is_cloud_config(user_data: str, cloud_config: dict[str, Any]) -> None:
    assert user_data.splitlines()[0] == "#cloud-config"


# --- user data size: over EC2's limit, a launch fails only minutes into the stack -------------

WORST_TAGS = {f"{n:02d}".ljust(127, "k"): "v" * 255 for n in range(MAX_EXTRA_TAGS)}
"""The most tags the options take, each key and value at its longest."""


@dataclass(frozen=True)
class UserKey:
    path: Path
    identity: ClientIdentity
    """As the plan loads it from the file (loading checks the key: half a second for RSA-4096)."""


@pytest.fixture(scope="module")
def rsa_4096_key(tmp_path_factory: pytest.TempPathFactory) -> UserKey:
    """The largest key an EC2 key pair holds (RSA 2048 or 4096, ED25519), as 'ssh_key_file'."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    path = tmp_path_factory.mktemp("keys") / "id_rsa"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return UserKey(path, client_identity(path))


def _worst_case(shape: StackShape, key: UserKey, authorized_key: str = "") -> tuple[Options, Plan]:
    """Every option that reaches the stack's parameters at its longest allowed value."""
    options = Options(
        ssh_key_file=str(key.path),
        username="u" * 32,
        ssh_port=65535,
        max_lifetime_minutes=7 * 24 * 60,
        keep_warm_minutes=24 * 60,
        tags=WORST_TAGS,
        python_version="3.99",
    )
    identity = key.identity
    if authorized_key:
        identity = ClientIdentity(key=identity.key, authorized_key=authorized_key)
    existing = shape.network is NetworkMode.EXISTING
    network = NetworkPlan(
        shape=shape,
        vpc_id="vpc-0123456789abcdef0" if existing else "",
        subnet_id="subnet-0123456789abcdef0" if existing else "",
        ingress_cidr="0.0.0.0/0",
    )
    plan = Plan(
        identity=identity,
        image=Image(latest_ami_parameter="/aws/service/x", image_id="ami-0123456789abcdef0"),
        key_name="k" * 255,
        network=network,
        versions=Versions(python="3.99", covalent="0.240.0rc999", cloudpickle="3.1.999.post99"),
    )
    return options, plan


class Sender:
    """Runs `Electron.create_stack` with the `CreateStack` call captured instead of sent."""

    def __init__(self, as_json: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        self.template = json.dumps(as_json)
        self.calls: list[dict[str, str]] = []
        monkeypatch.setattr(electron_module, "submit_blocking", self._capture)
        no_aws = SimpleNamespace(create=None)  # the call is captured, never made
        monkeypatch.setattr(Electron, "stacks", property(lambda self: no_aws))

    def _capture(self, *args: Any, parameters: list[dict[str, str]], **kw: Any) -> Future[str]:
        self.calls.append({p["ParameterKey"]: p["ParameterValue"] for p in parameters})
        done: Future[str] = Future()
        done.set_result("arn:stack")
        return done

    def send(self, options: Options, plan: Plan) -> dict[str, str]:
        """The parameter values sent for an electron of these options and plan."""
        electron = Electron(options, {"dispatch_id": "d" * 36, "node_id": 10**6})
        parameters = stack_parameters(options, plan, electron.host_key)
        asyncio.run(electron.create_stack(self.template, parameters))
        return self.calls[-1]


@pytest.fixture
def sender(as_json: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Sender:
    return Sender(as_json, monkeypatch)


def test_user_data_fits_at_its_worst_case(
    user_data_sub: str,
    as_json: dict[str, Any],
    shape: StackShape,
    rsa_4096_key: UserKey,
    sender: Sender,
) -> None:
    """An RSA-4096 key, our ed25519 host key, ten longest tags and every option at its longest
    allowed value: the stack is sent, and its user data is within EC2's limit."""
    sent = sender.send(*_worst_case(shape, rsa_4096_key))
    assert sent["AuthorizedKey"].startswith("ssh-rsa ") and len(sent["AuthorizedKey"]) > 700
    assert sent["Tag10Value"] == "v" * 255  # the tags are among the parameters sent
    size = len(fn_sub(user_data_sub, sent).encode())
    assert size <= EC2_USER_DATA_LIMIT, f"{size - EC2_USER_DATA_LIMIT} bytes over"
    assert user_data_size(as_json, sent).total == size  # the guard measures what EC2 gets


def test_user_data_over_the_limit_is_refused_before_the_stack(
    user_data_sub: str, shape: StackShape, rsa_4096_key: UserKey, sender: Sender
) -> None:
    """The worst case with a public key that fills the user data exactly to the limit is
    sent; one byte more is refused, naming the key and its size, and nothing is sent."""
    sent = sender.send(*_worst_case(shape, rsa_4096_key))
    room = EC2_USER_DATA_LIMIT - len(fn_sub(user_data_sub, sent).encode())
    filling = sent["AuthorizedKey"] + "A" * room
    full = sender.send(*_worst_case(shape, rsa_4096_key, authorized_key=filling))
    assert len(fn_sub(user_data_sub, full).encode()) == EC2_USER_DATA_LIMIT

    too_long = filling + "A"
    with pytest.raises(ConfigurationError) as refused:
        sender.send(*_worst_case(shape, rsa_4096_key, authorized_key=too_long))
    assert len(sender.calls) == 2, "a stack was sent with too much user data"
    message = str(refused.value)
    assert f"would be {EC2_USER_DATA_LIMIT + 1} bytes" in message
    assert f"'ssh_key_file' {str(rsa_4096_key.path)!r} takes {len(too_long)} bytes" in message
    assert "ed25519" in message


def test_user_data_references_only_declared_parameters(
    user_data_sub: str, as_json: dict[str, Any]
) -> None:
    referenced = sub_names(user_data_sub)
    assert referenced <= set(as_json["Parameters"]), referenced - set(as_json["Parameters"])
    assert {"AuthorizedKey", "HostKey", "SshPort", "MaxLifetimeMinutes"} <= referenced


def test_user_data_authorizes_the_key(
    cloud_config: dict[str, Any], sample_parameters: StackParameters
) -> None:
    assert cloud_config["ssh_authorized_keys"] == [sample_parameters["AuthorizedKey"]]
    # One cheap type (the schema wants one); sshd offers only the pinned key (its drop-in).
    assert cloud_config.get("ssh_genkeytypes") == ["ed25519"]
    assert "ssh_pwauth" not in cloud_config or cloud_config["ssh_pwauth"] is False


_SAMPLE_KEY_BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIBCMdW2lwR8y4W2xd7h7bmM0g"
_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(comment=st.text(_PRINTABLE, max_size=40))
def test_authorized_key_survives_any_comment(user_data_sub: str, comment: str) -> None:
    """A user's public key may carry any comment (`work: laptop`, `#2`), and stay one string."""
    key = f"ssh-ed25519 {_SAMPLE_KEY_BLOB} {comment}".rstrip()
    values = {name: "1" for name in sub_names(user_data_sub)}
    values["AuthorizedKey"] = key
    document = yaml.safe_load(fn_sub(user_data_sub, values))
    assert document["ssh_authorized_keys"] == [key]


def test_user_data_writes_host_key(cloud_config: dict[str, Any], host_key_pem: str) -> None:
    entry = _write_files(cloud_config)[HOST_KEY_PATH]
    assert entry["encoding"] == "b64"
    assert entry["permissions"] == "0600"
    assert base64.b64decode(entry["content"]).decode() == host_key_pem


def test_user_data_writes_sshd_drop_in(cloud_config: dict[str, Any]) -> None:
    content = _write_files(cloud_config)[SSHD_DROP_IN_PATH]["content"]
    lines = content.splitlines()
    assert f"Port {SAMPLE_PORT}" in lines
    assert f"HostKey {HOST_KEY_PATH}" in lines
    assert "PasswordAuthentication no" in lines


def _code_lines(text: str, name: str) -> list[str]:
    """Every line a script runs: shell scripts ship without their comment lines."""
    lines = text.splitlines()
    if not name.endswith(".sh"):
        return lines
    return [line for line in lines if line.startswith("#!") or not line.lstrip().startswith("#")]


def test_user_data_embeds_the_bootstrap_verbatim(
    cloud_config: dict[str, Any], tmp_path: Path
) -> None:
    entry = _write_files(cloud_config)[BOOTSTRAP_PATH]
    assert entry["permissions"] == "0755"
    assert entry["encoding"] == "gz+b64"  # nothing for Fn::Sub or YAML to reinterpret
    script = gzip.decompress(base64.b64decode(entry["content"])).decode()
    assert script.splitlines() == _code_lines(BOOTSTRAP_FILE.read_text(), "bootstrap.sh")
    _bash_n(script, tmp_path, "bootstrap.sh")


@pytest.mark.parametrize("name", ["runner.py", "run-task.sh"])
def test_user_data_puts_the_task_files_beside_the_bootstrap(
    cloud_config: dict[str, Any], name: str
) -> None:
    path = posixpath.join(posixpath.dirname(BOOTSTRAP_PATH), name)
    entry = _write_files(cloud_config)[path]
    assert entry["encoding"] == "gz+b64"
    assert entry["permissions"] == ("0755" if name.endswith(".sh") else "0644")
    content = gzip.decompress(base64.b64decode(entry["content"])).decode()
    assert content.splitlines() == _code_lines(
        (REPO / "ec2_executor" / "instance" / name).read_text(), name
    )


def test_runcmd_runs_the_bootstrap_with_the_versions(cloud_config: dict[str, Any]) -> None:
    runs = [cmd for cmd in cloud_config["runcmd"] if isinstance(cmd, list) and cmd]
    runs_bootstrap = [cmd for cmd in runs if cmd[0] == BOOTSTRAP_PATH]
    assert len(runs_bootstrap) == 1, cloud_config["runcmd"]
    argv = [str(arg) for arg in runs_bootstrap[0][1:]]
    assert len(argv) % 2 == 0, argv
    options = dict(zip(argv[::2], argv[1::2], strict=True))
    assert options == {
        **SAMPLE_VERSIONS,
        "--user": SAMPLE_USER,
        "--idle-minutes": "0",
        "--orphan-minutes": "10",
        "--ssh-port": str(SAMPLE_PORT),
        "--spot": "false",
    }


def test_bootcmd_arms_the_lifetime_poweroff(cloud_config: dict[str, Any]) -> None:
    commands = [
        c if isinstance(c, str) else shlex.join(map(str, c)) for c in cloud_config["bootcmd"]
    ]
    armed = [
        c
        for c in commands
        if re.search(rf"(--on-active={SAMPLE_MINUTES}min\b|shutdown -[hP] \+{SAMPLE_MINUTES}\b)", c)
    ]
    assert armed, commands
    assert all(("poweroff" in c or "shutdown" in c) for c in armed)


def test_the_lifetime_poweroff_says_which_option_set_it(cloud_config: dict[str, Any]) -> None:
    """The timer is `max_lifetime_minutes`' or `budget_usd`'s (LifetimeLimit): its power-off
    writes which into `poweroff`, as the idle and orphan power-offs do."""
    [timer] = [c for c in cloud_config["bootcmd"] if isinstance(c, str) and "systemd-run" in c]
    assert "max_lifetime_minutes reached, powering off" in timer
    assert ">/opt/ec2-executor/poweroff; systemctl poweroff" in timer


def test_lifetime_timer_does_not_wait_for_sysinit(cloud_config: dict[str, Any]) -> None:
    """On Debian/Ubuntu `bootcmd` runs before sysinit.target: a timer with default
    dependencies would deadlock the boot (tests/guest proves it on a real boot)."""
    timers = [c for c in cloud_config["bootcmd"] if isinstance(c, str) and "systemd-run" in c]
    assert len(timers) == 1, cloud_config["bootcmd"]
    assert "--timer-property=DefaultDependencies=no" in timers[0]
    assert "--timer-property=AccuracySec=1s" in timers[0]


def test_user_data_passes_cloud_init_schema(user_data: str, tmp_path: Path) -> None:
    cloud_init = shutil.which("cloud-init")
    if cloud_init is None:
        pytest.skip("cloud-init is not installed (Debian package cloud-init; .ci/run installs it)")
    path = tmp_path / "user-data"
    path.write_text(user_data)
    checked = subprocess.run(
        [cloud_init, "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Valid cloud-config" in checked.stdout


def test_shell_fragments_parse(cloud_config: dict[str, Any], tmp_path: Path) -> None:
    for hook in ("bootcmd", "runcmd"):
        for index, command in enumerate(cloud_config.get(hook) or ()):
            # cloud-init runs a string through sh -c and a list as argv (no shell at all).
            script = command if isinstance(command, str) else shlex.join(map(str, command))
            _bash_n(script + "\n", tmp_path, f"{hook}-{index}.sh")
