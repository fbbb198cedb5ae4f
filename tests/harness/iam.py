"""A moto server that enforces IAM, an admin user for the harness's own calls, and users that
hold a given policy.

moto checks no credentials by default. Its switch (`INITIAL_NO_AUTH_ACTION_COUNT`: the first
N requests go unchecked, every later one is checked) is read once per process, so the server
runs in a process of its own, beside the session's. Its first requests create the admin user
and its key, so the server comes up with an admin and nothing else.

moto compares each request with the resource "*": a statement whose `Resource` is an ARN
never matches there (see `harness.iam.everywhere`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .moto import TESTING_KEYS, Keys, MotoServer
from .net import free_port

ADMIN = "harness-admin"
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
BOOTSTRAP_REQUESTS = 3
"""Unchecked requests: create the admin, grant it everything, make its key."""
_TESTS_DIR = Path(__file__).resolve().parent.parent


def start_iam_moto() -> MotoServer:
    """A moto server (with the harness's fidelity fix) that enforces IAM, and whose `keys`
    are the admin's."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.moto", "-H", "127.0.0.1", "-p", str(port)],
        cwd=_TESTS_DIR,
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(BOOTSTRAP_REQUESTS)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        process.terminate()
        process.wait(timeout=10)

    server = MotoServer(host="127.0.0.1", port=port, _stop=stop)
    try:
        _wait_for_port(port, process)
        server.keys = _admin_keys(server)
    except BaseException:
        stop()
        raise
    return server


def user_with_policy(server: MotoServer, name: str, policy: dict[str, Any]) -> Keys:
    """A user holding `policy` (inline) and nothing else; its access key."""
    iam = server.client("iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    return _access_key(iam, name)


def everywhere(policy: dict[str, Any]) -> dict[str, Any]:
    """`policy` with each statement's `Resource` widened to "*": moto matches every request
    against "*", so an Allow scoped to an ARN would refuse what it grants on AWS."""
    statements = [{**statement, "Resource": "*"} for statement in policy["Statement"]]
    return {**policy, "Statement": statements}


def _admin_keys(server: MotoServer) -> Keys:
    """The admin, made with the unchecked requests (exactly BOOTSTRAP_REQUESTS of them)."""
    assert server.keys == TESTING_KEYS  # no user exists yet to sign with
    return user_with_policy(server, ADMIN, ADMIN_POLICY)


def _access_key(iam: Any, user: str) -> Keys:
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return Keys(key["AccessKeyId"], key["SecretAccessKey"])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode} before it listened")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"moto server on port {port} did not listen within {timeout:.0f} s")
