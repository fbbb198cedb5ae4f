"""The test guests' root filesystem: built once by `guest_image.sh`, cached on disk.

Keyed by its recipe (the script, the Python packages baked in and the versions this venv pins),
so a change to any of them builds a new image and nothing stale is ever booted. The cache lives
in `$EC2_EXECUTOR_TEST_CACHE` (default `~/.cache/ec2-executor-tests`); the build takes about two
minutes and needs the package registries, a cached image is used as it is.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("guest_image.sh")
BAKED = ("covalent", "cloudpickle", "numpy", "scikit-learn")
"""What the bootstrap would install, and the seed example's `DepsPip` (the guests are offline)."""


def cache_root() -> Path:
    default = Path.home() / ".cache" / "ec2-executor-tests"
    return Path(os.environ.get("EC2_EXECUTOR_TEST_CACHE", default)).expanduser()


def recipe() -> tuple[str, str]:
    """(requirements, constraints): the baked packages at this venv's versions, and every
    version this venv pins, so the guest's covalent has the same dependencies as ours."""
    requirements = "".join(f"{name}=={importlib.metadata.version(name)}\n" for name in BAKED)
    pins = {
        f"{dist.metadata['Name'].lower()}=={dist.version}\n"
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"] and dist.metadata["Name"].lower() != "ec2-executor"
    }
    return requirements, "".join(sorted(pins))


def image_key() -> str:
    requirements, constraints = recipe()
    digest = hashlib.sha256(SCRIPT.read_bytes())
    digest.update(requirements.encode() + b"\0" + constraints.encode())
    return digest.hexdigest()[:16]


def guest_image(root: Path | None = None) -> Path:
    """The image directory, built first if the cache has none for this recipe."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    image = root / f"guest-{image_key()}"
    with open(root / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building the same image
        if not image.is_dir():
            _build(image)
    return image


def _build(image: Path) -> None:
    work = image.with_name(f".{image.name}.building")
    shutil.rmtree(work, ignore_errors=True)
    requirements, constraints = recipe()
    (work.parent / f"{work.name}.req").write_text(requirements)
    (work.parent / f"{work.name}.con").write_text(constraints)
    try:
        subprocess.run(
            [
                str(SCRIPT),
                str(work),
                sys.executable,
                str(work.parent / f"{work.name}.req"),
                str(work.parent / f"{work.name}.con"),
            ],
            check=True,
        )
        work.rename(image)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for suffix in (".req", ".con"):
            (work.parent / f"{work.name}{suffix}").unlink(missing_ok=True)
    for old in image.parent.glob("guest-*"):  # earlier recipes: never booted again
        if old != image:
            shutil.rmtree(old, ignore_errors=True)
