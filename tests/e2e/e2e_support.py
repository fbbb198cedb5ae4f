"""Helpers for the end-to-end tests (imported by the test modules; `tests/e2e` is on sys.path)."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import EmulatedBoot, KeyPair, MotoServer
from harness.cloud_state import assert_nothing_left
from harness.covalent_server import CovalentServer

__all__ = ["assert_nothing_left"]  # the same check as the integration tests'

E2E_IDLE_SECONDS = 20
"""The Covalent server's expiry of an idle warm instance (`EC2_EXECUTOR_IDLE_SECONDS`)."""
RESULT_TIMEOUT = 300.0
"""How long a dispatch may take to end (a loaded machine boots slowly)."""


@dataclass(frozen=True)
class E2E:
    """What an end-to-end test works with: the Covalent server it dispatches to, the emulated
    boot of its instances, moto, and the local settings of an `EC2Executor` built in the test."""

    server: CovalentServer
    boot: EmulatedBoot
    moto: MotoServer
    settings: dict[str, Any]

    def executor(self, **overrides: Any) -> Any:
        """`ct.executor.EC2Executor` with the local settings (a port of its own)."""
        import covalent as ct  # not at import: conftest points covalent at temporary dirs first

        return ct.executor.EC2Executor(**{**self.settings, **overrides})

    def run(self, workflow: Any, *args: Any) -> Any:
        """Dispatch the lattice and return its final result."""
        import covalent as ct

        return self.result(ct.dispatch(workflow)(*args))

    def result(self, dispatch_id: str) -> Any:
        return self.server.wait_for_result(dispatch_id, RESULT_TIMEOUT)

    def assert_nothing_left(self) -> None:
        assert_nothing_left(self.moto)


def installed_version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def write_ssh_key(path: Path) -> str:
    """An unencrypted ed25519 private key at `path` (mode 600); returns the public line."""
    pair = KeyPair.generate(comment=path.stem)
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


def run_seed_example(
    server: CovalentServer,
    moto: MotoServer,
    key_file: Path,
    settings: dict[str, Any],
    timeout: float,
) -> float:
    """The seed's usage example through `server`: the page's options and workflow, plus the
    `settings` of where the instance is (a loopback subnet, a guest's bridge). Its score."""
    import covalent as ct  # not at import: conftest points covalent at temporary dirs first
    from seed_example import installed_pins, make_experiment

    public_key = write_ssh_key(key_file)
    ec2 = moto.client("ec2")
    # The seed's prerequisite: an EC2 key pair named after the key file.
    ec2.import_key_pair(KeyName=key_file.name, PublicKeyMaterial=public_key.encode())
    try:
        executor = ct.executor.EC2Executor(
            instance_type="t2.micro",
            volume_size=8,  # GiB
            ssh_key_file=str(key_file),  # default key_name will be "ec2_key"
            **settings,
        )
        run_experiment = make_experiment(executor, installed_pins("numpy", "scikit-learn"))
        # Dispatch the workflow, then wait with a deadline (ct.get_result(wait=True) has none)
        dispatch_id = ct.dispatch(run_experiment)(C=1.0, gamma=0.7)
        result = server.wait_for_result(dispatch_id, timeout=timeout)
    finally:
        ec2.delete_key_pair(KeyName=key_file.name)
    assert str(result.status) == "COMPLETED", (result.status, result.error)
    score = result.result
    assert isinstance(score, float)
    assert 0.0 <= score <= 1.0
    return score
