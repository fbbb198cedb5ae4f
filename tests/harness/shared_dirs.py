"""Temporary directories another user can reach, for the tests that run something as `nobody`.

Neither the checkout nor pytest's `tmp_path` will do: a clone made in a `mktemp -d` directory is
its owner's alone, and so is `/tmp/pytest-of-<user>`.
"""

from __future__ import annotations

import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = "nobody"
"""The unprivileged user those tests run as."""


@contextmanager
def shared_temp_dir() -> Iterator[Path]:
    """A fresh directory (mode 755) under a parent every user can pass through; removed after."""
    with tempfile.TemporaryDirectory(dir=_reachable_parent()) as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def _reachable_parent() -> str:
    """The temp directory when every directory above it lets others pass, else /tmp: TMPDIR
    may be private (the demo's test points it into its own `tmp_path`)."""
    here = Path(tempfile.gettempdir()).resolve()
    if all(p.stat().st_mode & stat.S_IXOTH for p in (here, *here.parents)):
        return str(here)
    return "/tmp"
