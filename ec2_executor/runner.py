"""Runs one task on the instance.

Stdlib and cloudpickle only. Reads `(function, args, kwargs)` from PAYLOAD, runs it with file
descriptors 1 and 2 captured (so output of child processes is caught too), and writes one
cloudpickled envelope to RESULT.

Two ways in:
- `runner.py --serve DIR`: started by the bootstrap, a warm interpreter waits for the
  instance's one task (`serve`); the executor's command never waits for Python to start.
- `python -c <this source> PAYLOAD RESULT`: a fresh interpreter, when no worker is waiting;
  the envelope also goes to stdout, which the executor reads.
"""

from __future__ import annotations

import os
import pwd
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle


def _run(payload_path: str) -> dict[str, Any]:
    with open(payload_path, "rb") as payload:
        function, args, kwargs = cloudpickle.load(payload)
    envelope: dict[str, Any] = {"result": None, "exception": None, "traceback": ""}
    try:
        envelope["result"] = function(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001  (the task's failure is reported, not raised)
        envelope["exception"] = exc
        envelope["traceback"] = traceback.format_exc()
    return envelope


def _captured(run: Callable[[str], dict[str, Any]], payload_path: str) -> dict[str, Any]:
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        # Line buffering keeps the task's prints in order with its child processes' output.
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        try:
            envelope = run(payload_path)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
        for name, stream in (("stdout", out), ("stderr", err)):
            stream.seek(0)
            envelope[name] = stream.read().decode(errors="replace")
    return envelope


def _dumps(envelope: dict[str, Any]) -> bytes:
    try:
        return bytes(cloudpickle.dumps(envelope))
    except Exception:  # noqa: BLE001  (unpicklable result or exception: keep its text)
        envelope["exception"] = RuntimeError(repr(envelope["exception"] or envelope["result"]))
        envelope["result"] = None
        return bytes(cloudpickle.dumps(envelope))


def main(payload_path: str, result_path: str, *, to_stdout: bool = True) -> None:
    data = _dumps(_captured(_run, payload_path))
    with open(result_path, "wb") as result:
        result.write(data)
    if to_stdout:
        out = os.fdopen(1, "wb", closefd=False)
        out.write(data)
        out.flush()


def _preload(module: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:  # a plain-Python task still runs; the task says what is missing
        print(f"warm worker: {module} not importable: {exc}", file=sys.stderr)


def serve(directory: str) -> None:
    """Wait, warm, for one task, then run it like `main` and exit.

    `directory` (mode 0700, the task user's) holds two FIFOs, opened read-write so that no
    open ever blocks: the executor's command writes the task's directory as one line to
    `go`, then waits for a line on `done`. `pid` says a worker is waiting; it goes away once
    the task is taken, so a second command starts a fresh interpreter instead.
    """
    _preload("covalent")  # a Covalent task unpickles covalent's wrapper: import it now, warm
    try:
        os.chdir(pwd.getpwuid(os.getuid()).pw_dir)  # where sshd starts a command
    except OSError:
        os.chdir("/")  # as sshd does when the home directory is missing
    go = os.open(os.path.join(directory, "go"), os.O_RDWR)
    done = os.open(os.path.join(directory, "done"), os.O_RDWR)
    pid_path = os.path.join(directory, "pid")
    with open(f"{pid_path}.tmp", "w") as pid:
        pid.write(f"{os.getpid()}\n")
    os.replace(f"{pid_path}.tmp", pid_path)
    line = b""
    while not line.endswith(b"\n"):
        line += os.read(go, 4096)
    os.unlink(pid_path)
    task_dir = line.decode().rstrip("\n")
    try:
        main(f"{task_dir}/payload.pkl", f"{task_dir}/result.pkl", to_stdout=False)
    finally:
        os.write(done, b"done\n")


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
