from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from ec2_executor.logs import log


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
