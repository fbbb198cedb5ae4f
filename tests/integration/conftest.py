from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import LoopbackNetwork

from ec2_executor.logs import log

if TYPE_CHECKING:
    from executor_support import NewExecutor

    from ec2_executor.ec2 import EC2Executor


@pytest.fixture
def remote_cache(tmp_path: Path) -> str:
    return str(tmp_path / "remote-cache")


@pytest.fixture
def package_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Our records reach caplog: they go to Covalent's logger, which does not propagate."""
    log.addHandler(caplog.handler)
    log.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        log.removeHandler(caplog.handler)
        log.setLevel(logging.NOTSET)


@pytest.fixture
def new_executor(loopback_network: LoopbackNetwork, remote_cache: str) -> NewExecutor:
    """Makes `EC2Executor`s with the local settings (the loopback subnet, private address, a
    port of its own each); keywords override them."""
    # Not at import: importing covalent reads its config, which tests/e2e/conftest.py points
    # at temporary directories first when both directories run in one session.
    from executor_support import harness_options

    from ec2_executor.ec2 import EC2Executor

    def make(**overrides: Any) -> EC2Executor:
        options = harness_options(loopback_network.subnet_id, remote_cache, **overrides)
        return EC2Executor(**options)

    return make
