"""The instance side through real sshd: streams, remote errors, lost instances, pinned keys."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from covalent._shared_files.exceptions import TaskRuntimeError
from executor_support import NewExecutor, execute, run
from harness import LoopbackNetwork, MotoServer, free_port
from harness.waiting import read_pid, wait_for_task, wait_until
from remote_tasks import boom, noisy, sleepy

from ec2_executor import BootstrapError, ConnectionLostError, RemoteError, TaskError
from ec2_executor.access import ClientIdentity, KeyPair
from ec2_executor.remote import Endpoint, RemoteHost, TaskRun, _AckAtOnceSocket

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_stdout_and_stderr_come_back_including_child_processes(
    new_executor: NewExecutor, emulated_boot: Any
) -> None:
    ex = new_executor()
    assert run(execute(ex, noisy, [], {})) == "done"
    assert ex.task_stdout.getvalue() == "to stdout\nfrom a child process\n"
    assert ex.task_stderr.getvalue() == "to stderr\n"


def test_a_remote_exception_fails_the_task_with_its_traceback(
    new_executor: NewExecutor, emulated_boot: Any, moto_reset: MotoServer
) -> None:
    ex = new_executor()
    # Covalent's TaskRuntimeError: the node FAILED, with the task's streams kept.
    with pytest.raises(TaskRuntimeError, match=r"^The task raised ValueError: boom \(on "):
        run(execute(ex, boom, [], {}))
    assert ex.task_stdout.getvalue() == "about to fail\n"
    stderr = ex.task_stderr.getvalue()
    assert stderr.startswith("failing now\nTraceback (most recent call last)"), stderr
    assert ", in boom" in stderr  # the remote frame (source lines stay on the dispatcher)
    assert "ValueError: boom" in stderr
    summaries = moto_reset.client("cloudformation").list_stacks()["StackSummaries"]
    assert [s["StackStatus"] for s in summaries] == ["DELETE_COMPLETE"]


def test_a_vanished_instance_fails_the_task_saying_so(
    new_executor: NewExecutor,
    emulated_boot: Any,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr("ec2_executor.watch.INSTANCE_POLL", 0.5)
    ex = new_executor()
    ec2, mark = moto_reset.client("ec2"), tmp_path / "task"

    async def terminate_while_running() -> None:
        task = asyncio.ensure_future(execute(ex, sleepy, [60, str(mark)], {}))
        await asyncio.to_thread(wait_for_task, mark)
        (instance,) = emulated_boot.instances
        ec2.terminate_instances(InstanceIds=[instance.instance_id])
        with pytest.raises(ConnectionLostError, match=instance.instance_id):
            await task

    run(terminate_while_running())


def test_bootstrap_failure_is_reported_with_its_log(
    new_executor: NewExecutor, emulated_boot: Any
) -> None:
    ex = new_executor(python_version="3.99")
    with pytest.raises(BootstrapError, match=r"bootstrap failed[\s\S]*3\.99"):
        run(execute(ex, noisy, [], {}))


def test_the_connection_refuses_any_host_key_but_the_pinned_one(
    loopback_network: LoopbackNetwork, emulated_boot: Any, moto_reset: MotoServer
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
        impostor.try_connect()
    with RemoteHost(endpoint, identity, host.public_key()) as pinned:
        assert pinned.try_connect()
        assert pinned.execute("echo pinned")[1] == b"pinned\n"
        assert pinned.round_trips == 2
        if hasattr(socket, "TCP_QUICKACK"):  # paramiko reads through the quick-ACK socket
            transport = pinned._connection.client.get_transport()
            assert isinstance(transport.sock, _AckAtOnceSocket)


def where_am_i() -> dict[str, Any]:
    import os

    return {
        "cwd": os.getcwd(),
        "python": sys.executable,
        "path0": os.environ["PATH"].split(":")[0],
        "home": os.environ["HOME"],
    }


class RunSpy:
    """Records every `RemoteHost` and what its `run_task` returned; `before_run` runs first."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hosts: list[RemoteHost] = []
        self.runs: list[TaskRun] = []
        self.before_run: Callable[[], None] = lambda: None
        real_init, real_run = RemoteHost.__init__, RemoteHost.run_task

        def init(host: RemoteHost, *args: Any, **kwargs: Any) -> None:
            real_init(host, *args, **kwargs)
            self.hosts.append(host)

        def run_task(host: RemoteHost, *args: Any, **kwargs: Any) -> TaskRun:
            self.before_run()
            self.runs.append(real_run(host, *args, **kwargs))
            return self.runs[-1]

        monkeypatch.setattr(RemoteHost, "__init__", init)
        monkeypatch.setattr(RemoteHost, "run_task", run_task)


def test_one_connection_two_round_trips_and_the_warm_worker_per_task(
    new_executor: NewExecutor, emulated_boot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = RunSpy(monkeypatch)
    ex = new_executor()
    assert run(execute(ex, noisy, [], {})) == "done"
    assert len(spy.hosts) == 1
    assert spy.hosts[0].round_trips == 2  # connect+auth, one command with the payload
    assert [r.warm for r in spy.runs] == [True]
    worker = emulated_boot.instances[0].prefix / "worker"
    assert (worker / "pid").exists()  # a fork server: it serves the next task as well
    assert stat.S_IMODE(worker.stat().st_mode) == 0o700


def test_without_a_waiting_worker_a_fresh_interpreter_runs_the_task_alike(
    new_executor: NewExecutor, emulated_boot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = RunSpy(monkeypatch)

    def where_the_task_runs() -> dict[str, Any]:
        ex = new_executor()
        found: dict[str, Any] = run(execute(ex, where_am_i, [], {}))
        return found

    warm = where_the_task_runs()

    def stop_the_worker() -> None:
        instance = emulated_boot.instances[-1]
        emulated_boot.wait_bootstrap(instance.instance_id)
        pid_file = instance.prefix / "worker" / "pid"
        # The worker announces itself just after the bootstrap.
        pid = wait_until(lambda: read_pid(pid_file), 30, "the warm worker's start")
        pid_file.unlink()  # what a worker that is gone leaves
        os.kill(pid, signal.SIGKILL)

    spy.before_run = stop_the_worker
    cold = where_the_task_runs()
    assert [r.warm for r in spy.runs] == [True, False]
    first, second = (str(instance.workdir) for instance in emulated_boot.instances[-2:])
    assert cold == {key: value.replace(first, second) for key, value in warm.items()}
    assert warm["path0"] == str(Path(warm["python"]).parent)
    assert warm["cwd"] == pwd.getpwuid(os.getuid()).pw_dir  # where sshd starts a command


def test_a_task_whose_process_is_killed_fails_without_running_again(
    new_executor: NewExecutor, emulated_boot: Any, tmp_path: Path
) -> None:
    marks = tmp_path / "runs"

    def count_then_die() -> None:
        import os

        with open(marks, "a") as runs:
            runs.write("ran\n")
        os.kill(os.getpid(), 9)

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = new_executor()
    with pytest.raises(TaskError, match="ended without a result \\(killed by signal 9"):
        run(execute(ex, count_then_die, [], {}))
    assert marks.read_text() == "ran\n"


def _user() -> str:
    import getpass

    return getpass.getuser()


def test_a_port_nobody_answers_is_not_up_yet_rather_than_an_error() -> None:
    """While the instance boots, a refused connection means "try again", not a failure."""
    client = KeyPair.generate()
    identity = ClientIdentity(key=client.paramiko_key(), authorized_key=client.public_openssh)
    endpoint = Endpoint(host="127.0.0.1", port=free_port(), user=_user())
    with RemoteHost(endpoint, identity, KeyPair.generate().public_key()) as remote:
        assert remote.try_connect() is False
        with pytest.raises(ConnectionLostError, match="is closed"):
            remote.execute("true")
