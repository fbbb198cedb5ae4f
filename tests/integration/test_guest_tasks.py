"""Tasks through the executor on real guests (tests/harness/guests.py): a task that prints, one
that raises, a guest terminated mid-task; and the lifetime watchdog powering a guest off."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from covalent._shared_files.exceptions import TaskRuntimeError
from executor_support import execute, guest_options, run
from guest_stack import PORT, assert_guest_gone, deploy
from harness import (
    GuestBoot,
    GuestNetwork,
    LoopbackNetwork,
    MotoServer,
    NetworkGuard,
    NetworkGuardError,
    create_guest_subnet,
    guest_network,
)
from harness.guests import moto_state
from remote_tasks import boom, noisy, sleepy

from ec2_executor import ConnectionLostError
from ec2_executor.ec2 import EC2Executor

pytestmark = pytest.mark.guest
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_a_task_that_prints(
    guest_boot: GuestBoot, guest_subnet: LoopbackNetwork, guest_net: GuestNetwork
) -> None:
    ex = EC2Executor(**guest_options(guest_subnet.subnet_id, guest_net.gateway))
    assert run(execute(ex, noisy, [], {})) == "done"
    assert ex.task_stdout.getvalue() == "to stdout\nfrom a child process\n"
    assert ex.task_stderr.getvalue() == "to stderr\n"
    [guest] = guest_boot.guests
    guest_boot.wait_stopped(guest.instance_id, timeout=120)  # the stack's deletion ends it
    assert guest.stop_reason is not None and guest.stop_reason.startswith("instance is")


def test_a_task_that_raises(
    guest_boot: GuestBoot, guest_subnet: LoopbackNetwork, guest_net: GuestNetwork
) -> None:
    ex = EC2Executor(**guest_options(guest_subnet.subnet_id, guest_net.gateway))
    with pytest.raises(TaskRuntimeError, match=r"^The task raised ValueError: boom \(on "):
        run(execute(ex, boom, [], {}))
    stderr = ex.task_stderr.getvalue()
    assert ", in boom" in stderr
    assert "ValueError: boom" in stderr


def test_a_guest_terminated_mid_task_fails_the_electron_naming_it(
    guest_boot: GuestBoot,
    guest_subnet: LoopbackNetwork,
    guest_net: GuestNetwork,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ec2_executor.watch.INSTANCE_POLL", 0.5)
    ex = EC2Executor(**guest_options(guest_subnet.subnet_id, guest_net.gateway))

    async def terminate_while_running() -> None:
        task = asyncio.ensure_future(execute(ex, sleepy, [120], {}))
        while not guest_boot.guests:
            await asyncio.sleep(0.2)
        guest = guest_boot.guests[0]
        await asyncio.to_thread(guest_boot.wait_ready, guest.instance_id)
        await asyncio.sleep(3)  # the task is running now
        moto_server.client("ec2").terminate_instances(InstanceIds=[guest.instance_id])
        with pytest.raises(ConnectionLostError, match=guest.instance_id):
            await task

    run(terminate_while_running())
    [guest] = guest_boot.guests
    guest_boot.wait_stopped(guest.instance_id, timeout=120)  # and the guest is shut down
    assert guest.stop_reason is not None and guest.stop_reason.startswith("instance is")


# --- the lifetime watchdog, on a network of its own ----------------------------------------------


def test_the_lifetime_watchdog_powers_the_guest_off_and_nothing_is_left(
    moto_server: MotoServer,
    guest_image: Path,
    network_guard: NetworkGuard,
    template_cache: Path,
    tmp_path: Path,
) -> None:
    """MaxLifetimeMinutes=1 (the stack's minimum; the executor's option starts at 5): the
    guest powers itself off, moto shows the instance terminated, and once the network is
    removed nothing of it is left on this machine."""
    ec2 = moto_server.client("ec2")
    with guest_network(network_guard) as network:
        subnet = create_guest_subnet(ec2, network)
        keys = moto_server.keys
        boot = GuestBoot(
            moto_server.url, image=guest_image, network=network, base_dir=tmp_path, keys=keys
        )
        with boot:
            deployed = deploy(
                moto_server, subnet, "guest-lifetime", minutes=1, ingress=f"{network.gateway}/32"
            )
            guest = boot.wait_ready(deployed.instance_id)
            stopped = boot.wait_stopped(deployed.instance_id, timeout=180)
            assert stopped.stop_reason == "the guest powered itself off"
            lived = time.monotonic() - guest.seen_running_at
            assert 55 < lived < 120, lived
            # The template says terminate (tests/unit/test_electron_stack.py); moto's stack
            # instances ignore InstanceInitiatedShutdownBehavior and report "stop".
            assert moto_state(ec2, deployed.instance_id) in ("stopped", "terminated")
            moto_server.client("cloudformation").delete_stack(StackName=deployed.stack)
        boot.raise_errors()
        assert_guest_gone(guest)
    assert not Path(f"/sys/class/net/{network.bridge}").exists()
    assert not list(Path("/run/netns").glob(f"{network.bridge}-*"))
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert network.bridge not in tables
    with pytest.raises(NetworkGuardError):  # the guard admits the subnet no more
        network_guard.check(socket.AF_INET, (network.gateway, PORT), "after the network")
    network_guard.take_violations()
