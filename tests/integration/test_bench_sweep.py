"""The sweep benchmark's code works: a smoke run (1 and 4 electrons, a short timeline) of
`python -m bench.sweep`, as `make bench` runs it, writes a section whose figures add up. Its
timing is the benchmark's business, not this test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_smoke_sweep_completes_every_electron_and_reports_each_size(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    command = [sys.executable, "-m", "bench.sweep", "--sizes", "1,4", "--scale", "0.1"]
    done = subprocess.run(
        [*command, "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=500
    )
    assert done.returncode == 0, done.stderr[-3000:]
    section = json.loads(out.read_text())
    results = section["data"]["results"]
    assert [r["electrons"] for r in results] == [1, 4]
    for result in results:
        n = result["electrons"]
        assert result["failures"] == []
        assert result["completed"] == n
        assert all(not found for found in result["left"].values()), result["left"]
        actions = [call[1] for call in result["calls"]]
        assert actions.count("CreateStack") == n
        assert actions.count("DeleteStack") == n
        assert len(result["instances"]) == n
    assert "| 1 electron(s) | 4 electron(s) |" in section["table"]
    assert {t["name"] for t in section["targets"]} >= {
        "electrons failed, resources left",
        "CreateStack within CloudFormation's bucket (5/s, burst 10)",
    }
    failed = next(t for t in section["targets"] if t["name"].startswith("electrons failed"))
    assert failed["passed"] is True
