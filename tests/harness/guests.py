"""Real instance boots: each instance moto runs becomes a Debian guest under `systemd-nspawn`.

`GuestBoot` is an `EmulatedBoot` (the same polling of moto, records and waits) whose boot is
real. For each instance it sees running it

* writes a NoCloud seed whose `user-data` is the instance's user data exactly as moto stored it
  (CloudFormation's substitutions applied) and starts `guest_run.sh`: systemd as the guest's
  PID 1, Debian's cloud-init reading the seed, sshd, the bootstrap from `runcmd`, the lifetime
  timer from `bootcmd`, all the guest's own;
* gives the guest the instance's private address (moto's, from the guests' subnet) in a network
  namespace on the bridge `GuestNetwork` made, which reaches nothing but this machine's address
  on that bridge (`guest_network.sh`);
* counts it booted once its sshd answers, and its bootstrap done once `ready` or `failed`
  appears under `/opt/ec2-executor` (read through `/proc/<guest PID 1>/root`).

An instance that stops being running in moto has its guest shut down (SIGTERM to nspawn, which
powers the guest off; its PID 1 is killed only if that hangs). A guest that powers itself off
is stopped or terminated in moto, as its `InstanceInitiatedShutdownBehavior` says.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .boot import BootedInstance, BootError, EmulatedBoot
from .moto import REGION, TESTING_KEYS, Keys, LoopbackNetwork, route_out
from .netguard import NetworkGuard
from .processes import alive
from .userdata import parse_user_data

log = logging.getLogger("harness.guests")

HERE = Path(__file__).resolve().parent
NETWORK_SCRIPT = HERE / "guest_network.sh"
RUN_SCRIPT = HERE / "guest_run.sh"
GUEST_RANGE = ipaddress.IPv4Network("10.251.0.0/16")
"""Each test run takes a free /24 of it (bridge `ec2g<N>`, subnet 10.251.N.0/24)."""
GUEST_PREFIX = "/opt/ec2-executor"
GUEST_METADATA_PORT = 8169
"""Where a guest's spot notice watch asks for the notice: its own loopback, on this port (a
stand-in that `metadata_stand_in` starts), never 169.254.169.254."""
SYSTEM_CONF = f"""[Manager]
DefaultEnvironment=EC2_EXECUTOR_METADATA=http://127.0.0.1:{GUEST_METADATA_PORT}
"""
"""The guest's systemd drop-in: every service, cloud-init's bootstrap too, gets the setting."""


def guest_support() -> str | None:
    """Why this machine cannot boot guests (one line), or None when it can."""
    if os.geteuid() != 0:
        return "real-guest tests need root (systemd-nspawn, a bridge, nftables)"
    tools = {
        "systemd-nspawn": "systemd-container",
        "mmdebstrap": "mmdebstrap",
        "nft": "nftables",
        "ip": "iproute2",
    }
    for tool, package in tools.items():
        if shutil.which(tool) is None:
            return f"real-guest tests need {tool} (Debian package {package}; .ci/run installs it)"
    return None


def _script(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BootError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass(frozen=True)
class GuestNetwork:
    """The bridge `ec2g<N>` with this machine's address 10.251.N.1 in the guests' subnet."""

    bridge: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @classmethod
    def create(cls) -> GuestNetwork:
        """Take the first /24 of `GUEST_RANGE` whose bridge does not exist (another test run
        may hold one), and make it."""
        for index, subnet in enumerate(GUEST_RANGE.subnets(new_prefix=24)):
            network = cls(f"ec2g{index}", subnet)
            if Path("/sys/class/net", network.bridge).exists():
                continue
            try:
                _script(str(NETWORK_SCRIPT), "up", network.bridge, f"{network.gateway}/24")
            except BootError:
                network.remove()  # taken by a run that got there first, or half made
                if Path("/sys/class/net", network.bridge).exists():
                    continue
                raise
            return network
        raise BootError(f"no free /24 left in {GUEST_RANGE} for a guest bridge")

    def attach(self, address: str) -> str:
        """A network namespace holding `address` on the bridge; returns its path."""
        return _script(str(NETWORK_SCRIPT), "attach", self.bridge, f"{address}/24")

    def detach(self, address: str) -> None:
        _script(str(NETWORK_SCRIPT), "detach", self.bridge, address)

    def remove(self) -> None:
        _script(str(NETWORK_SCRIPT), "down", self.bridge)


@contextlib.contextmanager
def guest_network(guard: NetworkGuard | None = None) -> Iterator[GuestNetwork]:
    """A `GuestNetwork` for the block; the network guard admits its subnet meanwhile."""
    network = GuestNetwork.create()
    if guard is not None:
        guard.allow(str(network.subnet))
    try:
        yield network
    finally:
        if guard is not None:
            guard.revoke(str(network.subnet))
        network.remove()


@dataclass(eq=False)
class GuestInstance(BootedInstance):
    """A booted guest: its files are read through its PID 1's root."""

    name: str = ""
    nspawn: subprocess.Popen[bytes] | None = None
    leader: int | None = None
    """The guest's PID 1, as this machine numbers it."""
    ssh_at: float | None = None
    ready_at: float | None = None
    """`time.monotonic()` when the bootstrap's `ready` (or `failed`) was first seen."""

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.leader}/root")

    @property
    def prefix(self) -> Path:
        return self.root / GUEST_PREFIX.lstrip("/")

    @property
    def bootstrap_output(self) -> Path:
        return self.root / "var/log/cloud-init-output.log"

    @property
    def sshd_log(self) -> Path:
        """The guest's console (systemd's and cloud-init's messages)."""
        return self.workdir / "console.log"


class GuestBoot(EmulatedBoot):
    """Boots every instance moto runs as a real guest; see the module docstring."""

    def __init__(
        self,
        endpoint_url: str,
        *,
        image: Path,
        network: GuestNetwork,
        base_dir: Path | None = None,
        boot_timeout: float = 180.0,
        stop_timeout: float = 60.0,
        keys: Keys = TESTING_KEYS,
        writable: bool = False,
    ) -> None:
        super().__init__(endpoint_url, base_dir=base_dir, keys=keys, poll_interval=0.5)
        self.rootfs = image
        self.writable = writable
        """Boot `image` itself, keeping what the guests write (`writable_root` makes one);
        else each guest writes to a throw-away overlay."""
        self.network = network
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout

    @property
    def guests(self) -> list[GuestInstance]:
        return [record for record in self.instances if isinstance(record, GuestInstance)]

    def poll_once(self) -> None:
        """Also: a guest that powered itself off is stopped or terminated in moto."""
        with self._poll_lock:
            for record in self.guests:
                process = record.nspawn
                if record.booted and not record.stopped and process and process.poll() is not None:
                    # First in moto, then here: waits end at the record.
                    self.cloud.power_off(record.instance_id, as_configured=True)
                    self._stop_instance(record, "the guest powered itself off")
            super().poll_once()

    def _powered_itself_off(self, record: BootedInstance) -> bool:
        """A guest writes the same file, then shuts down for real: its systemd's exit (above)
        says so, and moto hears of it only then, as from EC2."""
        if isinstance(record, GuestInstance):
            return False
        return super()._powered_itself_off(record)

    def wait_ready(self, instance_id: str, timeout: float = 180.0) -> GuestInstance:
        """Wait until the guest's bootstrap wrote `ready` (BootError if it wrote `failed`)."""
        record = self.wait_bootstrap(instance_id, timeout)
        assert isinstance(record, GuestInstance)
        if record.bootstrap_returncode != 0:
            raise BootError(f"{instance_id}: bootstrap failed: {_read(record.failed_file)}")
        return record

    # -- boot ---------------------------------------------------------------------------------

    def _boot(self, instance_id: str, private_ip: str | None) -> None:
        assert self.base_dir is not None
        record = GuestInstance(
            instance_id=instance_id,
            private_ip=private_ip or "",
            workdir=self.base_dir / instance_id,
            marker=instance_id,
            seen_running_at=time.monotonic(),
            name=f"{self.network.bridge}-{(private_ip or '0').rsplit('.', 1)[-1]}",
        )
        self.log.add(record)
        if not self._attempt(record, lambda _: self._boot_guest(record)):
            return
        self.log.mark_booted(record, at=record.ssh_at)
        log.info("guest %s: sshd on %s after %.1f s", instance_id, private_ip, record.boot_seconds)
        threading.Thread(
            target=self._watch_bootstrap, args=(record,), name=f"guest-{instance_id}", daemon=True
        ).start()

    def _boot_guest(self, record: GuestInstance) -> None:
        address = record.private_ip
        if not address or ipaddress.ip_address(address) not in self.network.subnet:
            raise BootError(
                f"private IP {address!r} is not in the guests' subnet "
                f"{self.network.subnet}; launch the instance in the guest network's subnet"
            )
        user_data = self.cloud.user_data(record.instance_id)
        record.spec = parse_user_data(user_data)
        record.port = record.spec.port
        self._start_guest(record, user_data)
        self._wait_ssh(record)

    def _start_guest(self, record: GuestInstance, user_data: bytes) -> None:
        seed = record.workdir / "seed"
        seed.mkdir(parents=True)
        (seed / "user-data").write_bytes(user_data)
        hostname = "ip-" + record.private_ip.replace(".", "-")
        (seed / "meta-data").write_text(
            f"instance-id: {record.instance_id}\nlocal-hostname: {hostname}\n"
        )
        conf = record.workdir / "system.conf"
        conf.write_text(SYSTEM_CONF)
        netns = self.network.attach(record.private_ip)
        command = [str(RUN_SCRIPT), "start", record.name, str(self.rootfs), netns, str(seed)]
        command += [str(conf)] + (["writable"] if self.writable else [])
        with open(record.sshd_log, "ab") as console:
            record.nspawn = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ssh(self, record: GuestInstance) -> None:
        """Until sshd answers with its banner (the guest's boot up to `ssh.service`)."""
        assert record.nspawn is not None and record.port is not None
        deadline = record.seen_running_at + self.boot_timeout
        while time.monotonic() < deadline:
            if record.nspawn.poll() is not None:
                raise BootError(
                    f"the guest exited ({record.nspawn.returncode}) before sshd answered; "
                    f"console:\n{record.sshd_log_tail()}"
                )
            if record.leader is None:
                record.leader = _guest_pid1(record.nspawn.pid)
            if _answers_ssh(record.private_ip, record.port):
                record.ssh_at = time.monotonic()
                return
            time.sleep(0.2)
        raise BootError(
            f"sshd on {record.private_ip}:{record.port} not answering after "
            f"{self.boot_timeout:.0f} s; console:\n{record.sshd_log_tail()}"
        )

    def _watch_bootstrap(self, record: GuestInstance) -> None:
        """`bootstrap_done` once the guest's bootstrap wrote `ready` (0) or `failed` (1)."""
        while not record.stopped:
            for path, code in ((record.ready_file, 0), (record.failed_file, 1)):
                if path.exists():
                    record.ready_at = time.monotonic()
                    record.bootstrap_returncode = code
                    record.bootstrap_done.set()
                    self.log.notify()
                    return
            time.sleep(0.2)
        record.bootstrap_done.set()
        self.log.notify()

    # -- end ----------------------------------------------------------------------------------

    def _end_processes(self, record: BootedInstance) -> None:
        """Power the guest off (SIGTERM to nspawn); kill its PID 1 only if that hangs (never
        SIGKILL nspawn: the guest would live on). Then its namespace and cgroups go."""
        assert isinstance(record, GuestInstance)
        process = record.nspawn
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("guest %s: no power-off after SIGTERM; killing its PID 1", record.name)
                if record.leader is not None and alive(record.leader):
                    os.kill(record.leader, signal.SIGKILL)
                process.wait(30)
        if record.private_ip:
            self.network.detach(record.private_ip)
        if record.name:
            _script(str(RUN_SCRIPT), "clean", record.name)


@contextlib.contextmanager
def metadata_stand_in(guest: GuestInstance, notices: Path) -> Iterator[None]:
    """The spot notice's stand-in (tests/harness/metadata.py) inside the guest's network
    namespace, on its own loopback; `metadata.issue_notice(notices, ...)` issues the notice."""
    notices.mkdir(parents=True, exist_ok=True)
    command = ["ip", "netns", "exec", guest.name, sys.executable, "-m", "harness.metadata"]
    server = subprocess.Popen(
        [*command, str(GUEST_METADATA_PORT), str(notices)],
        cwd=HERE.parent,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield
    finally:
        server.terminate()
        server.wait(30)


def _answers_ssh(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2) as connection:
            return connection.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _guest_pid1(nspawn: int) -> int | None:
    """The child of nspawn that is PID 1 in its own PID namespace."""
    for task in Path(f"/proc/{nspawn}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in task.read_text().split():
                status = Path(f"/proc/{child}/status").read_text()
                nspid = [line for line in status.splitlines() if line.startswith("NSpid:")]
                if nspid and nspid[0].split()[-1] == "1":
                    return int(child)
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError as error:
        return f"({error})"


@contextlib.contextmanager
def writable_root(image: Path, workdir: Path) -> Iterator[Path]:
    """A root to boot with `GuestBoot(writable=True)`: an overlay over the cached `image`
    (which stays untouched), whose writes land in `workdir/upper` and outlive the guest, so
    another guest can boot from what the first one left."""
    upper, work, merged = workdir / "upper", workdir / "work", workdir / "root"
    for directory in (upper, work, merged):
        directory.mkdir(parents=True)
    layers = f"lowerdir={image},upperdir={upper},workdir={work}"
    _script("mount", "-t", "overlay", "overlay", "-o", layers, str(merged))
    try:
        yield merged
    finally:
        _script("umount", str(merged))


@contextlib.contextmanager
def guest_booting(
    moto_url: str,
    *,
    image: Path,
    network: GuestNetwork,
    base_dir: Path,
    keys: Keys = TESTING_KEYS,
) -> Iterator[GuestBoot]:
    """A `GuestBoot` for one test: every guest ended after it; boot errors raised then.
    `keys`: the harness's credentials (an admin's where moto enforces IAM)."""
    boot = GuestBoot(moto_url, image=image, network=network, base_dir=base_dir, keys=keys)
    with boot:
        yield boot
    boot.raise_errors()


def describe(record: BootedInstance) -> str:
    """For failure reports: where the guest got to, and its console's tail."""
    return (
        f"ip {record.private_ip}:{record.port}, booted {record.booted}, stopped "
        f"{record.stop_reason}, error {record.error}\n--- console:\n{record.sshd_log_tail(40)}"
    )


def create_guest_subnet(ec2: Any, network: GuestNetwork) -> LoopbackNetwork:
    """A VPC over `GUEST_RANGE` and a subnet on the bridge's /24: moto gives its instances
    10.251.N.4, .5, ..., the addresses the guests then get. Both are reused when moto has them
    already (one VPC for every guest network: moto, like AWS, allows 5 VPCs per region)."""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": [str(GUEST_RANGE)]}])["Vpcs"]
    if vpcs:
        vpc_id = vpcs[0]["VpcId"]
    else:
        vpc_id = ec2.create_vpc(CidrBlock=str(GUEST_RANGE))["Vpc"]["VpcId"]
        route_out(ec2, vpc_id)  # in moto only: the guests' own network reaches nothing
    subnets = ec2.describe_subnets(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "cidr-block", "Values": [str(network.subnet)]},
        ]
    )["Subnets"]
    subnet_id = (
        subnets[0]["SubnetId"]
        if subnets
        else ec2.create_subnet(
            VpcId=vpc_id, CidrBlock=str(network.subnet), AvailabilityZone=f"{REGION}a"
        )["Subnet"]["SubnetId"]
    )
    return LoopbackNetwork(
        vpc_id=vpc_id,
        subnet_id=subnet_id,
        vpc_cidr=str(GUEST_RANGE),
        subnet_cidr=str(network.subnet),
    )


def moto_state(ec2: Any, instance_id: str) -> str:
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])
