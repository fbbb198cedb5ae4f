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
from typing import Any

import pytest
from e2e_support import assert_nothing_left, run_seed_example
from harness import EmulatedBoot, MotoServer
from harness.covalent_server import CovalentServer

pytestmark = pytest.mark.e2e


# --- the test --------------------------------------------------------------------------------


def test_seed_usage_example(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    score = run_seed_example(
        covalent_server, moto_server, tmp_path / "ec2_key", local_settings, timeout=300
    )
    print(score)
    assert [record.booted for record in emulated_boot.instances] == [True]
    assert_nothing_left(moto_server)
