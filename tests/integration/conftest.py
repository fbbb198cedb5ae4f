from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdk_stacks.user_data import bootstrap_script_path
from harness import current_site_packages


@pytest.fixture
def boot_python_path() -> str | None:
    """Emulated instances see this venv's packages, like an image with covalent preinstalled."""
    return current_site_packages()


@pytest.fixture(scope="session")
def _image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv the real bootstrap builds (offline, over this venv's packages), built once."""
    prefix = tmp_path_factory.mktemp("image")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    from importlib.metadata import version as dist

    subprocess.run(
        [
            "bash",
            str(bootstrap_script_path()),
            "--python",
            version,
            "--covalent",
            dist("covalent"),
            "--cloudpickle",
            dist("cloudpickle"),
            "--prefix",
            str(prefix),
        ],
        env={
            **os.environ,
            "EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1",
            "PYTHONPATH": current_site_packages(),
        },
        check=True,
        capture_output=True,
    )
    return prefix / "venv"


@pytest.fixture
def boot_image_venv(_image_venv: Path) -> Path:
    return _image_venv


@pytest.fixture
def remote_cache(tmp_path: Path) -> str:
    return str(tmp_path / "remote-cache")
