"""Emulated EC2 instance boots on loopback.

`EmulatedBoot` watches a moto server (`describe_instances`, every `poll_interval` seconds). For
each instance it sees `running` for the first time it does what cloud-init would do with the
product's user data, inside a temporary directory per instance and without touching the system:

* parse the user data (`harness.userdata.parse_user_data`) and lay out the instance's directory
  (`harness.instance_dir`),
* start a real OpenSSH server (`sshd -D -e`) on the instance's private IP (moto assigns 127.0.2.x
  in the loopback subnet) and the user data's port, with the user data's host key and authorized
  keys; SSH sessions get `EC2_EXECUTOR_PREFIX=<instance dir>/opt` (and `PYTHONPATH` when the
  image has a `python_path`) through sshd's `SetEnv`,
* once sshd listens, run the user data's bootstrap script (the `runcmd` entry that runs a
  `write_files` file) with the same arguments plus `--prefix <instance dir>/opt`, in the
  background, its output going to `<instance dir>/cloud-init-output.log`; or, on a light image
  (`Image(light=True)`, for sweeps of hundreds of instances), no bootstrap: the instance is
  ready as sshd listens, and is sshd alone.

The instance's spot notice watch asks the harness's metadata stand-in (`metadata.py`), at a path
of its own (`<url>/<instance id>`), never 169.254.169.254.

`bootcmd` (which arms `shutdown`) is never run, and the bootstrap's idle power-off runs a command
that does nothing (`EC2_EXECUTOR_POWEROFF`); the harness honours the file it writes
(`<prefix>/poweroff`) as EC2 would a power-off with `InstanceInitiatedShutdownBehavior:
terminate`: it terminates the instance in moto. When an instance stops being `running`
(terminated, stopped, or gone after a moto reset) its sshd, its SSH sessions and whatever they or
the bootstrap left running are terminated, like a real instance going away.

The parts: `moto_watch` (what moto runs), `instance_dir` (files from the user data),
`instance_processes` (sshd and bootstrap), `boot_log` (what happened, and the waits), `hold`
(boots held back until a test releases them).
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.util
import ipaddress
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from botocore.exceptions import BotoCoreError, ClientError

from . import instance_processes as processes
from .boot_log import BootedInstance, BootError, BootLog
from .hold import Doorman, Hold
from .instance_dir import MARKER_ENV, prepare, session_env
from .metadata import MetadataStandIn
from .moto import TESTING_KEYS, Keys
from .moto_watch import MotoInstances, Poller, Seen, Sightings, gone_reason
from .userdata import UserDataError, parse_user_data

__all__ = [
    "MARKER_ENV",
    "BootError",
    "BootedInstance",
    "Delays",
    "EmulatedBoot",
    "Image",
    "booting",
    "build_image_venv",
    "current_site_packages",
]

log = logging.getLogger("harness.boot")

OFFLINE = {"EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1"}
"""The bootstrap's environment on an emulated instance: it must never install into this machine
(its package-manager and uv steps)."""

BOOT_FAILURES = (BootError, UserDataError, ClientError, BotoCoreError, OSError, ValueError)
"""What a boot can meet that is the instance's failure, not the harness's bug."""


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
    versions = ["--covalent", version("covalent"), "--cloudpickle", version("cloudpickle")]
    subprocess.run(
        ["bash", str(script), "--python", python, *versions, "--prefix", str(prefix)],
        env={**os.environ, **OFFLINE, "PYTHONPATH": current_site_packages()},
        check=True,
        capture_output=True,
    )
    return prefix / "venv"


@dataclass(frozen=True)
class Image:
    """What the emulated instances' image holds, and how its bootstrap runs there."""

    python_path: str | None = None
    """PYTHONPATH of the bootstrap and of SSH sessions (an image with packages preinstalled);
    see `current_site_packages()`."""
    venv: Path | None = None
    """A ready venv the image holds at `<prefix>/venv` (linked in before the real bootstrap
    runs, which then takes its idempotent fast path)."""
    bootstrap_env: dict[str, str] = field(default_factory=dict)
    """Extra variables for the bootstrap's environment."""
    light: bool = False
    """Light instances, for sweeps of hundreds on two cores: sshd alone. No bootstrap runs
    (no warm worker, no idle or owner watch): the instance is ready as sshd listens, with the
    image's Python (its venv's, else this interpreter), and each task starts an interpreter."""

    @classmethod
    def local(cls, directory: Path, *, light: bool = False) -> Image:
        """This venv's packages, an offline bootstrap, and a venv built once in `directory`."""
        venv = build_image_venv(directory)
        return cls(
            python_path=current_site_packages(),
            venv=venv,
            bootstrap_env=dict(OFFLINE),
            light=light,
        )

    @property
    def python(self) -> str:
        """The Python a light instance names as ready."""
        return str(self.venv / "bin" / "python") if self.venv is not None else sys.executable


@dataclass
class Delays:
    """How long the emulated cloud takes. Read at each boot: a test may change it on a running
    harness."""

    boot: float = 0.0
    """Seconds from an instance's first sighting as running to its sshd starting."""
    bootstrap: float = 0.0
    """Seconds between sshd listening and the bootstrap starting (a slow install)."""
    install: float = 0.0
    """Seconds the bootstrap's installs (Python, venv, covalent) take on an image that is not
    a baked one (one without the tags `ec2-executor bake` puts on it); added to `bootstrap`.
    The emulated image holds the environment either way, so the bootstrap takes its fast path."""


class EmulatedBoot:
    """Boots every instance moto runs; see the module docstring. Start it, or use `with`."""

    def __init__(
        self,
        endpoint_url: str,
        *,
        image: Image | None = None,
        base_dir: Path | str | None = None,
        delays: Delays | None = None,
        keys: Keys = TESTING_KEYS,
        poll_interval: float = 0.2,
    ) -> None:
        """
        base_dir: where instance directories go (default: a new temporary directory, removed by
            `stop()` unless an instance failed to boot).
        keys: the credentials the harness reads and terminates instances with (an admin's,
            on a moto server that enforces IAM).
        """
        self.image = image if image is not None else Image()
        self.delays = delays if delays is not None else Delays()
        self.cloud = MotoInstances(endpoint_url, keys)
        self.log = BootLog(hint=lambda: f"last poll error: {self.cloud.last_error}")
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self._owns_base_dir = base_dir is None
        self._sshd_path = processes.find_sshd()
        self._sightings = Sightings()
        self._poller = Poller(self.poll_once, poll_interval, "emulated-boot")
        self._poll_lock = threading.RLock()
        self._hold: Hold | None = None
        self._doormen: dict[str, Doorman] = {}
        self.metadata: MetadataStandIn | None = None
        """The instances' metadata endpoint (their spot notices), once started."""

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> EmulatedBoot:
        if self._poller.started:
            raise RuntimeError("EmulatedBoot already started")
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="ec2-harness-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.metadata = MetadataStandIn(self.base_dir / "metadata-notices")
        self.cloud.connect()
        self._poller.start()
        return self

    def stop(self) -> None:
        """Stop polling, then end every instance still running (sshd, sessions, bootstrap)."""
        self._poller.stop()
        with self._poll_lock:
            for record in self.instances:
                self._stop_instance(record, "harness stopped")
        if self.metadata is not None:
            self.metadata.stop()
        if self._owns_base_dir and self.base_dir is not None and not self.errors:
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

    # -- what tests use: the log --------------------------------------------------------------

    @property
    def instances(self) -> list[BootedInstance]:
        return self.log.instances

    def get(self, instance_id: str) -> BootedInstance:
        return self.log.get(instance_id)

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
        return self.log.errors

    def clear_errors(self) -> list[str]:
        """Return and forget boot errors (for tests that provoke one)."""
        return self.log.clear_errors()

    def raise_errors(self) -> None:
        self.log.raise_errors()

    def wait_booted(self, instance_id: str, timeout: float = 30.0) -> BootedInstance:
        """Wait until the instance's sshd listens. Raises BootError if its boot failed."""
        return self.log.wait_booted(instance_id, timeout)

    def wait_stopped(self, instance_id: str, timeout: float = 15.0) -> BootedInstance:
        """Wait until the harness has stopped the instance (after it stopped being running)."""
        return self.log.wait_stopped(instance_id, timeout)

    def wait_bootstrap(self, instance_id: str, timeout: float = 60.0) -> BootedInstance:
        """Wait until the instance's bootstrap process has exited (`bootstrap_returncode`)."""
        return self.log.wait_bootstrap(instance_id, timeout)

    # -- what tests use: faults ---------------------------------------------------------------

    def freeze_sshd(self, instance_id: str) -> list[int]:
        """SIGSTOP the instance's sshd processes (listener and connections), not the task: the
        connection goes silent, as over a dropped route. Returns the frozen pids."""
        return processes.freeze_sshd(self.get(instance_id))

    def thaw_sshd(self, instance_id: str) -> None:
        processes.thaw(self.get(instance_id))

    def hold(self) -> Hold:
        """Instances seen from now on get no sshd until the returned hold is released (at the
        next poll after it); meanwhile their SSH address resets every connection, counted in
        `knocks`."""
        self._hold = Hold()
        return self._hold

    def wait_knocked(self, timeout: float = 60.0) -> BootedInstance:
        """The first held instance something tried to connect to (waiting for one)."""
        return self.log.wait_any(lambda r: r.knocks > 0, timeout, "knocked at")

    # -- the watch ----------------------------------------------------------------------------

    def poll_once(self) -> None:
        """One poll of moto, synchronously (the background thread does this continuously)."""
        with self._poll_lock:
            states = self.cloud.states()
            if states is None:
                return
            self._end_gone(states)
            self._release_held()
            due = self._sightings.due(states, self.log, self.delays.boot, time.monotonic())
            if due:  # instances launched together boot together, as on EC2
                with concurrent.futures.ThreadPoolExecutor(len(due)) as pool:
                    list(pool.map(lambda found: self._boot(*found), due))

    def _end_gone(self, states: dict[str, Seen]) -> None:
        for record in self.instances:
            if record.stopped:
                continue
            reason = gone_reason(states.get(record.instance_id))
            if reason is not None:
                self._stop_instance(record, reason)
            elif self._powered_itself_off(record):
                log.info("emulated boot: %s powered itself off", record.instance_id)
                self.cloud.power_off(record.instance_id)  # the next poll ends its processes

    def _powered_itself_off(self, record: BootedInstance) -> bool:
        """An emulated instance has no power to cut: the file its power-off writes says it."""
        return record.booted and (record.prefix / "poweroff").exists()

    def _release_held(self) -> None:
        if self._hold is None or not self._hold.released:
            return
        for instance_id in list(self._doormen):
            record = self.get(instance_id)
            if self._dismiss_doorman(record):
                self._start(record)

    # -- one instance -------------------------------------------------------------------------

    def _boot(self, instance_id: str, private_ip: str | None) -> None:
        assert self.base_dir is not None
        record = BootedInstance(
            instance_id=instance_id,
            private_ip=private_ip or "",
            workdir=self.base_dir / instance_id,
            marker=f"{instance_id}:{uuid.uuid4().hex}",
            seen_running_at=time.monotonic(),
        )
        self.log.add(record)
        if not self._attempt(record, self._lay_out):
            return
        if self._hold is not None and not self._hold.released:
            self._attempt(record, self._hold_back)
        else:
            self._start(record)

    def _attempt(self, record: BootedInstance, step: Callable[[BootedInstance], None]) -> bool:
        """Run a step of the boot; a failure is the instance's: recorded, its processes ended."""
        try:
            step(record)
        except BOOT_FAILURES as error:
            log.error("emulated boot: %s: %s", record.instance_id, error)
            self.log.fail(record, f"{record.instance_id}: {error}")
            self._end_processes(record)
            return False
        return True

    def _lay_out(self, record: BootedInstance) -> None:
        """The user data read, the image looked at, the instance's directory made."""
        if not record.private_ip or not ipaddress.ip_address(record.private_ip).is_loopback:
            raise BootError(
                f"private IP {record.private_ip!r} is not a loopback address; launch the "
                "instance in the loopback subnet (harness.create_loopback_network)"
            )
        record.spec = parse_user_data(self.cloud.user_data(record.instance_id))
        if self.delays.install:
            record.image_id, record.baked_image = self.cloud.image(record.instance_id)
            record.install_seconds = 0.0 if record.baked_image else self.delays.install
        record.port = record.spec.port
        self._evict_from(record)
        prepare(record, record.spec, session_env(record, self.image.python_path))

    def _evict_from(self, record: BootedInstance) -> None:
        """An earlier instance still on this address and port goes (moto reused the IP)."""
        here = (record.private_ip, record.port)
        for other in self.instances:
            if other is not record and not other.stopped and (other.private_ip, other.port) == here:
                reason = f"{record.private_ip}:{record.port} reused by {record.instance_id}"
                self._stop_instance(other, reason)

    def _hold_back(self, record: BootedInstance) -> None:
        assert record.port is not None
        knock = functools.partial(self.log.count_knock, record)
        self._doormen[record.instance_id] = Doorman(record.private_ip, record.port, knock)
        self.log.mark_held(record, True)

    def _dismiss_doorman(self, record: BootedInstance) -> bool:
        """The doorman gone from the instance's address; False if there was none."""
        doorman = self._doormen.pop(record.instance_id, None)
        if doorman is None:
            return False
        doorman.close()
        self.log.mark_held(record, False)
        return True

    def _start(self, record: BootedInstance) -> None:
        """sshd, then the bootstrap in the background."""
        if not self._attempt(record, lambda r: processes.start_sshd(self._sshd_path, r)):
            return
        self.log.mark_booted(record)
        log.info(
            "emulated boot: %s sshd on %s:%s after %.2f s",
            record.instance_id,
            record.private_ip,
            record.port,
            record.boot_seconds,
        )
        assert record.spec is not None
        if self.image.light:  # ready as sshd listens: what the bootstrap would end with
            (record.prefix / "ready").write_text(f"{self.image.python}\n")
            record.bootstrap_returncode = 0
        if record.spec.bootstrap_script is None or self.image.light:
            record.bootstrap_done.set()
            return
        threading.Thread(
            target=self._run_bootstrap,
            args=(record,),
            name=f"bootstrap-{record.instance_id}",
            daemon=True,
        ).start()

    def _bootstrap_env(self, record: BootedInstance) -> dict[str, str]:
        assert self.metadata is not None
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            **session_env(record, self.image.python_path),
            **self.image.bootstrap_env,
            "EC2_EXECUTOR_POWEROFF": "true",  # never this machine; the harness honours the file
            "EC2_EXECUTOR_SSHD_ADDRESS": record.private_ip,  # the owner watch's sshd, not others'
            # The spot notice's watch asks the harness's stand-in, never 169.254.169.254.
            "EC2_EXECUTOR_METADATA": f"{self.metadata.url}/{record.instance_id}",
        }

    def _run_bootstrap(self, record: BootedInstance) -> None:
        env = self._bootstrap_env(record)
        if self.image.venv is not None:
            (record.prefix / "venv").symlink_to(self.image.venv, target_is_directory=True)
        # A slow install is a wait the instance's going away cuts short.
        self.log.wait_stopping(record, self.delays.bootstrap + record.install_seconds)
        try:
            with self.log.unless_stopping(record) as running:
                if not running:
                    return
                record.bootstrap = processes.start_bootstrap(record, env)
                record.bootstrap_started_at = time.monotonic()
            returncode = record.bootstrap.wait()
            record.bootstrap_returncode = returncode
            level = logging.INFO if returncode == 0 else logging.WARNING
            log.log(level, "emulated boot: %s bootstrap exited %s", record.instance_id, returncode)
        except OSError as error:
            message = f"{record.instance_id}: bootstrap could not run: {error}"
            log.error("emulated boot: %s", message)
            self.log.fail(record, message)
        finally:
            record.bootstrap_done.set()
            self.log.notify()

    def _stop_instance(self, record: BootedInstance, reason: str) -> None:
        if not self.log.mark_stopping(record, reason):
            return
        self._dismiss_doorman(record)
        self._end_processes(record)
        self.log.mark_stopped(record)
        if record.booted:
            log.info("emulated boot: %s stopped (%s)", record.instance_id, reason)

    def _end_processes(self, record: BootedInstance) -> None:
        processes.end_all(record)


@contextmanager
def booting(
    moto_url: str,
    *,
    image: Image,
    base_dir: Path,
    delays: Delays | None = None,
    keys: Keys = TESTING_KEYS,
) -> Iterator[EmulatedBoot]:
    """An `EmulatedBoot` for one test: stopped after it; boot errors that the test did not
    `clear_errors()` are raised then."""
    boot = EmulatedBoot(moto_url, image=image, base_dir=base_dir, delays=delays, keys=keys)
    with boot:
        yield boot
    boot.raise_errors()
