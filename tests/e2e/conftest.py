"""End-to-end fixtures: a real Covalent server whose EC2Executor talks to the moto server, and
emulated instance boots.

The covalent client of the test process uses temporary directories (`covalent_paths`, from
tests/conftest.py), and so does the server.

Session-wide (a Covalent server takes seconds to start): one moto VPC/subnet on loopback, whose
id goes into the server's `[executors.ec2]` section before it starts, and the server itself.
Per test: an emulated boot (moto is not reset between e2e tests; each test checks that it left
nothing behind instead).
"""

from __future__ import annotations

import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import E2E, E2E_IDLE_SECONDS
from harness import (
    BootedInstance,
    EmulatedBoot,
    Image,
    LoopbackNetwork,
    MotoServer,
    booting,
    create_loopback_network,
)
from harness.covalent_server import (
    CovalentPaths,
    CovalentServer,
    point_client_at,
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, show the server log's tail and each emulated instance's logs."""
    report = yield
    if not report.failed:
        return report
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    server = funcargs.get("covalent_server")
    if isinstance(server, CovalentServer):
        report.sections.append(
            (f"covalent server log ({server.paths.server_log}, tail)", server.log_tail(120))
        )
    boot = funcargs.get("emulated_boot") or funcargs.get("guest_boot")
    if isinstance(boot, EmulatedBoot):
        for record in boot.instances:
            report.sections.append((f"instance {record.instance_id}", _describe(record)))
    return report


def _describe(record: BootedInstance) -> str:
    return (
        f"ip {record.private_ip}:{record.port}, booted {record.booted}, stopped "
        f"{record.stop_reason}, error {record.error}\n"
        f"--- sshd log:\n{record.sshd_log_tail(20)}\n"
        f"--- bootstrap output:\n{record.bootstrap_output_tail(20)}"
    )


# --- AWS side -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def e2e_network(moto_server: MotoServer) -> LoopbackNetwork:
    """The loopback VPC/subnet for the whole e2e session (its id is in the server's config)."""
    moto_server.reset()
    return create_loopback_network(moto_server.client("ec2"))


@pytest.fixture(scope="session")
def remote_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`remote_cache` on the emulated instances (they are this machine)."""
    return tmp_path_factory.mktemp("remote-cache")


@pytest.fixture(scope="session")
def ec2_settings(e2e_network: LoopbackNetwork, remote_cache: Path) -> dict[str, Any]:
    """The local settings, as the server's `[executors.ec2]` section holds them."""
    from integration.executor_support import harness_options

    return harness_options(e2e_network.subnet_id, str(remote_cache))


@pytest.fixture
def local_settings(e2e_network: LoopbackNetwork, remote_cache: Path) -> dict[str, Any]:
    """The local settings for an `EC2Executor(...)` built in a test (a port of its own)."""
    from integration.executor_support import harness_options

    return harness_options(e2e_network.subnet_id, str(remote_cache))


# --- Covalent -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def covalent_server(
    covalent_paths: CovalentPaths,
    moto_server: MotoServer,
    ec2_settings: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CovalentServer]:
    """A real `covalent start` server for the session, dispatched to by this process.

    Its environment points boto3 at the moto server and the template cache at a temporary
    directory; `[executors.ec2]` holds `ec2_settings`.
    """
    env = {
        **moto_server.env,
        "EC2_EXECUTOR_CACHE_DIR": str(tmp_path_factory.mktemp("ec2-executor-cache")),
        # Warm instances (keep_warm_minutes > 0) expire after seconds, not minutes.
        "EC2_EXECUTOR_IDLE_SECONDS": str(E2E_IDLE_SECONDS),
    }
    server = CovalentServer.start(covalent_paths, env=env, executors={"ec2": ec2_settings})
    try:
        point_client_at(server)
        yield server
    finally:
        server.stop()
        if server.killed_after_stop:
            warnings.warn(
                "`covalent stop` left processes behind (killed): "
                + "; ".join(server.killed_after_stop),
                stacklevel=1,
            )


# --- instances ------------------------------------------------------------------------------


@pytest.fixture
def emulated_boot(
    moto_server: MotoServer, e2e_network: LoopbackNetwork, boot_image: Image, tmp_path: Path
) -> Iterator[EmulatedBoot]:
    """Boots every instance moto runs during the test (no moto reset: the network is shared)."""
    instances = tmp_path / "instances"
    with booting(
        moto_server.url, image=boot_image, base_dir=instances, keys=moto_server.keys
    ) as boot:
        yield boot


@pytest.fixture
def e2e(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
) -> E2E:
    return E2E(covalent_server, emulated_boot, moto_server, local_settings)
