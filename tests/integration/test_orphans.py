"""Nothing outlives its owner: the instance's owner watch (`owner-watch.sh`, against real
sockets and through the emulated boot), and the sweep of the stacks that orphans leave
(moto server, real sshd, a dispatcher in a process of its own that is killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from click.testing import CliRunner
from dispatchers import dispatcher
from executor_support import execute, harness_options, run
from harness import EmulatedBoot, LoopbackNetwork, MotoServer
from harness.cloud_state import assert_nothing_left, instances_in, live_stacks
from harness.waiting import wait_until
from remote_tasks import sleepy

from cdk_stacks.parameters import StackParameters
from cdk_stacks.shape import NetworkMode, StackShape
from cdk_stacks.templates import template_for
from cdk_stacks.user_data import package_file
from ec2_executor import sweep
from ec2_executor.access import KeyPair
from ec2_executor.cli.main import main
from ec2_executor.cloud.stacks import stack_name, stack_tags
from ec2_executor.ec2 import EC2Executor
from ec2_executor.options import build
from ec2_executor.owner import owner_id

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ORPHAN_SECONDS = 6
"""The emulated instances' orphan limit (`EC2_EXECUTOR_ORPHAN_SECONDS`)."""


# --- the owner watch alone, against a listening socket on loopback -------------------------


class Watch:
    """`owner-watch.sh` watching a port a test listens on, with a power-off that only marks."""

    def __init__(self, tmp_path: Path, limit: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.prefix = tmp_path / "opt"
        self.prefix.mkdir()
        self.ran = tmp_path / "poweroff-ran"
        self.output = ""
        env = {
            **os.environ,
            "EC2_EXECUTOR_POWEROFF": f"touch {self.ran}",
            "EC2_EXECUTOR_SSHD_ADDRESS": "127.0.0.1",
        }
        script = str(package_file("owner-watch.sh"))
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            ["bash", script, str(self.prefix), str(limit), str(self.port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def connect(self) -> tuple[socket.socket, socket.socket]:
        client = socket.create_connection(("127.0.0.1", self.port))
        accepted, _ = self.listener.accept()
        return client, accepted

    @property
    def powered_off(self) -> bool:
        return (self.prefix / "poweroff").exists()

    def wait_powered_off(self, timeout: float) -> float:
        """Seconds from `started` to the power-off."""
        deadline = time.monotonic() + timeout
        while not self.powered_off:
            assert time.monotonic() < deadline, "no power-off"
            time.sleep(0.1)
        return time.monotonic() - self.started

    def close(self) -> str:
        """Stop the watch; its output (idempotent)."""
        if self.process.returncode is None:
            self.process.kill()
            self.output, _ = self.process.communicate()
            self.listener.close()
        return self.output


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[Any]:
    made: list[Watch] = []

    def make(limit: int) -> Watch:
        made.append(Watch(tmp_path, limit))
        return made[-1]

    yield make
    for w in made:
        w.close()


def _hang_up(ends: tuple[socket.socket, socket.socket]) -> None:
    for end in ends:
        end.close()


def test_the_watch_powers_off_once_the_owner_is_gone_and_not_after_a_blip(watch: Any) -> None:
    w = watch(4)
    ends = w.connect()
    time.sleep(2.5)
    _hang_up(ends)
    time.sleep(2)  # a blip: shorter than the limit
    ends = w.connect()
    time.sleep(5)  # longer than the limit, connected: present all along
    assert not w.powered_off
    _hang_up(ends)
    gone = time.monotonic()
    w.wait_powered_off(timeout=15)
    waited = time.monotonic() - gone
    # The watch counts whole seconds of /proc/uptime: it may end up to a second early.
    assert 2.5 < waited < 7.0, waited
    time.sleep(0.5)
    assert w.ran.exists()  # the power-off command ran, once the file was written
    assert "owner connected" in w.close()


def test_the_watch_counts_from_its_start_until_a_first_connection(watch: Any) -> None:
    w = watch(3)
    lived = w.wait_powered_off(timeout=15)
    assert 1.5 < lived < 7.0, lived  # whole seconds of /proc/uptime, as above
    assert "no connection from the owner for 3 s" in (w.prefix / "poweroff").read_text()


# --- a dispatcher killed mid-task, on the emulated cloud -----------------------------------


def running_task(boot: EmulatedBoot, remote_cache: str) -> str:
    """The instance id once a task runs on it (its directory holds the payload)."""
    wait_until(lambda: boot.booted_count == 1, 120, "the other dispatcher's instance")
    [instance] = boot.instances
    wait_until(lambda: list(Path(remote_cache).glob("*/payload.pkl")), 60, "the task")
    return instance.instance_id


def cli(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def fresh_sweep() -> Iterator[None]:
    sweep.forget()
    yield
    sweep.forget()


@pytest.mark.parametrize(
    "boot_bootstrap_env",
    [{"EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1", "EC2_EXECUTOR_ORPHAN_SECONDS": str(ORPHAN_SECONDS)}],
)
def test_a_dispatcher_killed_mid_task_leaves_nothing_behind(
    loopback_network: LoopbackNetwork,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    remote_cache: str,
    tmp_path: Path,
    fresh_sweep: None,
    package_log: pytest.LogCaptureFixture,
) -> None:
    """While the other dispatcher lives, neither this process's sweep nor `cleanup` touches
    its electron; killed, its instance powers itself off after the orphan limit, and this
    process's next electron sweeps its stack."""
    options = harness_options(loopback_network.subnet_id, remote_cache)
    other = dispatcher(tmp_path, options, "other-dispatch")
    try:
        instance_id = running_task(emulated_boot, remote_cache)
        [stack] = live_stacks(moto_reset)
        assert run(sweep.sweep(build(options))) == []  # alive: not proven orphaned
        [row] = json.loads(cli("list", "--json").output)
        assert row["state"] == "running a task"
        assert row["owner"] not in ("-", owner_id())
        assert "Leaving 1 stack(s)" in cli("cleanup", "--yes").output
        time.sleep(ORPHAN_SECONDS + 2)  # the connection stays: no power-off however long
        assert instances_in(moto_reset, "running") == [instance_id]
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    killed = time.monotonic()
    emulated_boot.wait_stopped(instance_id, timeout=ORPHAN_SECONDS + 20)
    # The watch last saw the connection at most one tick (1 s) before the kill, and counts
    # the limit from there; `killed` is read a little after the kill itself.
    assert time.monotonic() - killed > ORPHAN_SECONDS - 1.5, "powered off before the limit"
    record = emulated_boot.get(instance_id)
    assert "no connection from the owner" in (record.prefix / "poweroff").read_text()
    assert live_stacks(moto_reset) == [stack]  # the orphan's stack stays until a sweep

    async def next_electron() -> list[str]:
        assert await execute(EC2Executor(**options), abs, [-1], {}, dispatch_id="next") == 1
        return await sweep.sweep_once(build(options))  # the sweep its setup started

    assert run(next_electron()) == [stack]
    assert f"sweep: deleting stack {stack}" in package_log.text
    wait_until(lambda: not live_stacks(moto_reset), 60, "the orphan's stack to go")
    assert_nothing_left(moto_reset)


def test_cleanup_without_all_sweeps_an_orphan_but_not_a_live_electron(
    loopback_network: LoopbackNetwork,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    remote_cache: str,
    tmp_path: Path,
) -> None:
    """Two other dispatchers: one killed, its instance stopped since (an orphan), one alive.
    `list` tells their stacks apart; `cleanup` without --all deletes only the orphan's."""
    options = harness_options(loopback_network.subnet_id, remote_cache)
    dead, alive = (dispatcher(tmp_path, options, d) for d in ("dead", "alive"))
    try:
        wait_until(lambda: len(list(Path(remote_cache).glob("*/payload.pkl"))) == 2, 180, "tasks")
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        orphan, live = stack_name("dead", 0), stack_name("alive", 0)
        moto_reset.client("ec2").stop_instances(InstanceIds=[_instance_of(moto_reset, orphan)])
        rows = {r["name"]: r for r in json.loads(cli("list", "--json").output)}
        assert rows[orphan]["state"] == "orphan: instance gone"
        assert rows[live]["state"] == "running a task"
        assert rows[orphan]["owner"] != rows[live]["owner"]
        cleaned = cli("cleanup", "--yes").output
        assert f"deleted {orphan}" in cleaned
        assert f"deleted {live}" not in cleaned
        assert live_stacks(moto_reset) == [live]
    finally:
        for process in (dead, alive):
            process.send_signal(signal.SIGKILL)
            process.wait()


def _instance_of(moto: MotoServer, stack: str) -> str:
    resources = moto.client("cloudformation").describe_stack_resources(StackName=stack)
    return next(
        r["PhysicalResourceId"]
        for r in resources["StackResources"]
        if r["ResourceType"] == "AWS::EC2::Instance"
    )


@pytest.mark.parametrize(
    "boot_bootstrap_env",
    [{"EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1", "EC2_EXECUTOR_ORPHAN_SECONDS": str(ORPHAN_SECONDS)}],
)
def test_a_silent_connection_shorter_than_the_keepalive_limit_does_not_end_the_task(
    loopback_network: LoopbackNetwork,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    remote_cache: str,
) -> None:
    """sshd frozen for longer than the orphan limit: the connection is silent but open, as
    over a dropped route that comes back, so the owner is present and the task completes."""
    executor = EC2Executor(**harness_options(loopback_network.subnet_id, remote_cache))

    async def freeze_mid_task() -> Any:
        task = asyncio.ensure_future(execute(executor, sleepy, [ORPHAN_SECONDS * 3], {}))
        await asyncio.to_thread(running_task, emulated_boot, remote_cache)
        [instance] = emulated_boot.instances
        emulated_boot.freeze_sshd(instance.instance_id)
        await asyncio.sleep(ORPHAN_SECONDS + 3)
        emulated_boot.thaw_sshd(instance.instance_id)
        return await task

    assert run(freeze_mid_task()) is not None
    [instance] = emulated_boot.instances
    assert not (instance.prefix / "poweroff").exists()


@pytest.mark.parametrize(
    "boot_bootstrap_env",
    [{"EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1", "EC2_EXECUTOR_ORPHAN_SECONDS": str(ORPHAN_SECONDS)}],
)
def test_a_warm_instance_whose_process_died_powers_off_and_is_swept(
    loopback_network: LoopbackNetwork,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    remote_cache: str,
    tmp_path: Path,
) -> None:
    """Idle in the other dispatcher's pool, the instance is owned (the pool keeps its
    connection); once that process is killed it powers itself off long before its idle
    power-off, and the sweep removes its stack."""
    options = harness_options(loopback_network.subnet_id, remote_cache, keep_warm_minutes=5)
    other = dispatcher(tmp_path, options, "warm", seconds=0, linger=600)
    try:
        log = tmp_path / "warm.log"
        wait_until(lambda: "woke" in log.read_text(), 180, "the warm electron")
        [instance] = emulated_boot.instances
        time.sleep(ORPHAN_SECONDS + 2)  # idle, and owned all along
        assert not (instance.prefix / "poweroff").exists()
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    emulated_boot.wait_stopped(instance.instance_id, timeout=ORPHAN_SECONDS + 20)
    assert "no connection from the owner" in (instance.prefix / "poweroff").read_text()
    [stack] = live_stacks(moto_reset)
    sweep.forget()
    assert run(sweep.sweep(build(options))) == [stack]
    wait_until(lambda: not live_stacks(moto_reset), 60, "the orphan's stack to go")
    assert_nothing_left(moto_reset)


def test_a_created_vpc_orphan_is_swept_up_to_the_deletion_request(
    moto_reset: MotoServer, package_log: pytest.LogCaptureFixture
) -> None:
    """moto cannot delete the created-VPC shape (README, "Testing without AWS"): the sweep is
    followed up to CloudFormation's acceptance of the `DeleteStack`."""
    cfn = moto_reset.client("cloudformation")
    body = template_for(StackShape(network=NetworkMode.CREATED))
    host, client = KeyPair.generate(), KeyPair.generate()
    parameters = StackParameters(
        AuthorizedKey=client.public_openssh,
        HostKey=host.private_base64(),
        SshIngressCidr="127.0.0.1/32",
        PythonVersion="3.11",
        CovalentVersion="0.240.0",
        CloudpickleVersion="3.1.1",
    )
    name = stack_name("created-vpc-orphan", 0)
    tags = stack_tags(
        dispatch_id="created-vpc-orphan",
        node_id=0,
        version="0",
        instance_type="t2.micro",
        extra={},
        owner="0123456789abcdef",
    )
    cfn.create_stack(
        StackName=name,
        TemplateBody=body,
        Parameters=parameters.to_cloudformation(declared=frozenset(json.loads(body)["Parameters"])),
        Tags=tags,  # type: ignore[arg-type]
    )
    wait_until(lambda: _status(cfn, name) == "CREATE_COMPLETE", 60, "the stack")
    outputs = cfn.describe_stacks(StackName=name)["Stacks"][0]["Outputs"]
    instance = next(o["OutputValue"] for o in outputs if o["OutputKey"] == "InstanceId")
    moto_reset.client("ec2").terminate_instances(InstanceIds=[instance])
    sweep.forget()
    options = build({"region": moto_reset.client("ec2").meta.region_name})
    swept = run(sweep.sweep(options))
    assert f"sweep: deleting stack {name}: orphan: instance gone" in package_log.text
    if swept != [name]:  # moto deletes inside DeleteStack, and fails on this shape
        assert f"sweep: stack {name} stays" in package_log.text
        assert "DependencyViolation" in package_log.text


def _status(cfn: Any, name: str) -> str:
    return str(cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"])


def test_a_dead_owner_on_this_machine_is_proven_gone_before_its_instance_ends(
    loopback_network: LoopbackNetwork,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    remote_cache: str,
    tmp_path: Path,
) -> None:
    """The other dispatcher ran here: once it is killed, its note proves it dead, so its
    stack is an orphan at once (`list`), and `cleanup` without --all deletes it."""
    options = harness_options(loopback_network.subnet_id, remote_cache)
    other = dispatcher(tmp_path, options, "noted")
    try:
        running_task(emulated_boot, remote_cache)
        [row] = json.loads(cli("list", "--json").output)
        assert row["state"] == "running a task"
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    [row] = json.loads(cli("list", "--json").output)
    assert row["state"] == "orphan: owner gone"
    assert f"deleted {row['name']}" in cli("cleanup", "--yes").output
    wait_until(lambda: not instances_in(moto_reset, "pending", "running"), 60, "the instance")
    assert_nothing_left(moto_reset)
