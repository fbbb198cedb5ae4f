"""The shipped IAM policies hold what the code calls and what CloudFormation's handlers need,
and limit what they destroy to the executor's own resources.

moto ignores IAM conditions and compares every request with "*", so the conditions are
proven here, statically: against the resource provider schemas cfn-lint ships (each type's
create, read and delete handler permissions), against the package's own AWS calls (a scan of
its source), and against the rule that nothing is deleted on "*" without a condition.
"""

from __future__ import annotations

import ast
import json
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import cfnlint
import pytest

from cdk_stacks.parameters import LAUNCH_TEMPLATE_TAG
from cdk_stacks.shape import ALL_SHAPES
from cdk_stacks.templates import template_for
from ec2_executor.cloud.images import TAG as BAKE_TAG
from ec2_executor.cloud.permissions import (
    CALLED_ACTIONS,
    NO_PERMISSION_NEEDED,
    POLICY_FILES,
)
from ec2_executor.cloud.stacks import STACK_PREFIX

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ec2_executor"
EXCLUSIONS = PACKAGE / "cloud" / "handler-permission-exclusions.json"
SCHEMAS = Path(cfnlint.__file__).parent / "data" / "schemas"
HANDLERS = ("create", "read", "delete")
SERVICES = ("cloudformation", "ec2", "iam", "kms", "pricing", "ssm", "sts")
"""The services whose client methods the scan recognises."""
DESTRUCTIVE = ("Delete", "Terminate", "Deregister", "Detach", "Disassociate", "Revoke")
TAGGING = ("ec2:CreateTags", "ec2:DeleteTags")
STACK_RESOURCE = {"StringLike": {"aws:ResourceTag/aws:cloudformation:stack-name": "ec2-executor-*"}}


def policy(holder: str = "user") -> dict[str, Any]:
    document: dict[str, Any] = json.loads(POLICY_FILES[holder].read_text())
    return document


def granted(document: dict[str, Any]) -> set[str]:
    return {a for s in document["Statement"] for a in s["Action"]}


def statements_with(document: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in document["Statement"] if action in s["Action"]]


# --- what CloudFormation's handlers need ---------------------------------------------------------


@cache
def handler_permissions(resource_type: str) -> set[str]:
    """The create, read and delete permissions of `resource_type`'s schema, in every region
    cfn-lint knows (a region may ship another version of the schema)."""
    found: set[str] = set()
    for provider in sorted((SCHEMAS / "providers").glob("*.json")):
        digest = json.loads(provider.read_text()).get(resource_type)
        if digest is None:
            continue
        schema = json.loads((SCHEMAS / "resources" / f"{digest}.json").read_text())
        for handler in HANDLERS:
            found |= set(schema.get("handlers", {}).get(handler, {}).get("permissions", []))
    assert found, f"cfn-lint ships no schema for {resource_type}"
    return found


def template_types(template_cache: Path) -> set[str]:
    """Every resource type of every template the package deploys (bake deploys the same)."""
    types: set[str] = set()
    for shape in ALL_SHAPES:
        resources = json.loads(template_for(shape))["Resources"]
        types |= {r["Type"] for r in resources.values()}
    return types


def exclusions() -> dict[str, dict[str, str]]:
    document = json.loads(EXCLUSIONS.read_text())
    return {k: v for k, v in document.items() if not k.startswith("_")}


def test_the_policy_holds_every_handler_permission_of_every_template_resource(
    template_cache: Path,
) -> None:
    """Each permission a handler of a template's resource type may call is in the policy, or
    excluded with its reason; a new type or a schema's new permission fails here."""
    allowed = granted(policy())
    excluded = exclusions()
    unexplained = {
        f"{resource_type}: {permission}"
        for resource_type in template_types(template_cache)
        for permission in handler_permissions(resource_type)
        if permission not in allowed and permission not in excluded.get(resource_type, {})
    }
    assert not unexplained, (
        f"add these to ec2_executor/cloud/iam-policy.json (and the README), or to "
        f"{EXCLUSIONS.name} with the reason the templates never need them: {sorted(unexplained)}"
    )


def test_each_exclusion_is_a_handler_permission_the_policy_lacks_with_its_reason(
    template_cache: Path,
) -> None:
    types = template_types(template_cache)
    allowed = granted(policy())
    for resource_type, excluded in exclusions().items():
        assert resource_type in types, f"{resource_type} is in no template any more"
        for permission, reason in excluded.items():
            assert permission in handler_permissions(resource_type), permission
            assert permission not in allowed, f"{permission} is granted and excluded"
            assert len(reason) > 20, permission


def test_the_service_role_policy_holds_every_handler_permission(template_cache: Path) -> None:
    """With `cloudformation_role`, the role's policy carries what the handlers need."""
    role = granted(policy("cloudformation-role"))
    excluded = exclusions()
    unexplained = {
        f"{resource_type}: {permission}"
        for resource_type in template_types(template_cache)
        for permission in handler_permissions(resource_type)
        if permission not in role and permission not in excluded.get(resource_type, {})
    }
    assert not unexplained, sorted(unexplained)


# --- what the code calls --------------------------------------------------------------------------


@cache
def offline_client(service: str) -> Any:
    """A client only to read its service's model: it never sends a request."""
    session = boto3.session.Session(region_name="us-east-1")
    return session.client(service, aws_access_key_id="x", aws_secret_access_key="x")  # type: ignore[call-overload]


@cache
def operations() -> dict[str, str]:
    """Each client method name of the scanned services -> its IAM action."""
    names: dict[str, str] = {}
    for service in SERVICES:
        meta = offline_client(service).meta
        for method, operation in meta.method_to_api_mapping.items():
            assert method not in names, f"{method} is an operation of two services"
            names[method] = f"{service}:{operation}"
    return names


def waiter_actions(name: str) -> set[str]:
    """The action a waiter polls (found in every service, as a waiter name is not unique)."""
    found = set()
    for service in SERVICES:
        client = offline_client(service)
        if name in client.waiter_names:
            found.add(f"{service}:{client.get_waiter(name).config.operation}")
    return found


def called_actions() -> dict[str, list[str]]:
    """Every AWS action the package's source calls -> where: `client.<operation>(...)`,
    `get_paginator("<operation>")` and `get_waiter("<name>")`."""
    names = operations()
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            method = node.func.attr
            first = node.args[0] if node.args else None
            literal = first.value if isinstance(first, ast.Constant) else None
            if method == "get_paginator" and isinstance(literal, str):
                found.setdefault(names[literal], []).append(where)
            elif method == "get_waiter" and isinstance(literal, str):
                for action in waiter_actions(literal):
                    found.setdefault(action, []).append(where)
            elif method in names:
                found.setdefault(names[method], []).append(where)
    return found


def test_the_scan_sees_the_calls_it_must() -> None:
    """The scan is wired up: it finds calls made through each way the package makes them."""
    called = called_actions()
    for action in (
        "cloudformation:CreateStack",  # self.cf.create_stack
        "cloudformation:DescribeStackEvents",  # get_paginator("describe_stack_events")
        "ec2:DescribeImages",  # get_waiter("image_available")
        "ec2:CreateTags",  # AWS(...).ec2.create_tags
    ):
        assert action in called, action


def test_every_action_the_code_calls_is_listed_for_doctor_and_granted() -> None:
    called = called_actions()
    unlisted = {a: w for a, w in called.items() if a not in CALLED_ACTIONS}
    unlisted = {a: w for a, w in unlisted.items() if a not in NO_PERMISSION_NEEDED}
    assert not unlisted, f"add to permissions.CALLED_ACTIONS: {unlisted}"
    stale = set(CALLED_ACTIONS) - set(called)
    assert not stale, f"no code calls these any more: {stale}"
    missing = {a: called[a] for a in CALLED_ACTIONS if a not in granted(policy())}
    assert not missing, f"the policy lacks actions the code calls: {missing}"


def test_with_a_role_the_user_holds_every_direct_call_and_the_two_cover_the_policy() -> None:
    user = granted(policy("user-with-role"))
    missing = [a for a in CALLED_ACTIONS if a not in user]
    assert not missing, missing
    assert "iam:PassRole" in user
    passes = statements_with(policy("user-with-role"), "iam:PassRole")
    assert [s["Condition"]["StringEquals"]["iam:PassedToService"] for s in passes] == [
        "cloudformation.amazonaws.com"
    ]
    # The user passes only the role; the stack's resources are the role's to create.
    for creates in ("ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateVpc"):
        assert creates not in user
    everything = granted(policy())
    assert everything <= user | granted(policy("cloudformation-role"))


# --- least privilege ------------------------------------------------------------------------------


@pytest.mark.parametrize("holder", list(POLICY_FILES))
def test_nothing_is_deleted_or_tagged_on_star_without_a_condition(holder: str) -> None:
    for statement in policy(holder)["Statement"]:
        risky = [
            a
            for a in statement["Action"]
            if a.split(":")[1].startswith(DESTRUCTIVE) or a in TAGGING
        ]
        resources = statement["Resource"]
        if risky and "*" in (resources if isinstance(resources, list) else [resources]):
            assert "Condition" in statement, (statement["Sid"], risky)


def test_destructive_actions_are_limited_to_the_executors_tags() -> None:
    """Stack resources by CloudFormation's own stack-name tag (no one can set an `aws:` tag),
    the launch template by its template tag, baked images by their recipe tag."""
    document = policy()
    conditions = {
        json.dumps(s["Condition"], sort_keys=True)
        for s in document["Statement"]
        for a in s["Action"]
        if a.startswith("ec2:") and a.split(":")[1].startswith(DESTRUCTIVE)
    }
    assert conditions == {
        json.dumps(STACK_RESOURCE, sort_keys=True),
        json.dumps(
            {"StringLike": {f"aws:ResourceTag/{LAUNCH_TEMPLATE_TAG}": f"{STACK_PREFIX}*"}},
            sort_keys=True,
        ),
        json.dumps({"Null": {f"aws:ResourceTag/{BAKE_TAG}key": "false"}}, sort_keys=True),
    }
    assert STACK_RESOURCE["StringLike"]["aws:ResourceTag/aws:cloudformation:stack-name"] == (
        f"{STACK_PREFIX}*"
    )


def test_the_launch_template_carries_the_tag_its_deletion_needs(template_cache: Path) -> None:
    """Its type takes no stack tags, so the template tags it itself, with the stack's name."""
    for shape in ALL_SHAPES:
        resource = json.loads(template_for(shape))["Resources"]["LaunchTemplate"]
        assert resource["Properties"]["TagSpecifications"] == [
            {
                "ResourceType": "launch-template",
                "Tags": [{"Key": LAUNCH_TEMPLATE_TAG, "Value": {"Ref": "AWS::StackName"}}],
            }
        ]


def test_pass_role_names_the_readme_role_and_its_service() -> None:
    readme = (REPO / "README.md").read_text()
    for holder, service in (("user", "ec2"), ("user-with-role", "cloudformation")):
        (statement,) = statements_with(policy(holder), "iam:PassRole")
        assert statement["Resource"] != "*"
        role = statement["Resource"].rsplit("/", 1)[1]
        assert role in readme, role
        assert statement["Condition"] == {
            "StringEquals": {"iam:PassedToService": f"{service}.amazonaws.com"}
        }
