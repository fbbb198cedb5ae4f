"""Warm instances (`keep_warm_minutes`) against the moto server and real sshd instances.

Every test runs its electrons in one event loop, as the Covalent server does (the pool's idle
timers live on it), with the pool's idle expiry cut to seconds, and ends with nothing left.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from covalent._shared_files.exceptions import TaskCancelledError, TaskRuntimeError
from executor_support import execute, harness_options, run
from harness import EmulatedBoot, LoopbackNetwork, MotoServer
from harness.cloud_state import assert_nothing_left, instances_in, live_stacks
from harness.processes import alive, children
from remote_tasks import boom

from ec2_executor.ec2 import EC2Executor
from ec2_executor.warm.pool import POOL, retire_all_idle

cloudpickle.register_pickle_by_value(sys.modules[__name__])

IDLE_SECONDS = 600.0
"""The pool's expiry in tests that do not test expiry: long enough never to fire mid-test."""


def where() -> tuple[int, int, str]:
    """The task's own pid, its parent's (the fork server) and its working directory."""
    return os.getpid(), os.getppid(), os.getcwd()


def set_state(remote_cache: str) -> str:
    """Leaves what a task could leave behind: module state, the environment, the working
    directory, and a file in its own task directory (the only one under `remote_cache` now)."""
    import json
    from pathlib import Path

    json.ec2_executor_mark = "left over"  # type: ignore[attr-defined]
    os.environ["EC2_EXECUTOR_LEFT_OVER"] = "1"
    os.chdir("/tmp")
    for task_dir in Path(remote_cache).iterdir():
        (task_dir / "left-over").write_text("from the previous task")
    return "set"


def read_state(remote_cache: str) -> tuple[bool, bool, str, list[str]]:
    import json
    from pathlib import Path

    return (
        hasattr(json, "ec2_executor_mark"),
        "EC2_EXECUTOR_LEFT_OVER" in os.environ,
        os.getcwd(),
        [str(p) for p in Path(remote_cache).rglob("left-over")],
    )


def sleep_long() -> str:
    time.sleep(120)
    return "not cancelled"


def created_stacks(moto: MotoServer) -> list[str]:
    """Every stack ever created since the reset, deleted ones included."""
    summaries = moto.client("cloudformation").list_stacks()["StackSummaries"]
    return [s["StackName"] for s in summaries]


async def wait_until(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


def retire_and_leave_nothing(moto: MotoServer) -> None:
    """Retire the idle instances; once their stacks are deleted, nothing is left."""
    run(retire_all_idle())
    asyncio.run(wait_until(lambda: not live_stacks(moto)))
    assert_nothing_left(moto)


@pytest.fixture
def pool() -> Iterator[Any]:
    POOL.idle_seconds = IDLE_SECONDS
    try:
        yield POOL
    finally:
        run(retire_all_idle())
        POOL.idle_seconds = None


@pytest.fixture
def warm(
    loopback_network: LoopbackNetwork, remote_cache: str, emulated_boot: EmulatedBoot, pool: Any
) -> Callable[..., EC2Executor]:
    """Makes warm-capable executors with one reuse key (one SSH port for all), on the emulated
    boot and the pool; a keyword overrides an option, and so changes the key."""
    options = harness_options(loopback_network.subnet_id, remote_cache, keep_warm_minutes=5)
    return lambda **overrides: EC2Executor(**{**options, **overrides})


async def in_a_row(
    make: Callable[[], EC2Executor], function: Any, count: int, first_node: int = 0
) -> list[Any]:
    return [await execute(make(), function, [], {}, node_id=first_node + n) for n in range(count)]


def test_five_in_a_row_share_one_stack_and_nothing_leaks(
    warm: Callable[..., EC2Executor], moto_reset: MotoServer, remote_cache: str, pool: Any
) -> None:
    async def scenario() -> list[Any]:
        results = await in_a_row(warm, where, 3)
        results += [await execute(warm(), set_state, [remote_cache], {}, node_id=3)]
        results += [await execute(warm(), read_state, [remote_cache], {}, node_id=4)]
        return results

    results = run(scenario())
    assert len(created_stacks(moto_reset)) == 1
    pids = [pid for pid, _, _ in results[:3]]
    parents = {parent for _, parent, _ in results[:3]}
    assert len(set(pids)) == 3 and len(parents) == 1  # a fresh child of one fork server each
    home = pwd.getpwuid(os.getuid()).pw_dir  # where sshd, and so the worker, starts a task
    assert {cwd for _, _, cwd in results[:3]} == {home}
    assert results[3] == "set"
    # Module state, the environment, the directory and the task's files did not outlive it.
    assert results[4] == (False, False, home, [])
    # Each task's directory went once its result was fetched.
    assert not Path(remote_cache).exists() or list(Path(remote_cache).iterdir()) == []
    assert len(pool.idle()) == 1
    retire_and_leave_nothing(moto_reset)


def test_zero_keeps_todays_stack_per_electron(
    warm: Callable[..., EC2Executor], moto_reset: MotoServer, pool: Any
) -> None:
    assert run(in_a_row(lambda: warm(keep_warm_minutes=0), where, 5))
    assert len(created_stacks(moto_reset)) == 5
    assert pool.idle() == []
    asyncio.run(wait_until(lambda: not live_stacks(moto_reset)))
    assert_nothing_left(moto_reset)


def test_each_instance_type_reuses_its_own_stack(
    warm: Callable[..., EC2Executor], moto_reset: MotoServer
) -> None:
    async def scenario() -> None:
        for node in range(4):
            kind = ("t2.micro", "t3.micro")[node % 2]
            ex = warm(instance_type=kind)
            await execute(ex, where, [], {}, node_id=node)

    run(scenario())
    cf = moto_reset.client("cloudformation")
    kinds = sorted(
        next(p["ParameterValue"] for p in s["Parameters"] if p["ParameterKey"] == "InstanceType")
        for s in cf.describe_stacks()["Stacks"]
    )
    assert kinds == ["t2.micro", "t3.micro"]
    assert len(created_stacks(moto_reset)) == 2
    retire_and_leave_nothing(moto_reset)


def test_three_at_once_then_three_more_make_three_stacks(
    warm: Callable[..., EC2Executor], moto_reset: MotoServer, pool: Any
) -> None:
    async def wave(first: int) -> list[Any]:
        return await asyncio.gather(
            *(execute(warm(), where, [], {}, node_id=n) for n in range(first, first + 3))
        )

    async def scenario() -> None:
        await wave(0)
        await wave(3)

    run(scenario())
    assert len(created_stacks(moto_reset)) == 3
    assert len(pool.idle()) == 3
    retire_and_leave_nothing(moto_reset)


def test_idle_expiry_deletes_the_stack(
    warm: Callable[..., EC2Executor], moto_reset: MotoServer, pool: Any
) -> None:
    pool.idle_seconds = 2.0

    async def scenario() -> None:
        await execute(warm(), where, [], {})
        assert len(live_stacks(moto_reset)) == 1 and len(pool.idle()) == 1
        await wait_until(lambda: not live_stacks(moto_reset))

    run(scenario())
    assert pool.idle() == []
    assert_nothing_left(moto_reset)


async def _terminate_the_instance(moto: MotoServer, boot: EmulatedBoot, _: Any) -> None:
    (gone,) = instances_in(moto, "pending", "running")
    moto.client("ec2").terminate_instances(InstanceIds=[gone])
    await asyncio.to_thread(boot.wait_stopped, gone)


async def _kill_the_worker(moto: MotoServer, boot: EmulatedBoot, first: Any) -> None:
    _, server, _ = first
    os.kill(server, signal.SIGKILL)
    await wait_until(lambda: not alive(server))  # SIGKILL takes effect when it is scheduled


@pytest.mark.parametrize(
    ("breaks", "why"),
    [
        (_terminate_the_instance, "refused or did not answer"),
        (_kill_the_worker, "the warm worker is not running"),
    ],
    ids=["instance-gone", "worker-dead"],
)
def test_a_broken_warm_instance_is_discarded_before_the_task(
    warm: Callable[..., EC2Executor],
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    package_log: pytest.LogCaptureFixture,
    breaks: Any,
    why: str,
) -> None:
    """Broken behind the executor's back while idle: the next electron gets a fresh stack, and
    the log says why the warm one was discarded."""

    async def scenario() -> Any:
        first = await execute(warm(), where, [], {}, node_id=0)
        await breaks(moto_reset, emulated_boot, first)
        return await execute(warm(), where, [], {}, node_id=1)

    assert run(scenario())
    assert len(created_stacks(moto_reset)) == 2
    discarded = {r.getMessage() for r in package_log.records if "discarding" in r.getMessage()}
    assert len(discarded) == 1 and why in discarded.pop()
    retire_and_leave_nothing(moto_reset)


def test_a_failed_task_s_instance_is_not_reused(
    warm: Callable[..., EC2Executor], moto_reset: MotoServer, pool: Any
) -> None:
    async def scenario() -> Any:
        with pytest.raises(TaskRuntimeError, match="The task raised ValueError: boom"):
            await execute(warm(), boom, [], {}, node_id=0)
        return await execute(warm(), where, [], {}, node_id=1)

    assert run(scenario())
    assert len(created_stacks(moto_reset)) == 2
    assert len(pool.idle()) == 1  # the second electron's
    retire_and_leave_nothing(moto_reset)


def test_cancel_on_a_warm_instance_kills_the_task_and_keeps_the_instance(
    warm: Callable[..., EC2Executor], moto_reset: MotoServer, pool: Any
) -> None:
    async def scenario() -> Any:
        _, server, _ = await execute(warm(), where, [], {}, node_id=0)
        ex = warm()
        task = asyncio.ensure_future(execute(ex, sleep_long, [], {}, node_id=1))
        await wait_until(lambda: children(server) != [])
        (child,) = children(server)
        # Covalent cancels through a freshly built executor and the job handle.
        assert await warm().cancel({}, ex._electron.job_handle()) is True
        with pytest.raises(TaskCancelledError):
            await task
        assert not alive(child)
        return await execute(warm(), where, [], {}, node_id=2)

    _, _parent, _ = run(scenario())
    assert len(created_stacks(moto_reset)) == 1
    assert len(pool.idle()) == 1
    retire_and_leave_nothing(moto_reset)


@pytest.mark.parametrize(
    "boot_bootstrap_env",
    [{"EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1", "EC2_EXECUTOR_IDLE_SECONDS": "8"}],
)
def test_an_instance_whose_executor_died_powers_itself_off(
    warm: Callable[..., EC2Executor], moto_reset: MotoServer, pool: Any
) -> None:
    from click.testing import CliRunner

    from ec2_executor.cli.main import main

    async def scenario() -> None:
        await execute(warm(), where, [], {})
        for instance in pool.drain():  # the executor dies: nothing deletes the stack
            instance.remote.close()
        await wait_until(lambda: not instances_in(moto_reset, "pending", "running"), timeout=60)

    run(scenario())
    (stack,) = live_stacks(moto_reset)
    listed = CliRunner().invoke(main, ["list", "--json"])
    assert '"state": "orphan: instance gone"' in listed.output, listed.output
    cleaned = CliRunner().invoke(main, ["cleanup", "--idle", "--yes"])
    assert cleaned.exit_code == 0, cleaned.output
    assert f"deleted {stack}" in cleaned.output
    assert_nothing_left(moto_reset)


def test_a_normal_exit_asks_to_delete_every_idle_stack(
    loopback_network: LoopbackNetwork,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    remote_cache: str,
    tmp_path: Path,
) -> None:
    """As at `covalent stop`: a process that kept an instance warm exits, and its stack goes."""
    options = harness_options(loopback_network.subnet_id, remote_cache, keep_warm_minutes=5)
    script = tmp_path / "one_warm_electron.py"
    script.write_text(
        "from executor_support import execute, run\n"
        "from ec2_executor.ec2 import EC2Executor\n"
        "from ec2_executor.warm.pool import POOL\n"
        f"print(run(execute(EC2Executor(**{options!r}), abs, [-1], {{}})), len(POOL.idle()))\n"
    )
    tests = Path(__file__).resolve().parents[1]
    path = os.pathsep.join(
        [str(tests), str(tests / "integration"), os.environ.get("PYTHONPATH", "")]
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", "1"]  # the result, and one idle instance at the exit
    assert len(created_stacks(moto_reset)) == 1
    asyncio.run(wait_until(lambda: not live_stacks(moto_reset)))
    assert_nothing_left(moto_reset)
