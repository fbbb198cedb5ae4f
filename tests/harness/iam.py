"""IAM enforced on the moto server in this process: an admin for the harness's own calls, and
a user holding the executor's policy for the executor under test.

moto checks no credentials by default. Its switch (`moto.settings.INITIAL_NO_AUTH_ACTION_COUNT`:
the first N requests go unchecked, every later one is checked) is read at each request, so
setting it to 0 makes the threaded server of `MotoServer.start` check every request's signature
and IAM permission from then on. Users and their keys are written straight into moto's IAM
backend, with fixed keys, and again after every reset (a reset forgets IAM as well): the
environment the executor and a Covalent server read stays valid for the whole session.

moto compares each request with the resource "*": a statement whose `Resource` is an ARN never
matches there, so the executor's user holds the policy `everywhere` makes. moto evaluates no
condition either (it has no request context to compare them with): the policy's tag conditions
are proven statically, not here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from .moto import REGION, Keys, MotoServer

ADMIN = "harness-admin"
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
EXECUTOR_USER = "scientist"
"""The user the executor under test signs as (the name the fault proxy's refusals give)."""


@dataclass(frozen=True)
class User:
    """An IAM user moto knows from the start: its name, inline policy and fixed access key."""

    name: str
    policy: dict[str, Any]
    keys: Keys


ADMIN_USER = User(ADMIN, ADMIN_POLICY, Keys("AKIAHARNESSADMIN0001", "harness-admin-secret-key"))


def enforce_iam(server: MotoServer, executor_policy: dict[str, Any]) -> Keys:
    """Make moto (in this process, where `server` runs) check IAM on every request from now on.

    The harness's own calls (`server.keys`) become an admin's; the returned keys are those of
    `EXECUTOR_USER`, who holds `executor_policy` and nothing else.
    """
    executor = User(EXECUTOR_USER, executor_policy, Keys("AKIAEXECUTORUSER0001", "executor-secret"))
    _keep_users(ADMIN_USER, executor)
    # It logs every checked request's parameters (secrets among them) at DEBUG: AWS's side of
    # the wire, not the executor's logs, which tests search for secrets.
    logging.getLogger("moto.iam.access_control").setLevel(logging.WARNING)
    from moto import settings

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # type: ignore[assignment]
    server.keys = ADMIN_USER.keys
    return executor.keys


def everywhere(policy: dict[str, Any]) -> dict[str, Any]:
    """`policy` with each Allow statement's `Resource` widened to "*": moto matches every request
    against "*", so an Allow scoped to an ARN would refuse what it grants on AWS. A Deny keeps
    its resources (widened, it would refuse more than it does on AWS)."""
    statements = [
        {**statement, "Resource": "*"} if statement["Effect"] == "Allow" else statement
        for statement in policy["Statement"]
    ]
    return {**policy, "Statement": statements}


def user_with_policy(server: MotoServer, name: str, policy: dict[str, Any]) -> Keys:
    """A further user holding `policy` (inline) and nothing else, made through the API as the
    admin (gone at the next reset); its access key."""
    iam = server.client("iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Keys(key["AccessKeyId"], key["SecretAccessKey"])


def _keep_users(*users: User) -> None:
    """Create `users` in moto's IAM now and after every reset (moto's reset forgets them)."""
    from moto.moto_api._internal.models import MotoAPIBackend

    original = getattr(MotoAPIBackend.reset, "resets_without_users", MotoAPIBackend.reset)

    def reset(backend: MotoAPIBackend) -> None:
        original(backend)
        _create(users)

    reset.resets_without_users = original  # type: ignore[attr-defined]
    MotoAPIBackend.reset = reset  # type: ignore[method-assign]
    _create(users)


def _create(users: tuple[User, ...]) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends

    backend = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for user in users:
        if user.name in backend.users:
            continue
        backend.create_user(region_name=REGION, user_name=user.name)
        backend.put_user_policy(user.name, user.name, json.dumps(user.policy))
        key = backend.create_access_key(user.name)
        # moto draws key ids at random; fixed ones keep every copy of the environment valid.
        del backend.access_keys[key.access_key_id]
        key.access_key_id = user.keys.access_key_id
        key.secret_access_key = user.keys.secret_access_key
        backend.access_keys[key.access_key_id] = key
