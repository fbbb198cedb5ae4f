"""Warm reuse behind one seam: an electron holds a `Lease` from setup to teardown.

    lease = await acquire(options, label)   # setup: an idle instance of the reuse key, checked
    ... lease.stack, lease.launched, lease.host: what the electron runs on (None: launch anew)
    with lease.running(electron.name): ...  # run: a cancel in this process can reach the task
    lease.stop(host, reason)                # a cancel kills the task and may keep the instance
    await lease.release(electron, launched, host)  # teardown: True when the instance was kept

With `keep_warm_minutes` 0 the lease is empty: it finds nothing, keeps nothing, and stopping
closes the connection, exactly as without warm reuse. The pool (`pool.POOL`) owns all state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ec2_executor.blocking import Deadline, run_blocking
from ec2_executor.electron import (
    Electron,
    ExistingStack,
    Host,
    Launched,
    kill_task,
    task_dir,
)
from ec2_executor.errors import ConnectionLostError, EC2ExecutorError, RemoteError
from ec2_executor.logs import log
from ec2_executor.options import Options
from ec2_executor.remote import RUN_TASK, RemoteHost, run_probe
from ec2_executor.warm.pool import POOL, Pool, WarmInstance, retire_soon
from ec2_executor.warm.reuse import reuse_key
from ec2_executor.watch import CancelRequested

CHECK_TIMEOUT = 10.0
"""Seconds a warm instance has to answer the check before it is discarded."""
RECONNECT_TIMEOUT = 5.0
"""Seconds a warm instance has to accept a fresh login when its kept connection dropped."""
CANCEL_WAIT = 120.0
"""Seconds `cancel` waits for a cancelled electron on a warm instance to finish."""


@dataclass(eq=False)
class Lease:
    """One electron's use of warm reuse; empty when `keep_warm_minutes` is 0."""

    options: Options
    pool: Pool = POOL
    instance: WarmInstance | None = None
    """The idle instance the electron was lent, if any."""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set (on `loop`) by `cancel`, from another executor object of this process."""
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def enabled(self) -> bool:
        return self.options.keep_warm_minutes > 0

    @property
    def stack(self) -> ExistingStack | None:
        """The warm instance's stack, for the electron to run on; None: create one."""
        i = self.instance
        return ExistingStack(i.stack_name, i.host_key, i.ends_at, i.rate, i.budget) if i else None

    @property
    def launched(self) -> Launched | None:
        i = self.instance
        if i is None:
            return None
        deadline = Deadline(self.options.provision_timeout)
        return Launched(outputs=i.outputs, identity=i.identity, deadline=deadline)

    def host(self, electron: Electron) -> Host | None:
        """The warm instance's checked connection, for this electron's task."""
        i = self.instance
        return Host(remote=i.remote, task_dir=task_dir(electron)) if i else None

    @contextmanager
    def running(self, stack_name: str) -> Iterator[None]:
        """While the task runs, `cancel` can find this lease by its stack's name."""
        if not self.enabled:
            yield
            return
        self.loop = asyncio.get_running_loop()
        self.pool.running[stack_name] = self
        try:
            yield
        finally:
            self.pool.running.pop(stack_name, None)

    async def stop(self, host: Host, reason: Exception) -> None:
        """End the task before its coroutine is cancelled. A cancel on a warm-capable instance
        kills the task there, and keeps the instance when the kill is confirmed; otherwise
        the connection is closed (the stack's deletion ends what runs on the instance)."""
        if self.enabled and isinstance(reason, CancelRequested):
            host.reusable = await kill_task(host)
            log.info(
                "%s: cancelled; the task's process %s",
                host.task_dir.rsplit("/", 1)[-1],
                "was killed" if host.reusable else "could not be confirmed dead",
            )
        if not host.reusable:
            host.close()

    async def release(
        self, electron: Electron, launched: Launched | None, host: Host | None
    ) -> bool:
        """Give the instance to the pool after a whole task; False: delete its stack."""
        if not (self.enabled and launched and host and host.reusable):
            return False
        if not await _stack_complete(electron.name, launched):
            return False
        instance = self.instance or WarmInstance(
            key=reuse_key(self.options),
            options=self.options,
            stack_name=electron.name,
            outputs=launched.outputs,
            identity=launched.identity,
            host_key=electron.host_key,
            remote=host.remote,
            ends_at=electron.ends_at,
            rate=electron.meter.rate,
            budget=electron.budget,
        )
        instance.remote = host.remote
        electron.record_charge()  # the electron pays for its own time; the idle is the pool's
        self.pool.give_back(instance)
        log.info(
            "%s: done (%s; %s)",
            electron.task_name,
            electron.phases.summary(),
            electron.meter.summary(),
        )
        return True


async def acquire(options: Options, label: str, pool: Pool = POOL) -> Lease:
    """A lease on an idle instance of the options' reuse key, checked; an empty lease when
    there is none (the electron launches a fresh stack) or warm reuse is off."""
    lease = Lease(options, pool)
    if not lease.enabled:
        return lease
    while (instance := pool.take(reuse_key(options))) is not None:
        problem = await _check(instance)
        if problem is None:
            log.info(
                "%s: runs on the warm instance %s of stack %s",
                label,
                instance.outputs.instance_id,
                instance.stack_name,
            )
            lease.instance = instance
            return lease
        log.warning(
            "%s: discarding the warm instance %s of stack %s (%s); using a fresh one",
            label,
            instance.outputs.instance_id,
            instance.stack_name,
            problem,
        )
        retire_soon(instance, problem)
    return lease


async def _check(instance: WarmInstance) -> str | None:
    """None when the instance answers and its worker lives; else what is wrong."""
    problem = "no check ran"
    for _ in range(2):  # the kept connection may have dropped: one fresh login
        if not instance.remote.is_connected:
            refused = await _reconnect(instance)
            if refused:
                return refused
        try:
            status, out = await run_probe(
                instance.remote, f'exec bash "{RUN_TASK}" --check', CHECK_TIMEOUT
            )
        except TimeoutError:
            return f"no answer over SSH within {CHECK_TIMEOUT:.0f} s"
        except ConnectionLostError as exc:
            instance.remote.close()
            problem = f"the SSH connection dropped ({exc})"
            continue
        if status != 0:
            return out.decode(errors="replace").strip() or f"the check exited with {status}"
        return None
    return problem


async def _reconnect(instance: WarmInstance) -> str | None:
    old = instance.remote
    fresh = RemoteHost(
        old.endpoint,
        instance.identity,
        instance.host_key.public_key(),
        connect_timeout=RECONNECT_TIMEOUT,
        keepalive=old.keepalive,
    )
    try:
        if not await run_blocking(fresh.try_connect):
            return f"SSH on {old.endpoint.host}:{old.endpoint.port} refused or did not answer"
    except RemoteError as exc:
        return str(exc)
    instance.remote = fresh
    return None


async def _stack_complete(name: str, launched: Launched) -> bool:
    """Only a stack that reached CREATE_COMPLETE is kept (a task can end before it does)."""
    completion = launched.completion
    if completion is None:
        return True
    try:
        await asyncio.wait_for(asyncio.shield(completion), launched.deadline.remaining + 5.0)
    except (TimeoutError, EC2ExecutorError) as exc:
        log.info("%s: not kept warm: the stack did not complete (%s)", name, exc)
        return False
    return True


async def cancel(stack_name: str, pool: Pool = POOL) -> bool:
    """Cancel the task running on this stack's warm-capable instance, in this process.

    The electron kills its task's process; the instance goes back to the pool only when the
    kill is confirmed, else its stack is deleted. False: no such electron here.
    """
    lease = pool.running.get(stack_name)
    if lease is None or lease.loop is None:
        return False
    lease.loop.call_soon_threadsafe(lease.cancelled.set)
    waited = time.monotonic() + CANCEL_WAIT
    while pool.running.get(stack_name) is lease and time.monotonic() < waited:
        await asyncio.sleep(0.1)
    return True
