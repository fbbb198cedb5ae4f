"""Warm instances kept in this process for the next electron with the same reuse key.

In memory only: the connection, the client key and the pinned host key never touch the disk.
One task at a time per instance: an instance is either idle here or lent to one electron.
An idle instance ends three ways: this pool's timer (`keep_warm_minutes`), the instance's own
idle power-off (minutes plus a grace), and `max_lifetime_minutes`. At a normal exit of the
process every idle stack gets a `DeleteStack` request.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ec2_executor import redact
from ec2_executor.access import ClientIdentity, KeyPair
from ec2_executor.blocking import in_background, submit_blocking
from ec2_executor.cloud.aws import AWS, aws_errors
from ec2_executor.cloud.stacks import (
    EventLog,
    StackOutputs,
    Stacks,
    delete_stack,
)
from ec2_executor.cost import record
from ec2_executor.cost.budget import Budget
from ec2_executor.cost.meter import Meter
from ec2_executor.cost.prices import Rate
from ec2_executor.errors import AWSError, CredentialsError, EC2ExecutorError, StackDeletionError
from ec2_executor.logs import log
from ec2_executor.options import Options
from ec2_executor.remote import RemoteHost

if TYPE_CHECKING:
    from ec2_executor.warm.lease import Lease

LIFETIME_MARGIN = 5 * 60.0
"""An instance this close to `max_lifetime_minutes` is not lent again: its task could not
finish before the instance ends itself."""
TAG_STATE = "ec2-executor:state"
"""On the instance: 'busy', or 'idle since <UTC time>'; read by `ec2-executor list`."""


@dataclass(eq=False, kw_only=True)
class WarmInstance:
    """An instance and its stack that outlive one electron, with what it takes to log in."""

    key: str
    options: Options
    stack_name: str
    outputs: StackOutputs
    identity: ClientIdentity
    host_key: KeyPair
    remote: RemoteHost
    ends_at: float
    """`time.monotonic()` when `max_lifetime_minutes` ends the instance."""
    rate: Rate | None = None
    """What the instance costs per hour."""
    budget: Budget | None = None
    idle_since: float = field(default_factory=time.time)
    timer: asyncio.TimerHandle | None = None


class Pool:
    """Idle instances by reuse key; `idle_seconds` overrides `keep_warm_minutes` (for tests)."""

    def __init__(self, *, idle_seconds: float | None = None) -> None:
        self.idle_seconds = idle_seconds
        self.running: dict[str, Lease] = {}
        """The leases whose task runs now, by stack name (what a job handle names)."""
        self._idle: dict[str, list[WarmInstance]] = {}
        self._lock = threading.Lock()

    def expiry(self, options: Options) -> float:
        if self.idle_seconds is not None:
            return self.idle_seconds
        return options.keep_warm_minutes * 60.0

    def take(self, key: str) -> WarmInstance | None:
        """An idle instance of this key, now lent to the caller; None when there is none."""
        with self._lock:
            idle = self._idle.get(key, [])
            while idle:
                instance = idle.pop()  # the most recently used: the warmest
                if instance.timer is not None:
                    instance.timer.cancel()
                    instance.timer = None
                if instance.ends_at - time.monotonic() > LIFETIME_MARGIN:
                    tag_state(instance, "busy")
                    charge_idle(instance)
                    return instance
                retire_soon(instance, "its 'max_lifetime_minutes' is nearly over")
        return None

    def give_back(self, instance: WarmInstance) -> None:
        """Keep the instance idle until the next electron of its key, or until it expires."""
        lifetime_left = instance.ends_at - time.monotonic() - LIFETIME_MARGIN
        left = min(self.expiry(instance.options), lifetime_left)
        if left <= 0:
            retire_soon(instance, "its 'max_lifetime_minutes' is nearly over")
            return
        instance.idle_since = time.time()
        loop = asyncio.get_running_loop()
        instance.timer = loop.call_later(left, self._expire, instance)
        with self._lock:
            self._idle.setdefault(instance.key, []).append(instance)
        tag_state(instance, "idle since " + _utc(instance.idle_since))
        log.info("%s: idle, kept for %.0f s", instance.stack_name, left)

    def _expire(self, instance: WarmInstance) -> None:
        with self._lock:
            idle = self._idle.get(instance.key, [])
            if instance not in idle:
                return  # taken meanwhile
            idle.remove(instance)
        retire_soon(instance, f"idle for {self.expiry(instance.options):.0f} s")

    def idle(self) -> list[WarmInstance]:
        with self._lock:
            return [i for instances in self._idle.values() for i in instances]

    def drain(self) -> list[WarmInstance]:
        """Remove every idle instance from the pool (their timers cancelled) and return them."""
        with self._lock:
            drained = [i for instances in self._idle.values() for i in instances]
            self._idle.clear()
        for instance in drained:
            if instance.timer is not None:
                instance.timer.cancel()
        return drained


def _default_idle_seconds() -> float | None:
    value = os.environ.get("EC2_EXECUTOR_IDLE_SECONDS")  # for test servers only
    return float(value) if value else None


POOL = Pool(idle_seconds=_default_idle_seconds())
"""The process's pool (the Covalent server's)."""


def _utc(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def tag_state(instance: WarmInstance, state: str) -> None:
    """Record the instance's state on it, in the background (for `ec2-executor list`)."""

    def tag() -> None:
        try:  # a hint for `list`: an AWS refusal is logged, never fails an electron
            with aws_errors(f"tagging instance {instance.outputs.instance_id}"):
                AWS(instance.options).ec2.create_tags(
                    Resources=[instance.outputs.instance_id],
                    Tags=[{"Key": TAG_STATE, "Value": state}],
                )
        except (AWSError, CredentialsError) as exc:
            log.debug("%s: %s", instance.stack_name, exc)

    submit_blocking(tag)


def retire_soon(instance: WarmInstance, reason: str) -> None:
    in_background(retire(instance, reason))


async def retire(instance: WarmInstance, reason: str, *, wait: bool = False) -> None:
    """Delete a warm instance's stack, saying why; the deletion is verified in the background
    unless `wait`."""
    log.info("%s: deleting the warm instance's stack (%s)", instance.stack_name, reason)
    instance.remote.close()
    name = instance.stack_name
    try:
        await delete_stack(
            Stacks(AWS(instance.options).cloudformation),
            name,
            events=EventLog(name),
            wait=wait or instance.options.wait_for_deletion,
            done=functools.partial(_deleted, instance),
        )
    except StackDeletionError as exc:
        log.error("%s", exc)


def charge_idle(instance: WarmInstance) -> None:
    """Log and record the instance's idle time since `idle_since` as the pool's; the next
    charge starts now."""
    meter = Meter()
    meter.start(instance.rate, at=instance.idle_since)
    record.add(meter.charge(kind=record.POOL, stack=instance.stack_name, task=""))
    instance.idle_since = time.time()
    log.info("%s: warm pool idle, %s", instance.stack_name, meter.summary())


def _deleted(instance: WarmInstance) -> None:
    redact.unhide(instance.host_key.private_base64())
    charge_idle(instance)


async def retire_all_idle(pool: Pool = POOL) -> None:
    """Delete every idle stack now and wait for each (for tests and orderly shutdowns)."""
    await asyncio.gather(*(retire(i, "the pool was emptied", wait=True) for i in pool.drain()))


def _delete_idle_at_exit() -> None:
    """At a normal exit (`covalent stop`): a `DeleteStack` request for every idle stack;
    CloudFormation finishes the deletions without this process."""
    for instance in POOL.drain():
        instance.remote.close()
        try:
            Stacks(AWS(instance.options).cloudformation).delete(instance.stack_name)
        except EC2ExecutorError as exc:
            log.error("%s: could not request deletion at exit: %s", instance.stack_name, exc)


atexit.register(_delete_idle_at_exit)
