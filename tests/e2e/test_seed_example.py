"""The seed's usage example (ec2-executor-seed.rst, "2. Usage Example"), dispatched to a real
Covalent server whose EC2Executor deploys its stack in moto and runs `train_svm` on an emulated
instance.

Differences from the page, and why: the pins are the versions installed here (the instance is
emulated on this machine and must not install anything), the key file is a generated one, and
the executor also gets the local settings (loopback subnet, private address, our user and port).
The workflow's code is the page's, line for line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import E2E, run_seed_example

pytestmark = pytest.mark.e2e


# --- the test --------------------------------------------------------------------------------


def test_seed_usage_example(e2e: E2E, tmp_path: Path) -> None:
    score = run_seed_example(e2e.server, e2e.moto, tmp_path / "ec2_key", e2e.settings, timeout=300)
    print(score)
    assert [record.booted for record in e2e.boot.instances] == [True]
    e2e.assert_nothing_left()
