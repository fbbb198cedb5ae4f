"""Synthesise each stack shape once and cache the template on disk.

A cache hit reads one small JSON file and never imports `aws_cdk` (that alone costs seconds);
a miss synthesises in a child process, so the jsii/Node runtime never lives in the caller.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

from cdk_stacks.shape import StackShape
from cdk_stacks.user_data import INSTANCE_FILES, package_file

MAX_INLINE_TEMPLATE_BYTES = 51_200
_SOURCES = ("electron_stack.py", "parameters.py", "shape.py", "synth.py", "user_data.py")


class SynthesisError(RuntimeError):
    """`cdk_stacks.synth` failed; the message carries its stderr."""


def cache_dir() -> Path:
    base = os.environ.get("EC2_EXECUTOR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ec2-executor"
    )
    return Path(base) / "templates"


@cache
def _fingerprint() -> str:
    """Package and aws-cdk-lib versions plus the stack's own sources and the instance's files."""
    digest = hashlib.sha256()
    for dist in ("ec2-executor", "aws-cdk-lib"):
        digest.update(f"{dist}={_version(dist)};".encode())
    here = Path(__file__).parent
    for path in [here / name for name in _SOURCES] + [
        package_file(name) for name in INSTANCE_FILES
    ]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cache_path(shape: StackShape) -> Path:
    return cache_dir() / f"{shape.key}-{_fingerprint()}.json"


def template_for(shape: StackShape) -> str:
    """The template body (JSON text) for `shape`, synthesised on first use only."""
    path = cache_path(shape)
    try:
        return path.read_text()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # One synthesis per shape even when many electrons miss at once, across processes too.
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path.read_text()
        body = synthesize_in_child(shape)
        _write_atomically(path, body)
        return body


def synthesize_in_child(shape: StackShape) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cdk_stacks.synth", shape.network.value],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1"},
    )
    if done.returncode != 0:
        raise SynthesisError(
            f"Synthesising the '{shape.key}' stack failed; check that Node.js is installed "
            f"and 'make install' ran: {done.stderr.strip()[-2000:]}"
        )
    if len(done.stdout.encode()) > MAX_INLINE_TEMPLATE_BYTES:
        raise SynthesisError(
            f"The '{shape.key}' template is {len(done.stdout.encode())} bytes, over the "
            f"{MAX_INLINE_TEMPLATE_BYTES} bytes CloudFormation accepts inline."
        )
    return done.stdout


def _write_atomically(path: Path, body: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        out.write(body)
    os.replace(tmp, path)
