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
PHASES_HEADER = "executor phases (from the Covalent server's log):"
PHASE_LINE = re.compile(r"  (\S.*?) +(\d+\.\d\d)s")
PHASES = (
    "plan",
    "template",
    "create stack",
    "wait for SSH",
    "bootstrap",
    "upload, run, fetch",
    "delete stack",
)
"""The phases of one cold electron, which the section must list (others may come and go)."""


def phases_section(stdout: str) -> dict[str, float]:
    """The lines under the phases header, up to the next blank line: each a phase and its
    seconds, or the test fails."""
    lines = stdout.splitlines()
    assert PHASES_HEADER in lines, stdout
    section = lines[lines.index(PHASES_HEADER) + 1 :]
    section = section[: section.index("")] if "" in section else section
    matches = [PHASE_LINE.fullmatch(line) for line in section]
    assert all(matches), section
    return {m[1]: float(m[2]) for m in matches if m}


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
    phases = phases_section(done.stdout)
    assert set(PHASES) <= set(phases), phases
    assert "stacks left behind: 0" in done.stdout
    # What the same run would have cost on AWS: the electron's cost line, priced at t2.micro's
    # on-demand rate (the catalog's: moto has no Price List API), and a total.
    cost = done.stdout.split("what the same run would have cost on AWS", 1)[1]
    assert re.search(r"ec2-executor-\S+: cost \$\d+\.\d{4}", cost), cost
    assert "t2.micro on-demand $0.0116/h (catalog of " in cost
    assert re.search(r"^  total: \$\d+\.\d{4}$", cost, re.M), cost
    assert list(scratch.iterdir()) == []  # the demo removed what it made
