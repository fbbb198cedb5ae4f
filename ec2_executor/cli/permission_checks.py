"""`ec2-executor doctor`'s permission checks: each action of the policy, tried without effect.

EC2 actions go as dry runs (`DryRun=True`: "DryRunOperation" means allowed); CloudFormation
ones as calls that cannot create anything (a template that does not parse, the deletion of a
stack that does not exist); reads as reads. An answer other than a refusal means the
permission is there. `iam:` actions have no dry run and are listed as not checked.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cdk_stacks.parameters import AL2023_SSM_PARAMETER
from ec2_executor.cloud.aws import AWS, error_code
from ec2_executor.cloud.permissions import ACCESS_DENIED, actions
from ec2_executor.options import Options

PROBE_NAME = "ec2-executor-doctor-probe"
_FAKE = {
    "AssociationId": "rtbassoc-0123456789abcdef0",
    "CidrBlock": "10.64.0.0/24",
    "Description": "ec2-executor doctor dry run",
    "DestinationCidrBlock": "0.0.0.0/0",
    "GroupId": "sg-0123456789abcdef0",
    "GroupName": PROBE_NAME,
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


_NEEDS_A_PARAMETER = (
    '{"Parameters": {"Required": {"Type": "String"}}, "Resources": {"Nothing": '
    '{"Type": "AWS::CloudFormation::WaitConditionHandle"}}}'
)


@dataclass
class PermissionReport:
    granted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    """Actions with no side-effect-free way to try them."""


def check_permissions(aws: AWS, options: Options, *, template: str) -> PermissionReport:
    """Try every action of the policy without creating anything; sort them by the answer."""
    report = PermissionReport()
    probes = _probes(aws, options, template)
    for action in actions():
        probe = probes.get(action)
        allowed = None if probe is None else _allowed(probe)
        if allowed is None:
            report.unchecked.append(action)
        elif allowed:
            report.granted.append(action)
        else:
            report.missing.append(action)
    return report


def _allowed(probe: Callable[[], Any]) -> bool | None:
    """Whether AWS let the call past the permission check; None when no answer came."""
    try:
        probe()
    except ClientError as exc:
        # DryRunOperation, "does not exist", a template error: AWS looked past the permission.
        return error_code(exc) not in ACCESS_DENIED
    except BotoCoreError:
        return None
    return True


def _probes(aws: AWS, options: Options, template: str) -> dict[str, Callable[[], Any]]:
    ec2 = aws.client("ec2", max_attempts=2)
    cloudformation = aws.client("cloudformation", max_attempts=2)
    ssm = aws.client("ssm", max_attempts=2)
    image = options.ami or "ami-0123456789abcdef0"
    probes: dict[str, Callable[[], Any]] = {}
    for action in actions():
        service, operation = action.split(":")
        if service == "ec2" and operation not in ("ModifySubnetAttribute", "ModifyVpcAttribute"):
            probes[action] = _ec2_dry_run(ec2, operation, image, options.instance_type)
    never = f"{PROBE_NAME}-{uuid.uuid4().hex[:12]}"  # a stack that does not exist
    probes |= {
        "cloudformation:DescribeStacks": lambda: cloudformation.describe_stacks(),
        "cloudformation:ListStacks": lambda: cloudformation.list_stacks(
            StackStatusFilter=["CREATE_IN_PROGRESS"]
        ),
        "cloudformation:DescribeStackEvents": lambda: cloudformation.describe_stack_events(
            StackName=never
        ),
        "cloudformation:ValidateTemplate": lambda: cloudformation.validate_template(
            TemplateBody=template
        ),
        # Refused for the missing parameter before anything exists, but only after the
        # permission check.
        "cloudformation:CreateStack": lambda: cloudformation.create_stack(
            StackName=never, TemplateBody=_NEEDS_A_PARAMETER
        ),
        "cloudformation:DeleteStack": lambda: cloudformation.delete_stack(StackName=never),
        "ssm:GetParameters": lambda: ssm.get_parameters(
            Names=[AL2023_SSM_PARAMETER.format(arch="x86_64")]
        ),
    }
    return probes


def _ec2_dry_run(ec2: Any, operation: str, image: str, instance_type: str) -> Callable[[], Any]:
    model = ec2.meta.service_model.operation_model(operation)
    arguments: dict[str, Any] = {
        name: _FAKE[name] for name in model.input_shape.members if name in _FAKE
    }
    arguments = {k: v for k, v in arguments.items() if k in model.input_shape.required_members}
    if operation == "RunInstances":
        arguments |= {"ImageId": image, "InstanceType": instance_type}
    if operation in ("CreateVpc", "CreateSubnet"):
        arguments["CidrBlock"] = _FAKE["CidrBlock"]
    if operation in ("CreateRoute", "DeleteRoute"):
        arguments["DestinationCidrBlock"] = _FAKE["DestinationCidrBlock"]
    if operation in ("AuthorizeSecurityGroupIngress", "DeleteSecurityGroup"):
        arguments["GroupId"] = _FAKE["GroupId"]
    if operation == "DeleteLaunchTemplate":
        arguments["LaunchTemplateName"] = PROBE_NAME
    method = getattr(ec2, _snake(operation))
    return lambda: method(DryRun=True, **arguments)


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")
