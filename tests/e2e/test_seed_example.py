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

import covalent as ct
import pytest
from e2e_support import assert_nothing_left, write_ssh_key
from harness import EmulatedBoot, MotoServer
from harness.covalent_server import CovalentServer
from seed_example import installed_pins, make_experiment

pytestmark = pytest.mark.e2e


# --- the test --------------------------------------------------------------------------------


def test_seed_usage_example(
    covalent_server: CovalentServer,
    emulated_boot: EmulatedBoot,
    moto_server: MotoServer,
    local_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "ec2_key"
    public_key = write_ssh_key(key_file)
    ec2 = moto_server.client("ec2")
    # The seed's prerequisite: an EC2 key pair named after the key file ("ec2_key").
    ec2.import_key_pair(KeyName="ec2_key", PublicKeyMaterial=public_key.encode())
    try:
        executor = ct.executor.EC2Executor(
            instance_type="t2.micro",
            volume_size=8,  # GiB
            ssh_key_file=str(key_file),  # default key_name will be "ec2_key"
            **local_settings,
        )
        run_experiment = make_experiment(executor, installed_pins("numpy", "scikit-learn"))

        # Dispatch the workflow
        dispatch_id = ct.dispatch(run_experiment)(C=1.0, gamma=0.7)
        # Wait for our result (with a deadline: ct.get_result(wait=True) has none)
        result = covalent_server.wait_for_result(dispatch_id, timeout=300)
    finally:
        ec2.delete_key_pair(KeyName="ec2_key")

    assert str(result.status) == "COMPLETED", (result.status, result.error)
    score = result.result
    print(score)
    assert isinstance(score, float)
    assert 0.0 <= score <= 1.0

    assert [record.booted for record in emulated_boot.instances] == [True]
    assert_nothing_left(moto_server)
