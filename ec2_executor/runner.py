"""Runs one task on the instance. Sent as `python -c <this source> PAYLOAD RESULT`.

Stdlib and cloudpickle only. Reads `(function, args, kwargs)` from PAYLOAD, runs it with file
descriptors 1 and 2 captured (so output of child processes is caught too), and writes one
cloudpickled envelope to RESULT and to the original stdout, which the executor reads.
"""

from __future__ import annotations

import os
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


def main(payload_path: str, result_path: str) -> None:
    data = _dumps(_captured(_run, payload_path))
    with open(result_path, "wb") as result:
        result.write(data)
    out = os.fdopen(1, "wb", closefd=False)
    out.write(data)
    out.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
