"""The seed's usage example end to end on a real boot: a real Covalent server's EC2Executor
deploys its stack in moto, and `train_svm` runs on a Debian guest booted by systemd-nspawn with
Debian's cloud-init reading the stack's user data (tests/harness/guests.py).

As in test_seed_example.py, the workflow's code is the page's; the executor gets the guests'
settings (their subnet, the image's user) besides the page's options. The guest has no network:
its image holds the pins `DepsPip` asks for, so pip finds them installed, as on a baked image.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import assert_nothing_left, run_seed_example
from harness import GuestBoot, GuestNetwork, LoopbackNetwork, MotoServer
from harness.covalent_server import CovalentServer
from integration.executor_support import guest_options

pytestmark = [pytest.mark.e2e, pytest.mark.guest]


def test_seed_usage_example_on_a_real_guest(
    covalent_server: CovalentServer,
    guest_subnet: LoopbackNetwork,
    guest_net: GuestNetwork,
    guest_boot: GuestBoot,
    moto_server: MotoServer,
    tmp_path: Path,
) -> None:
    settings = guest_options(guest_subnet.subnet_id, guest_net.gateway)
    run_seed_example(covalent_server, moto_server, tmp_path / "ec2_key", settings, timeout=600)
    [guest] = guest_boot.guests
    assert guest.booted
    guest_boot.wait_stopped(guest.instance_id, timeout=120)  # the stack's deletion ended it
    assert_nothing_left(moto_server)
