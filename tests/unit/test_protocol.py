"""run-task.sh and `protocol.Exit` name the same exit statuses, and each has its own error."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest

from ec2_executor.errors import BootstrapError, ConnectionLostError, RemoteError, TaskError
from ec2_executor.instance.protocol import MARK, Exit
from ec2_executor.remote import task_failure

SCRIPT = files("ec2_executor.instance").joinpath("run-task.sh").read_text()


def test_every_exit_status_of_the_script_is_named_and_every_name_is_used() -> None:
    in_script = {int(code) for code in re.findall(r"\bexit (\d+)\b", SCRIPT)}
    assert in_script - {0, 1} == {e.value for e in Exit} - {Exit.OK}


def test_the_script_writes_its_own_lines_with_the_mark() -> None:
    assert re.search(rf"^mark='{MARK}'", SCRIPT, re.M)


def test_the_header_documents_every_status() -> None:
    header = SCRIPT.split("set -uo pipefail", 1)[0]
    for status in Exit:
        if status is not Exit.OK:
            assert re.search(rf"\b{status.value}\b", header), status


@pytest.mark.parametrize(
    ("status", "kind", "says"),
    [
        (Exit.BOOTSTRAP_FAILED, BootstrapError, "bootstrap failed"),
        (Exit.BOOTSTRAP_TIMED_OUT, BootstrapError, "did not finish in 'provision_timeout'"),
        (Exit.PAYLOAD_NOT_WRITTEN, RemoteError, "payload could not be written"),
        (Exit.WORKER_DIED, ConnectionLostError, "the worker died"),
        (Exit.NO_RESULT, TaskError, "ended without a result (killed by signal 9"),
        (255, ConnectionLostError, "may have stopped"),
    ],
)
def test_each_status_has_its_own_error(status: int, kind: type[Exception], says: str) -> None:
    said: dict[int, str] = {
        Exit.WORKER_DIED: f"{MARK} the worker died; see worker.log",
        Exit.NO_RESULT: f"{MARK} the task's process ended without a result (killed by signal 9",
    }
    out = f"{MARK} failed\nthe log".encode()
    error = task_failure("instance i-1", status, out, said.get(status, ""))
    assert type(error) is kind
    assert says in str(error)
