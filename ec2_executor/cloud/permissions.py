"""The IAM policy the executor needs, and how a refusal names the action that was missing.

The policy ships as `iam-policy.json` beside this module; `ec2-executor policy` prints it and
the README's "Permissions" section explains it. Without `cloudformation_role`, CloudFormation
acts with the caller's own rights, so the policy covers what the stack creates as well as the
executor's direct calls; with it, the user holds `iam-policy-with-role.json` and the role
`iam-policy-cloudformation-role.json`.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

POLICY_FILE = Path(__file__).with_name("iam-policy.json")
POLICY_FILES = {
    "user": POLICY_FILE,
    "user-with-role": Path(__file__).with_name("iam-policy-with-role.json"),
    "cloudformation-role": Path(__file__).with_name("iam-policy-cloudformation-role.json"),
}
"""Who holds which policy: the user alone (CloudFormation acts with the user's rights), or,
with `cloudformation_role`, the user and the CloudFormation service role it passes."""
POLICY_COMMAND = "ec2-executor policy"
# Error codes that mean "these credentials may not do this", by service.
ACCESS_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "Client.UnauthorizedOperation",
        "AuthorizationError",
    }
)
_NAMED = re.compile(r"perform:? ([a-z0-9-]+:[A-Za-z0-9]+)")
CALLED_ACTIONS: tuple[str, ...] = (
    "cloudformation:CreateStack",
    "cloudformation:DeleteStack",
    "cloudformation:DescribeStackEvents",
    "cloudformation:DescribeStackResource",
    "cloudformation:DescribeStacks",
    "cloudformation:ValidateTemplate",
    "ec2:CreateImage",
    "ec2:CreateTags",
    "ec2:DeleteSnapshot",
    "ec2:DeregisterImage",
    "ec2:DescribeImages",
    "ec2:DescribeInstanceTypeOfferings",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeInstances",
    "ec2:DescribeKeyPairs",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSpotPriceHistory",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
    "ec2:GetEbsDefaultKmsKeyId",
    "ec2:GetEbsEncryptionByDefault",
    "pricing:GetProducts",
    "ssm:DescribeAssociation",
    "ssm:GetParameters",
    "ssm:ListAssociations",
)
"""Every action the package itself calls (a test scans the code for its AWS calls and fails
when one is missing here, or is not in the policy); `doctor` tries each of these as well as
the policy's own."""
NO_PERMISSION_NEEDED = frozenset({"sts:GetCallerIdentity"})
"""Calls that any credentials may make: IAM cannot refuse them."""


def policy_text(holder: str = "user") -> str:
    """The policy for `holder`, one of `POLICY_FILES`."""
    return POLICY_FILES[holder].read_text()


@cache
def policy() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(policy_text())
    return document


def actions() -> list[str]:
    """Every action the policy grants, each once, in the policy's order."""
    seen: dict[str, None] = {}
    for statement in policy()["Statement"]:
        for action in statement["Action"]:
            seen.setdefault(action, None)
    return list(seen)


def to_check() -> list[str]:
    """What `doctor` tries: the policy's actions, then any the code calls that it lacks."""
    granted = actions()
    return granted + [a for a in CALLED_ACTIONS if a not in granted]


def action_for(operation: str) -> str:
    """The IAM action of an API operation ('CreateStack' -> 'cloudformation:CreateStack')."""
    return next((a for a in actions() if a.endswith(f":{operation}")), operation)


def denied_action(message: str, operation: str) -> str:
    """The action AWS names in its refusal ("... not authorized to perform: ec2:RunInstances"),
    else the one that matches the refused operation."""
    named = _NAMED.search(message)
    return named[1] if named else action_for(operation)


def denied_message(action: str, doing: str, detail: str) -> str:
    return (
        f"AWS refused {doing}: these credentials lack the IAM permission {action!r} "
        f"({detail}); grant the policy that '{POLICY_COMMAND}' prints (README, "
        f"\"Permissions\") to this user or role, or run 'ec2-executor doctor' to list every "
        f"missing permission."
    )
