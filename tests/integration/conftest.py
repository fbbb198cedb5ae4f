from __future__ import annotations

from pathlib import Path

import pytest
from harness import current_site_packages


@pytest.fixture
def boot_python_path() -> str | None:
    """Emulated instances see this venv's packages, like an image with covalent preinstalled."""
    return current_site_packages()


@pytest.fixture
def remote_cache(tmp_path: Path) -> str:
    return str(tmp_path / "remote-cache")
