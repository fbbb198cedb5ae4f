"""What the emulated boot knows and has recorded of each instance, and the waits on it.

`BootLog` holds one `BootedInstance` per instance the harness has seen running, the boot errors,
and one condition that every change notifies, so that a test waits for an event (booted,
bootstrap done, stopped) instead of polling for it.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .userdata import BootSpec


class BootError(RuntimeError):
    """An emulated instance could not be booted (bad user data, sshd failed, ...)."""


def tail(path: Path, lines: int = 40) -> str:
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
    when the harness has no install delay)."""
    install_seconds: float = 0.0
    """The emulated installs the bootstrap paid before it started (0 on a baked image)."""
    bootstrap_started_at: float | None = None
    """`time.monotonic()` when the bootstrap process started."""
    bootstrap: subprocess.Popen[bytes] | None = None
    bootstrap_returncode: int | None = None
    bootstrap_done: threading.Event = field(default_factory=threading.Event, repr=False)
    held: bool = False
    """Its sshd is held back (`EmulatedBoot.hold`): its SSH address resets every connection."""
    knocks: int = 0
    """Connections made to the instance's SSH address while it was held."""
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
        return tail(self.sshd_log, lines)

    def bootstrap_output_tail(self, lines: int = 40) -> str:
        return tail(self.bootstrap_output, lines)


Predicate = Callable[[BootedInstance], bool]


class BootLog:
    """The instances seen, by id, and the boot errors; thread-safe, with waits."""

    def __init__(self, hint: Callable[[], str] = lambda: "") -> None:
        """hint: more words for a wait's timeout message (the last poll error)."""
        self._records: dict[str, BootedInstance] = {}
        self._errors: list[str] = []
        self._cond = threading.Condition()
        self._hint = hint

    # -- reading ------------------------------------------------------------------------------

    @property
    def instances(self) -> list[BootedInstance]:
        with self._cond:
            return list(self._records.values())

    def get(self, instance_id: str) -> BootedInstance:
        with self._cond:
            return self._records[instance_id]

    def __contains__(self, instance_id: object) -> bool:
        with self._cond:
            return instance_id in self._records

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

    # -- recording ----------------------------------------------------------------------------

    def add(self, record: BootedInstance) -> None:
        with self._cond:
            self._records[record.instance_id] = record
            self._cond.notify_all()

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def fail(self, record: BootedInstance, message: str) -> None:
        with self._cond:
            record.error = message
            self._errors.append(message)
            self._cond.notify_all()

    def mark_held(self, record: BootedInstance, held: bool) -> None:
        with self._cond:
            record.held = held
            self._cond.notify_all()

    def count_knock(self, record: BootedInstance) -> None:
        with self._cond:
            record.knocks += 1
            self._cond.notify_all()

    def mark_booted(self, record: BootedInstance, at: float | None = None) -> None:
        with self._cond:
            record.booted_at = time.monotonic() if at is None else at
            self._cond.notify_all()

    def mark_stopping(self, record: BootedInstance, reason: str) -> bool:
        """Record why the instance goes; False if it was going already. Marked before its
        processes end, so that a bootstrap that has not started yet does not start."""
        with self._cond:
            if record.stop_reason is not None:
                return False
            record.stop_reason = reason
            self._cond.notify_all()
            return True

    def mark_stopped(self, record: BootedInstance) -> None:
        with self._cond:
            record.stopped_at = time.monotonic()
            self._cond.notify_all()

    @contextlib.contextmanager
    def unless_stopping(self, record: BootedInstance) -> Iterator[bool]:
        """Whether the instance still runs, held so for the block: what starts in it cannot
        race `mark_stopping`."""
        with self._cond:
            yield record.stop_reason is None

    def wait_stopping(self, record: BootedInstance, seconds: float) -> None:
        """Sleep `seconds`, cut short if the instance goes meanwhile."""
        with self._cond:
            self._cond.wait_for(lambda: record.stop_reason is not None, seconds)

    # -- waiting ------------------------------------------------------------------------------

    def wait_for(
        self, instance_id: str, predicate: Predicate, timeout: float, what: str
    ) -> BootedInstance:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                record = self._records.get(instance_id)
                if record is not None and predicate(record):
                    return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    known = ", ".join(self._records) or "none"
                    raise TimeoutError(
                        f"{instance_id} did not get {what} within {timeout:.0f} s "
                        f"(instances seen: {known}; {self._hint()})"
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_booted(self, instance_id: str, timeout: float = 30.0) -> BootedInstance:
        """Wait until the instance's sshd listens. Raises BootError if its boot failed."""

        def settled(record: BootedInstance) -> bool:
            return record.booted or record.error is not None

        record = self.wait_for(instance_id, settled, timeout, "to boot")
        if record.error is not None:
            raise BootError(record.error)
        return record

    def wait_stopped(self, instance_id: str, timeout: float = 15.0) -> BootedInstance:
        """Wait until the harness has stopped the instance (after it stopped being running)."""
        return self.wait_for(instance_id, lambda r: r.stopped, timeout, "to stop")

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

    def wait_any(self, predicate: Predicate, timeout: float, what: str) -> BootedInstance:
        """The first instance (in the order seen) for which `predicate` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in self._records.values() if predicate(r)]
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no instance {what} within {timeout:.0f} s")
                self._cond.wait(min(remaining, 0.5))
