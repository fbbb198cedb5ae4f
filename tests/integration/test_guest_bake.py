"""A baked image is a machine of its own: a real-boot guest bootstraps, `bake.sh` readies it
as `ec2-executor bake` does, the guest powers off, and a second guest boots from the root the
first one left (tests/harness/guests.py, `writable_root`). The root holds none of the first
instance's keys, ids or state; the second guest makes its own, and its pinned host key is the
one the executor connects with."""

from __future__ import annotations

from pathlib import Path

import pytest
from guest_stack import USER, Deployed, deploy
from harness import GuestBoot, GuestInstance, GuestNetwork, LoopbackNetwork, MotoServer
from harness import writable_root as baked_root

from cdk_stacks.user_data import HOST_KEY_PATH, package_file
from ec2_executor.errors import RemoteError
from ec2_executor.remote import RemoteHost

pytestmark = pytest.mark.guest

BAKE = package_file("bake.sh").read_bytes()
FACTS = {
    "machine_id": "cat /etc/machine-id",
    "host_keys": "cat /etc/ssh/ssh_host_*_key.pub",
    "instances": "ls /var/lib/cloud/instances",
    "authorized": "cat ~/.ssh/authorized_keys",
    "idle_watch": 'ps -o args= -p "$(cat /opt/ec2-executor/idle.pid)"',
}
"""What belongs to one instance, read on the guest over SSH."""


def _facts(remote: RemoteHost) -> dict[str, str]:
    found = {}
    for name, command in FACTS.items():
        status, out, err = remote.execute(command)
        assert status == 0, (name, err)
        found[name] = out.decode().strip()
    return found


def _boot_one(
    boot: GuestBoot, moto: MotoServer, subnet: LoopbackNetwork, net: GuestNetwork, name: str
) -> tuple[Deployed, GuestInstance]:
    ingress = f"{net.gateway}/32"
    deployed = deploy(moto, subnet, name, minutes=60, ingress=ingress, idle_minutes=30)
    return deployed, boot.wait_ready(deployed.instance_id)


def _end(boot: GuestBoot, moto: MotoServer, deployed: Deployed) -> None:
    moto.client("cloudformation").delete_stack(StackName=deployed.stack)
    boot.wait_stopped(deployed.instance_id, timeout=120)


def test_a_guest_booted_from_a_baked_root_has_keys_ids_and_state_of_its_own(
    moto_server: MotoServer,
    guest_image: Path,
    guest_net: GuestNetwork,
    guest_subnet: LoopbackNetwork,
    template_cache: Path,
    tmp_path: Path,
) -> None:
    with baked_root(guest_image, tmp_path / "image") as root:
        # Boot, bake, power off: what the guest wrote stays in `root`.
        baker = GuestBoot(
            moto_server.url,
            image=root,
            network=guest_net,
            base_dir=tmp_path / "a",
            writable=True,
            keys=moto_server.keys,
        )
        with baker:
            first, guest = _boot_one(baker, moto_server, guest_subnet, guest_net, "guest-baker")
            with first.remote(guest) as remote:
                assert remote.try_connect()
                before = _facts(remote)
                status, _, err = remote.execute("bash -s --", stdin=BAKE)
                assert status == 0, err.decode()
            _end(baker, moto_server, first)
        baker.raise_errors()

        # What the bake left of the first instance: nothing of its own.
        assert (root / "etc/machine-id").read_bytes() == b""
        assert not list((root / "etc/ssh").glob("ssh_host_*"))
        assert not (root / HOST_KEY_PATH.lstrip("/")).exists()
        assert not (root / f"home/{USER}/.ssh/authorized_keys").exists()
        assert not (root / "var/lib/cloud/instances").exists()
        prefix = root / "opt/ec2-executor"
        assert not list(prefix.glob("*.pid")) and not (prefix / "worker").exists()
        assert not (prefix / "ready").exists()
        assert (prefix / "venv/bin/python").exists()  # what the bake is for stays

        # A second instance of that root.
        booted = GuestBoot(
            moto_server.url,
            image=root,
            network=guest_net,
            base_dir=tmp_path / "b",
            keys=moto_server.keys,
        )
        with booted:
            second, guest = _boot_one(booted, moto_server, guest_subnet, guest_net, "guest-baked")
            impostor = second.remote(guest, first.host.public_key())
            with impostor, pytest.raises(RemoteError, match="other than the one pinned"):
                impostor.try_connect()  # the baker's host key is gone ...
            with second.remote(guest) as remote:
                assert remote.try_connect()  # ... and the new instance's pinned one answers
                after = _facts(remote)
            _end(booted, moto_server, second)
        booted.raise_errors()

    assert len(after["machine_id"]) == 32 and after["machine_id"] != before["machine_id"]
    assert after["host_keys"] and after["host_keys"] != before["host_keys"]
    assert after["instances"].split() == [second.instance_id]
    assert after["authorized"].splitlines() == [second.client.public_openssh]
    assert "idle-watch.sh" in after["idle_watch"]  # its own idle watch, from its own pid file
    assert before["instances"].split() == [first.instance_id]
    assert first.client.public_openssh in before["authorized"]
