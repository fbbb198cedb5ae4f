"""`ec2-executor doctor`'s permission checks: every action of the policy, and every action the
code calls, tried without effect.

EC2 actions go as dry runs: only "DryRunOperation" proves the permission. RunInstances is
tried with the request the stack's instance makes (image, type, subnet, security group, key,
profile, volume, metadata options, tags, spot). CloudFormation ones go as calls that cannot
create anything (a template that does not parse, the deletion of a stack that does not
exist), each proven only by the answer that comes after the permission check; reads as
reads. Any other answer (a fake id not found, a throttled call) leaves the action unchecked,
with the answer, rather than counted as granted. `iam:` actions have no dry run.
"""

from __future__ import annotations

import importlib.metadata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from cdk_stacks.parameters import AL2023_SSM_PARAMETER
from ec2_executor.cloud.aws import AWS, aws_errors, error_code
from ec2_executor.cloud.lookups import Image, key_pair_name
from ec2_executor.cloud.network import NetworkPlan
from ec2_executor.cloud.permissions import ACCESS_DENIED, denied_action, to_check
from ec2_executor.cloud.stacks import stack_tags
from ec2_executor.errors import EC2ExecutorError
from ec2_executor.options import Options

PROBE_NAME = "ec2-executor-doctor-probe"
DRY_RUN_ALLOWED = "DryRunOperation"
_FAKE = {
    "AssociationId": "rtbassoc-0123456789abcdef0",
    "CidrBlock": "10.64.0.0/24",
    "Description": "ec2-executor doctor dry run",
    "DestinationCidrBlock": "0.0.0.0/0",
    "GroupId": "sg-0123456789abcdef0",
    "GroupName": PROBE_NAME,
    "IamInstanceProfile": {"Name": PROBE_NAME},
    "ImageId": "ami-0123456789abcdef0",
    "InstanceId": "i-0123456789abcdef0",
    "InstanceIds": ["i-0123456789abcdef0"],
    "InternetGatewayId": "igw-0123456789abcdef0",
    "LaunchTemplateData": {},
    "LaunchTemplateName": PROBE_NAME,
    "Name": PROBE_NAME,
    "MaxCount": 1,
    "MinCount": 1,
    "Resources": ["i-0123456789abcdef0"],
    "RouteTableId": "rtb-0123456789abcdef0",
    "SnapshotId": "snap-0123456789abcdef0",
    "SubnetId": "subnet-0123456789abcdef0",
    "Tags": [{"Key": "ec2-executor:doctor", "Value": "dry-run"}],
    "VpcId": "vpc-0123456789abcdef0",
}
_NO_DRY_RUN = ("ModifySubnetAttribute", "ModifyVpcAttribute", "ModifyInstanceAttribute")
"""EC2 actions without a DryRun parameter, or whose dry run would need a real resource."""
_NEEDS_A_PARAMETER = (
    '{"Parameters": {"Required": {"Type": "String"}}, "Resources": {"Nothing": '
    '{"Type": "AWS::CloudFormation::WaitConditionHandle"}}}'
)


@dataclass(frozen=True, kw_only=True)
class Launch:
    """What the stack's instance sends to RunInstances, as far as it is known before any
    resource exists: the security group is the VPC's default one (the stack's own does not
    exist yet), and the launch template's spot options and tags are given inline."""

    image_id: str = ""
    subnet_id: str = ""
    security_group_id: str = ""
    key_name: str = ""
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Probe:
    call: Callable[[], Any]
    proof: frozenset[str] = frozenset()
    """Error codes AWS gives only after the permission check (besides success)."""


@dataclass
class PermissionReport:
    granted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    """Actions with no side-effect-free way to try them, or whose answer proved nothing
    (each with that answer)."""


def check_permissions(
    aws: AWS, options: Options, *, template: str, launch: Launch | None = None
) -> PermissionReport:
    """Try every action of the policy and every action the code calls, without creating
    anything; sort them by the answer."""
    report = PermissionReport()
    probes = _probes(aws, options, template, launch or Launch())
    for action in to_check():
        probe = probes.get(action)
        if probe is None:
            report.unchecked.append(action)
            continue
        allowed, answer = _allowed(probe)
        named = denied_action(answer, action) if allowed is False else action
        if named != action and named not in report.missing:
            report.missing.append(named)  # the call was refused for another action it needs
            report.unchecked.append(f"{action} (refused for {named})")
        elif allowed:
            report.granted.append(action)
        elif allowed is None:
            report.unchecked.append(f"{action} ({answer})" if answer else action)
        elif action not in report.missing:
            report.missing.append(action)
    return report


def _allowed(probe: Probe) -> tuple[bool | None, str]:
    """Whether AWS let the call past the permission check (None when its answer does not
    say), and the answer: the refusal's message, or the error code that proved nothing."""
    try:
        probe.call()
    except ClientError as exc:
        code = error_code(exc)
        if code in ACCESS_DENIED:
            return False, str(exc.response.get("Error", {}).get("Message", ""))
        return (True, "") if code in probe.proof else (None, code or "no error code")
    except (BotoCoreError, ResponseParserError) as exc:  # no answer, or not AWS's
        return None, type(exc).__name__
    return True, ""


def _probes(aws: AWS, options: Options, template: str, launch: Launch) -> dict[str, Probe]:
    ec2 = aws.client("ec2", max_attempts=2)
    cloudformation = aws.client("cloudformation", max_attempts=2)
    ssm = aws.client("ssm", max_attempts=2)
    probes: dict[str, Probe] = {}
    for action in to_check():
        service, operation = action.split(":")
        if service != "ec2" or operation in _NO_DRY_RUN:
            continue
        model = ec2.meta.service_model.operation_model(operation)
        if "DryRun" not in model.input_shape.members:
            if operation.startswith(("Describe", "Get")):  # a read without a dry run: read
                probes[action] = Probe(getattr(ec2, _snake(operation)))
            continue  # a change without a dry run cannot be tried without effect
        arguments = _dry_run_arguments(model, operation)
        if operation == "RunInstances":
            arguments = _run_instances(options, launch)
        probes[action] = _dry_run(getattr(ec2, _snake(operation)), arguments)
    never = f"{PROBE_NAME}-{uuid.uuid4().hex[:12]}"  # a stack that does not exist
    absent = frozenset({"ValidationError"})  # "Stack ... does not exist"
    probes |= {
        "cloudformation:DescribeStacks": Probe(lambda: cloudformation.describe_stacks()),
        "cloudformation:DescribeStackEvents": Probe(
            lambda: cloudformation.describe_stack_events(StackName=never), absent
        ),
        "cloudformation:DescribeStackResource": Probe(
            lambda: cloudformation.describe_stack_resource(
                StackName=never, LogicalResourceId="Instance"
            ),
            absent,
        ),
        "cloudformation:ValidateTemplate": Probe(
            lambda: cloudformation.validate_template(TemplateBody=template)
        ),
        # Refused for the missing parameter before anything exists, but only after the
        # permission check.
        "cloudformation:CreateStack": Probe(
            lambda: cloudformation.create_stack(StackName=never, TemplateBody=_NEEDS_A_PARAMETER),
            absent,
        ),
        "cloudformation:DeleteStack": Probe(lambda: cloudformation.delete_stack(StackName=never)),
        "ssm:GetParameters": Probe(
            lambda: ssm.get_parameters(Names=[AL2023_SSM_PARAMETER.format(arch="x86_64")])
        ),
        "ssm:ListAssociations": Probe(lambda: ssm.list_associations(MaxResults=1)),
        "ssm:DescribeAssociation": Probe(
            lambda: ssm.describe_association(AssociationId=str(uuid.uuid4())),
            frozenset({"AssociationDoesNotExist"}),
        ),
    }
    return probes


def _dry_run(method: Callable[..., Any], arguments: dict[str, Any]) -> Probe:
    return Probe(lambda: method(DryRun=True, **arguments), frozenset({DRY_RUN_ALLOWED}))


def _dry_run_arguments(model: Any, operation: str) -> dict[str, Any]:
    """The fake arguments an operation requires (ids that look real and exist nowhere)."""
    required = model.input_shape.required_members
    arguments = {name: _FAKE[name] for name in required if name in _FAKE}
    if operation in ("AuthorizeSecurityGroupIngress", "DeleteSecurityGroup"):
        arguments["GroupId"] = _FAKE["GroupId"]
    if operation == "DeleteLaunchTemplate":
        arguments["LaunchTemplateName"] = PROBE_NAME
    if operation == "DescribeInstanceAttribute":
        arguments["Attribute"] = "instanceType"
    if operation == "DescribeVpcAttribute":
        arguments["Attribute"] = "enableDnsSupport"
    return arguments


def _run_instances(options: Options, launch: Launch) -> dict[str, Any]:
    """RunInstances as the stack's instance sends it (see `cdk_stacks.electron_stack`)."""
    tags = [{"Key": k, "Value": v} for k, v in (*options.tags.items(), *launch.tags)]
    arguments: dict[str, Any] = {
        "ImageId": launch.image_id or _FAKE["ImageId"],
        "InstanceType": options.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [
            {
                "DeviceName": "/dev/xvda",
                "Ebs": {
                    "VolumeSize": options.volume_size,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
    }
    if tags:
        arguments["TagSpecifications"] = [
            {"ResourceType": kind, "Tags": tags}
            for kind in ("instance", "volume", "network-interface")
        ]
    if launch.subnet_id:
        arguments["SubnetId"] = launch.subnet_id
    if launch.security_group_id:
        arguments["SecurityGroupIds"] = [launch.security_group_id]
    if launch.key_name:
        arguments["KeyName"] = launch.key_name
    if options.instance_profile:
        arguments["IamInstanceProfile"] = {"Name": options.instance_profile}
    if options.spot:
        arguments["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            },
        }
    return arguments


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")


AWS_MANAGED_EBS_KEY = "alias/aws/ebs"
KMS_GRANTS = (
    "kms:CreateGrant",
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncrypt*",
)
"""What the caller (or the CloudFormation service role) needs on a customer-managed default
EBS key: the root volume is always encrypted, with the account's default key."""


@dataclass(frozen=True)
class EbsEncryption:
    by_default: bool
    key: str

    @property
    def needs_grants(self) -> bool:
        return not self.key.endswith(AWS_MANAGED_EBS_KEY)

    def __str__(self) -> str:
        default = "on" if self.by_default else "off"
        if not self.needs_grants:
            return f"encryption by default {default}; the default key is AWS managed ({self.key})"
        return (
            f"encryption by default {default}; the default key {self.key} is customer managed, "
            f"and the encrypted root volume needs {', '.join(KMS_GRANTS)} on it for these "
            f'credentials (README, "Permissions")'
        )


def ebs_encryption(ec2: Any) -> EbsEncryption:
    """The account's EBS encryption default and default key in the region."""
    with aws_errors("reading the account's EBS encryption default"):
        by_default = bool(ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"])
        key = str(ec2.get_ebs_default_kms_key_id().get("KmsKeyId") or AWS_MANAGED_EBS_KEY)
    return EbsEncryption(by_default=by_default, key=key)


def launch_shape(
    aws: AWS, options: Options, image: Image | None, plan: NetworkPlan | None
) -> Launch:
    """The RunInstances request of an electron with `options`, from what doctor found."""
    ec2 = aws.client("ec2", max_attempts=2)
    tags = stack_tags(
        dispatch_id="doctor",
        node_id=0,
        version=importlib.metadata.version("ec2-executor"),
        instance_type=options.instance_type,
        extra={},
        owner="doctor",
    )
    return Launch(
        image_id=_image_id(aws, image),
        subnet_id=plan.subnet_id if plan else "",
        security_group_id=_default_security_group(ec2, plan.vpc_id if plan else ""),
        key_name=_quietly(lambda: key_pair_name(ec2, options)) if options.ssh_key_file else "",
        tags=tuple((t["Key"], t["Value"]) for t in tags),
    )


def _image_id(aws: AWS, image: Image | None) -> str:
    if image is None or image.image_id:
        return image.image_id if image else ""
    ssm = aws.client("ssm", max_attempts=2)
    return _quietly(
        lambda: str(
            ssm.get_parameters(Names=[image.latest_ami_parameter])["Parameters"][0]["Value"]
        )
    )


def _default_security_group(ec2: Any, vpc_id: str) -> str:
    """The VPC's default group: real, and never changed by a dry run."""
    if not vpc_id:
        return ""
    filters = [
        {"Name": "vpc-id", "Values": [vpc_id]},
        {"Name": "group-name", "Values": ["default"]},
    ]
    return _quietly(
        lambda: str(ec2.describe_security_groups(Filters=filters)["SecurityGroups"][0]["GroupId"])
    )


def _quietly(read: Callable[[], str]) -> str:
    """A value for the dry run, or '' when it cannot be read (the probe then says so)."""
    try:
        return read()
    except (ClientError, BotoCoreError, ResponseParserError, EC2ExecutorError, LookupError):
        return ""
