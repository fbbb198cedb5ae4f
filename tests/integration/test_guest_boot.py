"""The product's stack and user data on a real boot: a Debian guest under systemd-nspawn, with
Debian's cloud-init reading the user data exactly as moto rendered it (tests/harness/guests.py).

What only a real boot shows: cloud-init accepts the user data, sshd offers the pinned key and
no other, the lifetime timer is armed, and the bootstrap's warm worker outlives cloud-final.
One guest serves every check here (they only read); its own GuestBoot ends with the module,
before another module boots guests from the same moto.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from guest_stack import PORT, USER, Deployed, assert_guest_gone, deploy
from harness import GuestBoot, GuestInstance, GuestNetwork, LoopbackNetwork, MotoServer

from ec2_executor import RemoteError
from ec2_executor.access import KeyPair

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def one_guest(
    moto_server: MotoServer,
    guest_image: Path,
    guest_net: GuestNetwork,
    guest_subnet: LoopbackNetwork,
    template_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Deployed, GuestInstance]]:
    """One stack, its guest booted and its bootstrap ready, for the read-only checks."""
    base = tmp_path_factory.mktemp("one-guest")
    boot = GuestBoot(
        moto_server.url, image=guest_image, network=guest_net, base_dir=base, keys=moto_server.keys
    )
    with boot:
        deployed = deploy(
            moto_server,
            guest_subnet,
            "guest-checks",
            minutes=120,
            ingress=f"{guest_net.gateway}/32",
        )
        guest = boot.wait_ready(deployed.instance_id)
        yield deployed, guest
        moto_server.client("cloudformation").delete_stack(StackName=deployed.stack)
        boot.wait_stopped(deployed.instance_id, timeout=120)
        assert_guest_gone(guest)
    boot.raise_errors()


@pytest.mark.parametrize("kind", ["ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256"])
def test_sshd_offers_no_host_key_but_the_pinned_one(
    one_guest: tuple[Deployed, GuestInstance], kind: str
) -> None:
    _, guest = one_guest
    with pytest.raises(paramiko.SSHException, match=r"[Ii]ncompatible"):
        _host_key_of_kind(guest.private_ip, kind)


def test_sshd_offers_the_pinned_ed25519_key(one_guest: tuple[Deployed, GuestInstance]) -> None:
    deployed, guest = one_guest
    offered = _host_key_of_kind(guest.private_ip, "ssh-ed25519")
    assert offered == deployed.host.public_key()


def _host_key_of_kind(address: str, kind: str) -> paramiko.PKey:
    transport = paramiko.Transport((address, PORT))
    try:
        transport.get_security_options().key_types = (kind,)
        transport.start_client(timeout=15)
        return transport.get_remote_server_key()
    finally:
        transport.close()


def test_a_wrong_host_key_is_refused(one_guest: tuple[Deployed, GuestInstance]) -> None:
    deployed, guest = one_guest
    impostor = deployed.remote(guest, KeyPair.generate().public_key())
    with impostor, pytest.raises(RemoteError, match="host key other than the one pinned"):
        impostor.try_connect()
    with deployed.remote(guest) as pinned:
        assert pinned.try_connect()


def test_bootstrap_marker_and_warm_worker_outlive_cloud_init(
    one_guest: tuple[Deployed, GuestInstance],
) -> None:
    deployed, guest = one_guest
    script = (
        "cloud-init status --wait >/dev/null; cloud-init status | sed -n 's/^status: //p'; "
        "cat /opt/ec2-executor/ready; "
        "pid=$(cat /opt/ec2-executor/worker/pid); ps -o user=,args= -p $pid; "
        "systemctl is-active ec2-executor-worker.service cloud-final.service; "
        "systemctl show -P NextElapseUSecMonotonic ec2-executor-lifetime.timer"
    )
    with deployed.remote(guest) as remote:
        assert remote.try_connect()
        status, out, err = remote.execute(script)
    lines = out.decode().splitlines()
    assert status == 0, (out, err)
    assert lines[0] == "done"  # cloud-final has ended ...
    assert lines[1] == "/opt/ec2-executor/venv/bin/python"  # ... the marker names the venv
    user, worker = lines[2].split(None, 1)  # ... and the worker lives on, as the SSH user,
    assert (user, worker.split()[1:3]) == (USER, ["/opt/ec2-executor/runner.py", "--serve"])
    assert lines[3:5] == ["active", "active"]  # in a unit of its own
    assert lines[5]  # the lifetime timer is armed
