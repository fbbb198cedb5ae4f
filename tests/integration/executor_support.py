"""Driving `EC2Executor` directly (setup, run, teardown) against the moto server and the
emulated boot, the way Covalent's `AsyncBaseExecutor.execute` does."""

from __future__ import annotations

import asyncio
import getpass
import io
from collections.abc import Callable
from typing import Any

from harness import free_port

from ec2_executor import EC2Executor

NewExecutor = Callable[..., EC2Executor]
"""The `new_executor` fixture: an `EC2Executor` with the local settings, keywords overriding."""


def harness_options(subnet_id: str, remote_cache: str, **overrides: Any) -> dict[str, Any]:
    """The local settings: the loopback subnet, private address, our own port and user."""
    return {
        "subnet": subnet_id,
        "use_private_ip": True,
        "ssh_port": free_port(),
        "username": getpass.getuser(),
        "ssh_ingress_cidr": "127.0.0.0/8",
        "remote_cache": remote_cache,
        "provision_timeout": 120,
        **overrides,
    }


def guest_options(subnet_id: str, gateway: str, **overrides: Any) -> dict[str, Any]:
    """The settings for real guests: their subnet and image user, ingress from the bridge."""
    return {
        "subnet": subnet_id,
        "use_private_ip": True,
        "ssh_port": 2222,
        "username": "ec2-user",
        "ssh_ingress_cidr": f"{gateway}/32",
        "provision_timeout": 300,
        **overrides,
    }


async def execute(
    executor: EC2Executor,
    function: Any,
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    dispatch_id: str = "dispatch-1",
    node_id: int = 0,
) -> Any:
    """What `AsyncBaseExecutor.execute` does, minus the server channel."""
    executor._task_stdout, executor._task_stderr = io.StringIO(), io.StringIO()
    metadata = {"dispatch_id": dispatch_id, "node_id": node_id, "results_dir": ""}
    try:
        await executor.setup(metadata)
        return await executor.run(function, args, kwargs, metadata)
    finally:
        await executor.teardown(metadata)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def fan_out(
    executors: list[EC2Executor],
    function: Any,
    args_of: Callable[[int], list[Any]],
    dispatch_id: str,
) -> list[Any]:
    """One lattice's fan-out: node `i` runs `function(*args_of(i))` on `executors[i]`, all at
    once; each result, or the exception it raised, in node order."""

    async def electrons() -> list[Any]:
        return await asyncio.gather(
            *(
                execute(ex, function, args_of(node), {}, dispatch_id=dispatch_id, node_id=node)
                for node, ex in enumerate(executors)
            ),
            return_exceptions=True,
        )

    return list(run(electrons()))
