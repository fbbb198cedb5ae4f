"""Warm reuse for one electron (`keep_warm_minutes` > 0).

setup: `take` an idle instance of the electron's reuse key and check it (a broken one is
discarded, and the electron launches a fresh stack as usual); run: the electron is `running`,
so a cancel can reach it; teardown: `keep` gives the instance back after a whole task,
otherwise the stack is deleted as usual. Nothing here happens when `keep_warm_minutes` is 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ec2_executor.blocking import Deadline, run_blocking
from ec2_executor.electron import Electron, Launched
from ec2_executor.errors import ConnectionLostError, EC2ExecutorError, RemoteError
from ec2_executor.logs import log
from ec2_executor.pool import POOL, Pool, WarmInstance, retire_soon
from ec2_executor.remote import RUN_TASK, RemoteHost, run_probe
from ec2_executor.reuse import reuse_key

CHECK_TIMEOUT = 10.0
"""Seconds a warm instance has to answer the check before it is discarded."""
RECONNECT_TIMEOUT = 5.0
"""Seconds a warm instance has to accept a fresh login when its kept connection dropped."""
CANCEL_WAIT = 120.0
"""Seconds `cancel` waits for a cancelled electron on a warm instance to finish."""
_RUNNING: dict[str, Electron] = {}
"""Electrons whose task runs now, by stack name (what a job handle names)."""


async def take(electron: Electron, pool: Pool = POOL) -> Launched | None:
    """Put the electron on an idle instance of its key; None: launch a fresh stack."""
    if not electron.options.keep_warm_minutes:
        return None
    key = reuse_key(electron.options)
    while (instance := pool.take(key)) is not None:
        problem = await _check(instance)
        if problem is None:
            electron.adopt(instance)
            log.info(
                "%s: runs on the warm instance %s of stack %s",
                electron.task_name,
                instance.outputs.instance_id,
                instance.stack_name,
            )
            deadline = Deadline(electron.options.provision_timeout)
            return Launched(outputs=instance.outputs, identity=instance.identity, deadline=deadline)
        log.warning(
            "%s: discarding the warm instance %s of stack %s (%s); using a fresh one",
            electron.task_name,
            instance.outputs.instance_id,
            instance.stack_name,
            problem,
        )
        retire_soon(instance, problem)
    return None


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


async def keep(electron: Electron, launched: Launched | None, pool: Pool = POOL) -> bool:
    """Give the electron's instance to the pool instead of deleting it; False: delete it."""
    remote = electron.remote
    if not (electron.options.keep_warm_minutes and electron.reusable and launched and remote):
        return False
    if not await _stack_complete(electron, launched):
        return False
    instance = electron.warm or WarmInstance(
        key=reuse_key(electron.options),
        options=electron.options,
        stack_name=electron.name,
        outputs=launched.outputs,
        identity=launched.identity,
        host_key=electron.host_key,
        remote=remote,
        ends_at=electron.ends_at,
    )
    instance.remote = remote
    pool.give_back(instance)
    log.info("%s: done (%s)", electron.task_name, electron.phases.summary())
    return True


async def _stack_complete(electron: Electron, launched: Launched) -> bool:
    """Only a stack that reached CREATE_COMPLETE is kept (a task can end before it does)."""
    completion = electron.completion
    if completion is None:
        return True
    try:
        await asyncio.wait_for(asyncio.shield(completion), launched.deadline.remaining + 5.0)
    except (TimeoutError, EC2ExecutorError) as exc:
        log.info("%s: not kept warm: the stack did not complete (%s)", electron.name, exc)
        return False
    return True


@contextmanager
def running(electron: Electron) -> Iterator[None]:
    """While the task runs, `cancel` can find the electron by its stack's name."""
    if not electron.options.keep_warm_minutes:
        yield
        return
    electron.loop = asyncio.get_running_loop()
    _RUNNING[electron.name] = electron
    try:
        yield
    finally:
        _RUNNING.pop(electron.name, None)


async def cancel(stack_name: str) -> bool:
    """Cancel the task running on this stack's warm-capable instance, in this process.

    The electron kills its task's process; the instance goes back to the pool only when the
    kill is confirmed, else its stack is deleted. False: no such electron here.
    """
    electron = _RUNNING.get(stack_name)
    if electron is None or electron.loop is None:
        return False
    electron.loop.call_soon_threadsafe(electron.cancel_event.set)
    waited = time.monotonic() + CANCEL_WAIT
    while _RUNNING.get(stack_name) is electron and time.monotonic() < waited:
        await asyncio.sleep(0.1)
    return True
