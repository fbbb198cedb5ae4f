"""The instance side through real sshd: streams, remote errors, lost instances, pinned keys."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import cloudpickle
import pytest
from covalent._shared_files.exceptions import TaskRuntimeError
from executor_support import execute, harness_options, run
from harness import LoopbackNetwork, MotoServer

from ec2_executor import BootstrapError, ConnectionLostError, RemoteError
from ec2_executor.access import ClientIdentity, KeyPair
from ec2_executor.ec2 import EC2Executor
from ec2_executor.remote import Endpoint, RemoteHost

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def noisy() -> str:
    import subprocess

    print("to stdout")
    print("to stderr", file=sys.stderr)
    subprocess.run(["echo", "from a child process"], check=True)
    return "done"


def boom() -> None:
    raise ValueError("boom")


def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def test_stdout_and_stderr_come_back_including_child_processes(
    loopback_network: LoopbackNetwork, emulated_boot: Any, remote_cache: str
) -> None:
    ex = EC2Executor(**harness_options(loopback_network.subnet_id, remote_cache))
    assert run(execute(ex, noisy, [], {})) == "done"
    assert ex.task_stdout.getvalue() == "to stdout\nfrom a child process\n"
    assert ex.task_stderr.getvalue() == "to stderr\n"


def test_a_remote_exception_fails_the_task_with_its_traceback(
    loopback_network: LoopbackNetwork,
    emulated_boot: Any,
    remote_cache: str,
    moto_reset: MotoServer,
) -> None:
    ex = EC2Executor(**harness_options(loopback_network.subnet_id, remote_cache))
    with pytest.raises(TaskRuntimeError):
        run(execute(ex, boom, [], {}))
    stderr = ex.task_stderr.getvalue()
    assert "Traceback (most recent call last)" in stderr
    assert ", in boom" in stderr  # the remote frame (source lines stay on the dispatcher)
    assert "ValueError: boom" in stderr
    assert all(
        s["StackStatus"] == "DELETE_COMPLETE"
        for s in moto_reset.client("cloudformation").list_stacks()["StackSummaries"]
    )


def test_a_vanished_instance_fails_the_task_saying_so(
    loopback_network: LoopbackNetwork,
    emulated_boot: Any,
    remote_cache: str,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ec2_executor.electron.WATCH_INTERVAL", 0.5)
    ex = EC2Executor(**harness_options(loopback_network.subnet_id, remote_cache))
    ec2 = moto_reset.client("ec2")

    async def terminate_while_running() -> None:
        task = asyncio.ensure_future(execute(ex, sleepy, [60], {}))
        while not emulated_boot.instances:
            await asyncio.sleep(0.2)
        instance = emulated_boot.instances[0]
        emulated_boot.wait_bootstrap(instance.instance_id)
        await asyncio.sleep(2)  # the task is running now
        ec2.terminate_instances(InstanceIds=[instance.instance_id])
        with pytest.raises(ConnectionLostError, match=instance.instance_id):
            await task

    run(terminate_while_running())


def test_bootstrap_failure_is_reported_with_its_log(
    loopback_network: LoopbackNetwork,
    emulated_boot: Any,
    remote_cache: str,
) -> None:
    ex = EC2Executor(
        **harness_options(loopback_network.subnet_id, remote_cache, python_version="3.99")
    )
    with pytest.raises(BootstrapError, match=r"bootstrap failed[\s\S]*3\.99"):
        run(execute(ex, noisy, [], {}))


def test_the_connection_refuses_any_host_key_but_the_pinned_one(
    loopback_network: LoopbackNetwork,
    emulated_boot: Any,
    moto_reset: MotoServer,
) -> None:
    from harness import render_user_data

    host, client = KeyPair.generate(), KeyPair.generate()
    ec2 = moto_reset.client("ec2")
    instance = ec2.run_instances(
        ImageId="ami-12345678",
        MinCount=1,
        MaxCount=1,
        SubnetId=loopback_network.subnet_id,
        UserData=render_user_data(
            authorized_keys=[client.public_openssh], host_key_pem=host.private_openssh
        ),
    )["Instances"][0]
    booted = emulated_boot.wait_booted(instance["InstanceId"])
    endpoint = Endpoint(host=booted.private_ip, port=booted.port, user=_user())
    identity = ClientIdentity(key=client.paramiko_key(), authorized_key=client.public_openssh)

    impostor = RemoteHost(endpoint, identity, KeyPair.generate().public_key())
    with impostor, pytest.raises(RemoteError, match="host key other than the one pinned"):
        impostor.connect()
    with RemoteHost(endpoint, identity, host.public_key()) as pinned:
        pinned.connect()
        assert pinned.execute("echo pinned")[1] == b"pinned\n"
        assert pinned.round_trips == 2


def test_one_connection_and_three_round_trips_per_task(
    loopback_network: LoopbackNetwork,
    emulated_boot: Any,
    remote_cache: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts: list[RemoteHost] = []
    real_init = RemoteHost.__init__

    def spy(self: RemoteHost, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        hosts.append(self)

    monkeypatch.setattr(RemoteHost, "__init__", spy)
    ex = EC2Executor(**harness_options(loopback_network.subnet_id, remote_cache))
    assert run(execute(ex, noisy, [], {})) == "done"
    assert len(hosts) == 1
    assert hosts[0].round_trips == 3  # connect+auth, wait for bootstrap, run with payload


def _user() -> str:
    import getpass

    return getpass.getuser()
