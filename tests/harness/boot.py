"""Emulated EC2 instance boots on loopback.

`EmulatedBoot` polls a moto server (`describe_instances`, every `poll_interval` seconds). For each
instance it sees `running` for the first time it does what cloud-init would do with the product's
user data, inside a temporary directory per instance and without touching the system:

* parse the user data (`harness.userdata.parse_user_data`),
* start a real OpenSSH server (`sshd -D -e`) on the instance's private IP (moto assigns 127.0.2.x
  in the loopback subnet) and the user data's port, with the user data's host key and authorized
  keys; SSH sessions get `EC2_EXECUTOR_PREFIX=<instance dir>/opt` (and `PYTHONPATH` when
  `python_path` is given) through sshd's `SetEnv`,
* once sshd listens, run the user data's bootstrap script (the `runcmd` entry that runs a
  `write_files` file) with the same arguments plus `--prefix <instance dir>/opt`, in the
  background, its output going to `<instance dir>/cloud-init-output.log`.

`bootcmd` (which arms `shutdown`) is never run, and the bootstrap's idle power-off runs a command
that does nothing (`EC2_EXECUTOR_POWEROFF`); the harness honours the file it writes
(`<prefix>/poweroff`) as EC2 would a power-off with `InstanceInitiatedShutdownBehavior:
terminate`: it terminates the instance in moto. When an instance stops being `running`
(terminated, stopped, or gone after a moto reset) its sshd, its SSH sessions and whatever they or
the bootstrap left running are terminated, like a real instance going away.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import importlib.util
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from .moto import TESTING_KEYS, Keys
from .processes import pids_with_env, terminate
from .userdata import BootSpec, UserDataError, parse_user_data

log = logging.getLogger("harness.boot")

PRIVSEP_DIR = Path("/run/sshd")
MARKER_ENV = "EC2_EXECUTOR_HARNESS_INSTANCE"
"""Set in every process of an emulated instance (SSH sessions and bootstrap), so that the harness
can find and end them when the instance goes away, even after they were orphaned."""

_LISTENING = "Server listening on"


class BootError(RuntimeError):
    """An emulated instance could not be booted (bad user data, sshd failed, ...)."""


def current_site_packages(packages: tuple[str, ...] = ("ec2_executor",)) -> str:
    """A `python_path` that emulates an image with this interpreter's packages preinstalled.

    PYTHONPATH entries get no `.pth` processing, so editable installs (this project's own
    `ec2_executor`, whose `covalent.executor.executor_plugins` entry point covalent imports on
    `import covalent`) would be visible as metadata but not importable: the directories holding
    `packages` are added as well.
    """
    paths = sysconfig.get_paths()
    entries = [paths["purelib"], paths["platlib"]]
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        locations = list(spec.submodule_search_locations or ())
        if locations:
            entries.append(str(Path(locations[0]).parent))
        elif spec.origin:
            entries.append(str(Path(spec.origin).parent))
    return os.pathsep.join(dict.fromkeys(entries))


def _find_sshd() -> str:
    found = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin")
    if not found:
        raise BootError(
            "OpenSSH server (sshd) not found: install openssh-server ('make test' and "
            "'make demo' do so on Debian and Ubuntu)"
        )
    return str(Path(found).resolve())  # sshd re-executes itself: needs an absolute path


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(eq=False)
class BootedInstance:
    """One emulated instance, as far as the harness knows it."""

    instance_id: str
    private_ip: str
    workdir: Path
    marker: str
    seen_running_at: float
    """`time.monotonic()` when the harness first saw the instance running."""
    spec: BootSpec | None = None
    port: int | None = None
    sshd: subprocess.Popen[bytes] | None = None
    booted_at: float | None = None
    """`time.monotonic()` when its sshd was listening."""
    image_id: str = ""
    baked_image: bool | None = None
    """Whether the instance's image carries `ec2-executor bake`'s tags (None: not looked up,
    when the harness has no `install_delay`)."""
    install_seconds: float = 0.0
    """The emulated installs the bootstrap paid before it started (0 on a baked image)."""
    bootstrap_started_at: float | None = None
    """`time.monotonic()` when the bootstrap process started."""
    bootstrap: subprocess.Popen[bytes] | None = None
    bootstrap_returncode: int | None = None
    bootstrap_done: threading.Event = field(default_factory=threading.Event, repr=False)
    stopped_at: float | None = None
    stop_reason: str | None = None
    error: str | None = None
    frozen: list[int] = field(default_factory=list)
    """sshd processes stopped with SIGSTOP (`EmulatedBoot.freeze_sshd`)."""

    @property
    def prefix(self) -> Path:
        """Where the bootstrap installs (`--prefix`); `EC2_EXECUTOR_PREFIX` in SSH sessions."""
        return self.workdir / "opt"

    @property
    def sshd_log(self) -> Path:
        return self.workdir / "sshd.log"

    @property
    def sshd_config(self) -> Path:
        return self.workdir / "sshd_config"

    @property
    def bootstrap_output(self) -> Path:
        """stdout/stderr of the bootstrap (cloud-init's /var/log/cloud-init-output.log)."""
        return self.workdir / "cloud-init-output.log"

    @property
    def bootstrap_log(self) -> Path:
        """The log the bootstrap script itself writes."""
        return self.prefix / "bootstrap.log"

    @property
    def ready_file(self) -> Path:
        return self.prefix / "ready"

    @property
    def failed_file(self) -> Path:
        return self.prefix / "failed"

    @property
    def booted(self) -> bool:
        """sshd is (or was, until `stopped`) listening."""
        return self.booted_at is not None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    @property
    def boot_seconds(self) -> float | None:
        """From first seen running to sshd listening."""
        return None if self.booted_at is None else self.booted_at - self.seen_running_at

    def sshd_log_tail(self, lines: int = 40) -> str:
        return _tail(self.sshd_log, lines)

    def bootstrap_output_tail(self, lines: int = 40) -> str:
        return _tail(self.bootstrap_output, lines)


class EmulatedBoot:
    """Boots every instance moto runs; see the module docstring. Start it, or use `with`."""

    def __init__(
        self,
        endpoint_url: str,
        *,
        python_path: str | None = None,
        base_dir: Path | str | None = None,
        poll_interval: float = 0.2,
        region: str = "us-east-1",
        sshd_path: str | None = None,
        bootstrap_env: dict[str, str] | None = None,
        image_venv: Path | None = None,
        sshd_start_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        boot_delay: float = 0.0,
        bootstrap_delay: float = 0.0,
        install_delay: float = 0.0,
        keys: Keys = TESTING_KEYS,
    ) -> None:
        """
        python_path: exported as PYTHONPATH to the bootstrap and to SSH sessions (emulates an
            image with covalent preinstalled); see `current_site_packages()`.
        base_dir: where instance directories go (default: a new temporary directory, removed by
            `stop()` unless an instance failed to boot).
        bootstrap_env: extra variables for the bootstrap's environment.
        image_venv: a ready venv the image already holds at `<prefix>/venv` (linked in before
            the real bootstrap runs, which then takes its idempotent fast path).
        boot_delay: seconds from an instance's first sighting as running to its sshd starting
            (an instance's boot; 0 boots at once).
        bootstrap_delay: seconds between sshd listening and the bootstrap starting (a slow
            install); read at each boot, so a test may set it on a running harness.
        install_delay: seconds the bootstrap's installs take (Python, venv, covalent) on an
            instance whose image is not a baked one: one that moto knows with the tags
            `ec2-executor bake` puts on it (`ec2_executor.cloud.images.TAG`). Added to
            `bootstrap_delay`; read at each boot. The emulated image holds the environment
            either way (`image_venv`), so the bootstrap itself takes its fast path.
        keys: the credentials the harness reads and terminates instances with (an admin's,
            on a moto server that enforces IAM).
        """
        self.endpoint_url = endpoint_url
        self.python_path = python_path
        self.poll_interval = poll_interval
        self.region = region
        self.sshd_path = sshd_path or _find_sshd()
        self.bootstrap_env = dict(bootstrap_env or {})
        self.image_venv = image_venv
        self.sshd_start_timeout = sshd_start_timeout
        self.stop_timeout = stop_timeout
        self.boot_delay = boot_delay
        self.bootstrap_delay = bootstrap_delay
        self.install_delay = install_delay
        self.keys = keys
        self._first_seen: dict[str, float] = {}
        self._owns_base_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self._records: dict[str, BootedInstance] = {}
        self._errors: list[str] = []
        self._cond = threading.Condition()
        self._poll_lock = threading.RLock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self.last_poll_error: str | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> EmulatedBoot:
        if self._thread is not None:
            raise RuntimeError("EmulatedBoot already started")
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="ec2-harness-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._client = boto3.session.Session().client(
            "ec2",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.keys.access_key_id,
            aws_secret_access_key=self.keys.secret_access_key,
        )
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, name="emulated-boot", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling, then end every instance still running (sshd, sessions, bootstrap)."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        with self._poll_lock:
            for record in self.instances:
                self._stop_instance(record, "harness stopped")
        if self._owns_base_dir and self.base_dir is not None and not self._errors:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EmulatedBoot:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests use -----------------------------------------------------------------------

    @property
    def instances(self) -> list[BootedInstance]:
        with self._cond:
            return list(self._records.values())

    def get(self, instance_id: str) -> BootedInstance:
        with self._cond:
            return self._records[instance_id]

    @property
    def booted_count(self) -> int:
        """Instances whose sshd came up (including ones stopped since)."""
        return sum(1 for record in self.instances if record.booted)

    @property
    def stopped_count(self) -> int:
        """Booted instances whose sshd has been stopped."""
        return sum(1 for record in self.instances if record.booted and record.stopped)

    @property
    def running_count(self) -> int:
        return sum(1 for record in self.instances if record.booted and not record.stopped)

    @property
    def errors(self) -> list[str]:
        with self._cond:
            return list(self._errors)

    def clear_errors(self) -> list[str]:
        """Return and forget boot errors (for tests that provoke one)."""
        with self._cond:
            errors, self._errors = self._errors, []
        return errors

    def raise_errors(self) -> None:
        errors = self.errors
        if errors:
            raise BootError("emulated boot failed:\n" + "\n\n".join(errors))

    def wait_booted(self, instance_id: str, timeout: float = 30.0) -> BootedInstance:
        """Wait until the instance's sshd listens. Raises BootError if its boot failed."""

        def settled(record: BootedInstance | None) -> bool:
            return record is not None and (record.booted or record.error is not None)

        record = self._wait_for(instance_id, settled, timeout, "to boot")
        if record.error is not None:
            raise BootError(record.error)
        return record

    def wait_stopped(self, instance_id: str, timeout: float = 15.0) -> BootedInstance:
        """Wait until the harness has stopped the instance (after it stopped being running)."""
        return self._wait_for(
            instance_id, lambda r: r is not None and r.stopped, timeout, "to stop"
        )

    def wait_bootstrap(self, instance_id: str, timeout: float = 60.0) -> BootedInstance:
        """Wait until the instance's bootstrap process has exited (`bootstrap_returncode`)."""
        record = self.wait_booted(instance_id, timeout)
        if record.spec is not None and record.spec.bootstrap_script is None:
            raise BootError(f"{instance_id}: the user data runs no bootstrap")
        remaining = max(0.0, timeout - (time.monotonic() - record.seen_running_at))
        if not record.bootstrap_done.wait(remaining):
            raise TimeoutError(
                f"{instance_id}: bootstrap still running after {timeout:.0f} s; output tail:\n"
                + record.bootstrap_output_tail()
            )
        return record

    def freeze_sshd(self, instance_id: str) -> list[int]:
        """SIGSTOP the instance's sshd processes (listener and connections), not the task: the
        connection goes silent, as over a dropped route. Returns the frozen pids."""
        record = self.get(instance_id)
        if record.sshd is None:
            raise BootError(f"{instance_id} has no sshd to freeze")
        table = _proc_table()
        pids = [record.sshd.pid] + [
            pid for pid in _descendants(record.sshd.pid, table) if _command(pid).startswith("sshd")
        ]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        record.frozen.extend(pids)
        return pids

    def thaw_sshd(self, instance_id: str) -> None:
        _thaw(self.get(instance_id))

    def poll_once(self) -> None:
        """One poll of moto, synchronously (the background thread does this continuously)."""
        with self._poll_lock:
            states = self._describe()
            if states is None:
                return
            for record in self.instances:
                if record.stopped:
                    continue
                known = states.get(record.instance_id)
                if known is None:
                    self._stop_instance(record, "no longer known to moto (reset?)")
                elif known[0] != "running":
                    self._stop_instance(record, f"instance is {known[0]}")
                elif record.booted and (record.prefix / "poweroff").exists():
                    self._power_off(record)
            now = time.monotonic()
            running = {i: ip for i, (state, ip) in states.items() if state == "running"}
            for instance_id in running:
                self._first_seen.setdefault(instance_id, now)
            new = [
                (instance_id, private_ip)
                for instance_id, private_ip in running.items()
                if instance_id not in self._records
                and now - self._first_seen[instance_id] >= self.boot_delay
            ]
            if new:  # instances launched together boot together, as on EC2
                with concurrent.futures.ThreadPoolExecutor(len(new)) as pool:
                    list(pool.map(lambda found: self._boot(*found), new))

    # -- internals ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("emulated boot: poll failed")
            self._stop_event.wait(self.poll_interval)

    def _wait_for(
        self,
        instance_id: str,
        predicate: Any,
        timeout: float,
        what: str,
    ) -> BootedInstance:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                record = self._records.get(instance_id)
                if predicate(record):
                    assert record is not None
                    return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    known = ", ".join(self._records) or "none"
                    raise TimeoutError(
                        f"{instance_id} did not get {what} within {timeout:.0f} s "
                        f"(instances seen: {known}; last poll error: {self.last_poll_error})"
                    )
                self._cond.wait(min(remaining, 0.5))

    def _describe(self) -> dict[str, tuple[str, str | None]] | None:
        states: dict[str, tuple[str, str | None]] = {}
        try:
            for page in self._client.get_paginator("describe_instances").paginate():
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        states[instance["InstanceId"]] = (
                            instance["State"]["Name"],
                            instance.get("PrivateIpAddress"),
                        )
        except (BotoCoreError, ClientError) as error:
            message = f"describe_instances failed: {error}"
            if message != self.last_poll_error:
                log.warning("emulated boot: %s", message)
            self.last_poll_error = message
            return None
        self.last_poll_error = None
        return states

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _fail(self, record: BootedInstance, message: str) -> None:
        log.error("emulated boot: %s", message)
        with self._cond:
            record.error = message
            self._errors.append(message)
            self._cond.notify_all()

    def _boot(self, instance_id: str, private_ip: str | None) -> None:
        assert self.base_dir is not None
        record = BootedInstance(
            instance_id=instance_id,
            private_ip=private_ip or "",
            workdir=self.base_dir / instance_id,
            marker=f"{instance_id}:{uuid.uuid4().hex}",
            seen_running_at=time.monotonic(),
        )
        with self._cond:
            self._records[instance_id] = record
        try:
            if not private_ip or not ipaddress.ip_address(private_ip).is_loopback:
                raise BootError(
                    f"private IP {private_ip!r} is not a loopback address; launch the instance "
                    "in the loopback subnet (harness.create_loopback_network)"
                )
            record.spec = self._read_spec(instance_id)
            if self.install_delay:
                self._look_at_image(record)
            record.port = record.spec.port
            for other in self.instances:
                if (
                    other is not record
                    and not other.stopped
                    and (other.private_ip, other.port) == (private_ip, record.port)
                ):
                    self._stop_instance(
                        other, f"{private_ip}:{record.port} reused by {instance_id}"
                    )
            self._start_sshd(record)
        except (BootError, UserDataError, ClientError, BotoCoreError, OSError, ValueError) as error:
            self._fail(record, f"{instance_id}: {error}")
            self._kill_processes(record)
            return
        with self._cond:
            record.booted_at = time.monotonic()
            self._cond.notify_all()
        log.info(
            "emulated boot: %s sshd on %s:%s after %.2f s",
            instance_id,
            private_ip,
            record.port,
            record.boot_seconds,
        )
        if record.spec.bootstrap_script is not None:
            threading.Thread(
                target=self._run_bootstrap,
                args=(record,),
                name=f"bootstrap-{instance_id}",
                daemon=True,
            ).start()
        else:
            record.bootstrap_done.set()

    def _read_spec(self, instance_id: str) -> BootSpec:
        attribute = self._client.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData"
        )
        encoded = (attribute.get("UserData") or {}).get("Value")
        if not encoded:
            raise BootError("the instance has no user data")
        return parse_user_data(base64.b64decode(encoded))

    def _look_at_image(self, record: BootedInstance) -> None:
        """Is the instance's image a baked one? Its installs take `install_delay` if not."""
        from ec2_executor.cloud.images import TAG  # the tags `ec2-executor bake` writes

        found = self._client.describe_instances(InstanceIds=[record.instance_id])
        record.image_id = found["Reservations"][0]["Instances"][0].get("ImageId", "")
        images = self._client.describe_images(ImageIds=[record.image_id])["Images"]
        tags = {t["Key"] for image in images for t in image.get("Tags", [])}
        record.baked_image = TAG + "key" in tags
        record.install_seconds = 0.0 if record.baked_image else self.install_delay

    def _session_env(self, record: BootedInstance) -> dict[str, str]:
        # Each instance has its own home, so nothing run "on the instance" (covalent's config,
        # caches) writes into this machine's real home.
        env = {
            "EC2_EXECUTOR_PREFIX": str(record.prefix),
            MARKER_ENV: record.marker,
            "HOME": str(record.workdir / "home"),
        }
        if self.python_path:
            env["PYTHONPATH"] = self.python_path
        return env

    def _start_sshd(self, record: BootedInstance) -> None:
        assert record.spec is not None
        if not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        record.workdir.mkdir(parents=True)
        record.prefix.mkdir()
        (record.workdir / "home").mkdir()
        self._write_files(record)
        host_key = record.workdir / "ssh_host_ed25519_key"
        host_key.write_text(record.spec.host_key_pem)
        host_key.chmod(0o600)
        authorized_keys = record.workdir / "authorized_keys"
        authorized_keys.write_text("".join(f"{key}\n" for key in record.spec.authorized_keys))
        authorized_keys.chmod(0o600)
        set_env = " ".join(f'"{name}={value}"' for name, value in self._session_env(record).items())
        record.sshd_config.write_text(
            f"# emulated boot of {record.instance_id} (tests/harness/boot.py)\n"
            f"Port {record.port}\n"
            f"ListenAddress {record.private_ip}:{record.port}\n"
            f'HostKey "{host_key}"\n'
            f'AuthorizedKeysFile "{authorized_keys}"\n'
            f'PidFile "{record.workdir / "sshd.pid"}"\n'
            "StrictModes no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "PermitRootLogin prohibit-password\n"
            "UseDNS no\n"
            "PrintMotd no\n"
            "X11Forwarding no\n"
            "MaxStartups 100\n"
            "MaxSessions 100\n"
            "LogLevel VERBOSE\n"
            "Subsystem sftp internal-sftp\n"
            f"SetEnv {set_env}\n"
        )
        command = [
            self.sshd_path,
            "-D",
            "-e",
            "-f",
            str(record.sshd_config),
            "-E",
            str(record.sshd_log),
        ]
        with open(record.workdir / "sshd.stderr", "ab") as stderr:
            record.sshd = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                cwd=record.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.sshd_start_timeout
        while True:
            returncode = record.sshd.poll()
            if returncode is not None:
                raise BootError(
                    f"sshd on {record.private_ip}:{record.port} exited with {returncode}; "
                    f"{record.sshd_log} tail:\n{record.sshd_log_tail()}\n"
                    f"stderr: {_tail(record.workdir / 'sshd.stderr')}"
                )
            with contextlib.suppress(FileNotFoundError):
                if _LISTENING in record.sshd_log.read_text(errors="replace"):
                    return
            if time.monotonic() > deadline:
                raise BootError(
                    f"sshd on {record.private_ip}:{record.port} not listening after "
                    f"{self.sshd_start_timeout:.0f} s; {record.sshd_log} tail:\n"
                    + record.sshd_log_tail()
                )
            time.sleep(0.01)

    def _write_files(self, record: BootedInstance) -> None:
        """The bootstrap and its companions (runner.py, run-task.sh) into the prefix, before
        sshd starts, as cloud-init writes them to /opt/ec2-executor."""
        assert record.spec is not None
        files = dict(record.spec.companions)
        if record.spec.bootstrap_script is not None:
            files["bootstrap.sh"] = record.spec.bootstrap_script
        for name, content in files.items():
            path = record.prefix / name
            path.write_text(content)
            path.chmod(0o755 if name.endswith(".sh") else 0o644)

    def _run_bootstrap(self, record: BootedInstance) -> None:
        assert record.spec is not None and record.spec.bootstrap_script is not None
        script = record.prefix / "bootstrap.sh"
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            **self._session_env(record),
            **self.bootstrap_env,
            "EC2_EXECUTOR_POWEROFF": "true",  # never this machine; the harness honours the file
            "EC2_EXECUTOR_SSHD_ADDRESS": record.private_ip,  # the owner watch's sshd, not others'
        }
        command = [str(script), *record.spec.bootstrap_args, "--prefix", str(record.prefix)]
        if self.image_venv is not None:
            (record.prefix / "venv").symlink_to(self.image_venv, target_is_directory=True)
        # A slow install is a wait the instance's going away cuts short.
        until = time.monotonic() + self.bootstrap_delay + record.install_seconds
        while record.stop_reason is None and time.monotonic() < until:
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))
        try:
            with self._cond:
                if record.stop_reason is not None:
                    return
                with open(record.bootstrap_output, "ab") as output:
                    record.bootstrap = subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        cwd=record.workdir,
                        env=env,
                        start_new_session=True,
                    )
                record.bootstrap_started_at = time.monotonic()
            returncode = record.bootstrap.wait()
            record.bootstrap_returncode = returncode
            level = logging.INFO if returncode == 0 else logging.WARNING
            log.log(level, "emulated boot: %s bootstrap exited %s", record.instance_id, returncode)
        except OSError as error:
            self._fail(record, f"{record.instance_id}: bootstrap could not run: {error}")
        finally:
            record.bootstrap_done.set()
            self._notify()

    def _power_off(self, record: BootedInstance) -> None:
        """The instance powered itself off: EC2 terminates it (the template's shutdown
        behaviour); the next poll then ends its processes."""
        log.info("emulated boot: %s powered itself off", record.instance_id)
        try:
            self._client.terminate_instances(InstanceIds=[record.instance_id])
        except (BotoCoreError, ClientError) as error:
            log.warning("emulated boot: terminating %s failed: %s", record.instance_id, error)

    def _stop_instance(self, record: BootedInstance, reason: str) -> None:
        with self._cond:
            if record.stop_reason is not None:
                return
            # Mark first, so that a bootstrap thread that has not started yet does not start.
            record.stop_reason = reason
        self._kill_processes(record)
        with self._cond:
            record.stopped_at = time.monotonic()
            self._cond.notify_all()
        if record.booted:
            log.info("emulated boot: %s stopped (%s)", record.instance_id, reason)

    def _kill_processes(self, record: BootedInstance) -> None:
        """End sshd, its connections, the bootstrap and every process carrying the marker."""
        _thaw(record)  # a stopped process would not act on SIGTERM
        table = _proc_table()
        pids: list[int] = []
        if record.sshd is not None and record.sshd.poll() is None:
            pids.append(record.sshd.pid)  # the listener first: the port closes at once
            pids.extend(_descendants(record.sshd.pid, table))
        if record.bootstrap is not None and record.bootstrap.poll() is None:
            pids.append(record.bootstrap.pid)
            pids.extend(_descendants(record.bootstrap.pid, table))
        pids.extend(pids_with_env(f"{MARKER_ENV}={record.marker}"))
        pids = [pid for pid in dict.fromkeys(pids) if pid != os.getpid()]
        terminate(pids, grace=self.stop_timeout, label=f"emulated boot {record.instance_id}")
        for process in (record.sshd, record.bootstrap):  # reap our direct children
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)


def _thaw(record: BootedInstance) -> None:
    for pid in record.frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    record.frozen.clear()


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _proc_table() -> dict[int, int]:
    """pid -> parent pid, from /proc."""
    table: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(entry)] = int(fields[1])
    return table


def _descendants(root: int, table: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@contextlib.contextmanager
def booting(
    moto_url: str,
    *,
    python_path: str | None,
    bootstrap_env: dict[str, str],
    image_venv: Path | None,
    base_dir: Path,
    boot_delay: float = 0.0,
    keys: Keys = TESTING_KEYS,
) -> Iterator[EmulatedBoot]:
    """An `EmulatedBoot` for one test: stopped after it; boot errors that the test did not
    `clear_errors()` are raised then."""
    boot = EmulatedBoot(
        moto_url,
        python_path=python_path,
        bootstrap_env=bootstrap_env,
        image_venv=image_venv,
        base_dir=base_dir,
        boot_delay=boot_delay,
        keys=keys,
    )
    with boot:
        yield boot
    boot.raise_errors()


def build_image_venv(prefix: Path) -> Path:
    """Run the real bootstrap once, offline, over this venv's packages; return its venv.

    Emulated images link it in, so each boot's bootstrap takes its idempotent fast path.
    """
    from importlib.metadata import version

    from cdk_stacks.user_data import package_file

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    # A copy without runner.py beside it: building the image starts no worker.
    script = prefix.parent / f"{prefix.name}-bootstrap.sh"
    shutil.copyfile(package_file("bootstrap.sh"), script)
    subprocess.run(
        [
            "bash",
            str(script),
            "--python",
            python,
            "--covalent",
            version("covalent"),
            "--cloudpickle",
            version("cloudpickle"),
            "--prefix",
            str(prefix),
        ],
        env={
            **os.environ,
            "EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1",
            "PYTHONPATH": current_site_packages(),
        },
        check=True,
        capture_output=True,
    )
    return prefix / "venv"
