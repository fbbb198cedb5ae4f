"""The IAM policy the executor needs, and how a refusal names the action that was missing.

The policy ships as `iam-policy.json` beside this module; `ec2-executor policy` prints it and
the README's "Permissions" section explains it. CloudFormation acts with the caller's own
rights (no service role), so the policy covers what the stack creates as well as the
executor's direct calls.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

POLICY_FILE = Path(__file__).with_name("iam-policy.json")
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


def policy_text() -> str:
    return POLICY_FILE.read_text()


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
