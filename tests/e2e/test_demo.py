"""The README's first command: the demo runs the seed's example end to end and cleans up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
DEMO = Path(__file__).resolve().parents[1] / "demo.py"


def test_the_demo_prints_a_score_and_its_phases_and_leaves_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "COVALENT_"))}
    env["HOME"] = str(tmp_path)  # no AWS account here: the demo must pick the local run
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # and nothing may ask 169.254.169.254
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    done = subprocess.run(
        [sys.executable, str(DEMO)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "using a local moto server" in done.stdout
    score = float(re.search(r"^score: ([\d.]+)", done.stdout, re.M)[1])  # type: ignore[index]
    assert 0.0 <= score <= 1.0
    for phase in ("plan", "create stack", "wait for SSH", "upload, run, fetch", "delete stack"):
        assert re.search(rf"^  {re.escape(phase)}\s+\d+\.\d\ds$", done.stdout, re.M), phase
    assert "stacks left behind: 0" in done.stdout
    assert list(scratch.iterdir()) == []  # the demo removed what it made
