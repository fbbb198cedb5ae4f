"""Runs one task on the instance.

Stdlib and cloudpickle only. Reads `(function, args, kwargs)` from PAYLOAD, runs it with file
descriptors 1 and 2 captured (so output of child processes is caught too), and writes one
cloudpickled envelope to RESULT.

Two ways in:
- `runner.py --serve DIR`: started by the bootstrap, a fork server that has imported covalent
  and cloudpickle forks a fresh child per task (`serve`); no task waits for Python to start or
  pays `import covalent`, and no state passes from one task to the next.
- `python -c <this source> PAYLOAD RESULT`: a fresh interpreter, when no worker is waiting;
  the envelope also goes to stdout, which the executor reads.
"""

from __future__ import annotations

import contextlib
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
    envelope: dict[str, Any] = {"result": None, "error": "", "traceback": ""}
    try:
        envelope["result"] = function(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001  (the task's failure is reported, not raised)
        # Text only: the exception object may not pickle, or not unpickle on the dispatcher.
        envelope["error"] = f"The task raised {_describe(exc)}"
        envelope["traceback"] = traceback.format_exc()
    return envelope


def _type_name(value: object) -> str:
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _describe(exc: BaseException) -> str:
    """`module.Type: message`, and whether the exception object itself could be pickled."""
    try:
        message = str(exc)
    except Exception as broken:  # noqa: BLE001  (a broken __str__ must not hide the type)
        message = f"(its message could not be read: {broken!r})"
    text = f"{_type_name(exc)}: {message}" if message else _type_name(exc)
    try:
        cloudpickle.dumps(exc)
    except Exception:  # noqa: BLE001
        text += " (the exception object cannot be pickled; its text and traceback come back)"
    return text


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
    except Exception as exc:  # noqa: BLE001  (the result cannot travel: fail, saying why)
        result, envelope["result"] = envelope["result"], None
        envelope["error"] = (
            f"The task's result, of type {_type_name(result)}, cannot be pickled "
            f"({type(exc).__name__}: {exc}); return a value that pickle or cloudpickle can "
            f"serialise."
        )
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
    """A fork server: import covalent and cloudpickle once, then fork a fresh child per task.

    `directory` (mode 0700, the task user's) holds two FIFOs, opened read-write so that no
    open ever blocks: the executor's command writes the task's directory as one line to `go`
    and waits for `done TASK_DIR STATUS` on `done`. The child runs the task like `main` in its
    own process group (so a cancel can kill all of it), from the home directory, and exits:
    nothing a task sets survives it. `pid` says a server is waiting; `busy` holds the running
    child's pid; `idle` is touched when a task ends (the idle power-off reads both).
    """
    _preload("covalent")  # a Covalent task unpickles covalent's wrapper: import it now, warm
    home = _home()
    os.chdir(home)
    go = os.open(os.path.join(directory, "go"), os.O_RDWR)
    done = os.open(os.path.join(directory, "done"), os.O_RDWR)
    _write(os.path.join(directory, "pid"), f"{os.getpid()}\n")
    _touch(os.path.join(directory, "idle"))
    pending = b""
    while True:
        while b"\n" not in pending:
            pending += os.read(go, 4096)
        line, pending = pending.split(b"\n", 1)
        task_dir = line.decode()
        status = _fork_task(task_dir, home, directory, (go, done))
        _touch(os.path.join(directory, "idle"))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, "busy"))
        os.write(done, f"done {task_dir} {status}\n".encode())


def _fork_task(task_dir: str, home: str, directory: str, fds: tuple[int, int]) -> int:
    child = os.fork()
    if child == 0:  # the task's own process
        code = 1
        try:
            os.setsid()
            for fd in fds:
                os.close(fd)
            os.chdir(home)
            _reseed()
            main(f"{task_dir}/payload.pkl", f"{task_dir}/result.pkl", to_stdout=False)
            code = 0
        except BaseException:  # noqa: BLE001  (to the worker's log; the command reports it)
            traceback.print_exc()
        finally:
            os._exit(code)
    _write(os.path.join(task_dir, "pid"), f"{child}\n")
    _write(os.path.join(directory, "busy"), f"{child}\n")
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def _home() -> str:
    home = pwd.getpwuid(os.getuid()).pw_dir  # where sshd starts a command
    return home if os.path.isdir(home) else "/"  # as sshd does when the home is missing


def _reseed() -> None:
    """Forked children share the parent's random state: give each its own (`random` does
    so itself at fork; numpy does not)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def _write(path: str, text: str) -> None:
    with open(f"{path}.tmp", "w") as out:
        out.write(text)
    os.replace(f"{path}.tmp", path)


def _touch(path: str) -> None:
    with open(path, "a"):
        os.utime(path)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
