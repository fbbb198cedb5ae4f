"""Benchmarks of ec2-executor on this machine. `python -m bench` runs them all and rewrites
BENCHMARKS.md; each one also runs alone (`python -m bench.synth`, ...) and prints its section.

Everything runs on loopback, on the test harness (tests/harness/: a moto server, emulated boots
with a real sshd per instance); the only other traffic is the package registry, once, for the
SSH plugin's venv.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
# `harness` and `integration.executor_support` are imported the way the tests import them.
for _path in (str(REPO), str(TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
