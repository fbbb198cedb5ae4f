"""The seed's usage example end to end on a real boot: a real Covalent server's EC2Executor
deploys its stack in moto, and `train_svm` runs on a Debian guest booted by systemd-nspawn with
Debian's cloud-init reading the stack's user data (tests/harness/guests.py).

As in test_seed_example.py, the workflow's code is the page's; the executor gets the guests'
settings (their subnet, the image's user) besides the page's options. The guest has no network:
its image holds the pins `DepsPip` asks for, so pip finds them installed, as on a baked image.
"""

from __future__ import annotations

from pathlib import Path

import covalent as ct
import pytest
from e2e_support import assert_nothing_left, write_ssh_key
from harness import GuestBoot, GuestNetwork, LoopbackNetwork, MotoServer
from harness.covalent_server import CovalentServer
from integration.executor_support import guest_options
from seed_example import installed_pins, make_experiment

pytestmark = [pytest.mark.e2e, pytest.mark.guest]


def test_seed_usage_example_on_a_real_guest(
    covalent_server: CovalentServer,
    guest_subnet: LoopbackNetwork,
    guest_net: GuestNetwork,
    guest_boot: GuestBoot,
    moto_server: MotoServer,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "ec2_key"
    public_key = write_ssh_key(key_file)
    ec2 = moto_server.client("ec2")
    ec2.import_key_pair(KeyName="ec2_key", PublicKeyMaterial=public_key.encode())
    try:
        executor = ct.executor.EC2Executor(
            instance_type="t2.micro",
            volume_size=8,  # GiB
            ssh_key_file=str(key_file),  # default key_name will be "ec2_key"
            **guest_options(guest_subnet.subnet_id, guest_net.gateway),
        )
        run_experiment = make_experiment(executor, installed_pins("numpy", "scikit-learn"))

        dispatch_id = ct.dispatch(run_experiment)(C=1.0, gamma=0.7)
        result = covalent_server.wait_for_result(dispatch_id, timeout=600)
    finally:
        ec2.delete_key_pair(KeyName="ec2_key")

    assert str(result.status) == "COMPLETED", (result.status, result.error)
    score = result.result
    assert isinstance(score, float)
    assert 0.0 <= score <= 1.0

    [guest] = guest_boot.guests
    assert guest.booted
    guest_boot.wait_stopped(guest.instance_id, timeout=120)  # the stack's deletion ended it
    assert_nothing_left(moto_server)
