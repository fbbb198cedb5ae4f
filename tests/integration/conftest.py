from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def remote_cache(tmp_path: Path) -> str:
    return str(tmp_path / "remote-cache")
