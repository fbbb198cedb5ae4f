"""Helpers for the end-to-end tests (imported by the test modules; `tests/e2e` is on sys.path)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from harness import MotoServer, generate_ed25519_keypair

E2E_IDLE_SECONDS = 20
"""The Covalent server's expiry of an idle warm instance (`EC2_EXECUTOR_IDLE_SECONDS`)."""
LIVE_INSTANCE_STATES = frozenset({"pending", "running", "stopping", "stopped", "shutting-down"})


def assert_nothing_left(moto_server: MotoServer) -> None:
    """No stack but DELETE_COMPLETE ones, no live instance, no security group but the defaults."""
    cloudformation = moto_server.client("cloudformation")
    stacks = [
        (summary["StackName"], summary["StackStatus"])
        for page in cloudformation.get_paginator("list_stacks").paginate()
        for summary in page["StackSummaries"]
    ]
    assert [s for s in stacks if s[1] != "DELETE_COMPLETE"] == [], stacks

    ec2 = moto_server.client("ec2")
    instances = [
        (instance["InstanceId"], instance["State"]["Name"])
        for page in ec2.get_paginator("describe_instances").paginate()
        for reservation in page["Reservations"]
        for instance in reservation["Instances"]
    ]
    assert [i for i in instances if i[1] in LIVE_INSTANCE_STATES] == [], instances

    groups = [
        (group["GroupId"], group["GroupName"], group["VpcId"])
        for group in ec2.describe_security_groups()["SecurityGroups"]
    ]
    assert [g for g in groups if g[1] != "default"] == [], groups


def installed_version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def write_ssh_key(path: Path) -> str:
    """An unencrypted ed25519 private key at `path` (mode 600); returns the public line."""
    pair = generate_ed25519_keypair(comment=path.stem)
    path.write_text(pair.private_openssh)
    path.chmod(0o600)
    return pair.public_openssh


def node_result(result: Any, name: str) -> dict[str, Any]:
    """`Result.get_node_result` of the one node called `name`."""
    graph = result.lattice.transport_graph
    found = [
        node_id for node_id in graph._graph.nodes if graph.get_node_value(node_id, "name") == name
    ]
    assert len(found) == 1, (name, found)
    return dict(result.get_node_result(found[0]))


def overlap(first: tuple[float, float], second: tuple[float, float]) -> float:
    """Seconds during which both intervals (start, end) were open (<= 0: none)."""
    return min(first[1], second[1]) - max(first[0], second[0])
