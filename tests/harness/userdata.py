"""The cloud-config user data the product's CloudFormation template renders: parse and render.

The contract: authorized key(s) in `ssh_authorized_keys`; the ed25519 host key as a b64
`write_files` entry; an sshd drop-in (`/etc/ssh/sshd_config.d/...`) with `Port` and `HostKey`;
the bootstrap script as a `write_files` entry; `bootcmd` arming a shutdown (never run here) and
`runcmd` running the bootstrap with `--python/--covalent/--cloudpickle/--user`.
"""

from __future__ import annotations

import base64
import gzip
import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

BOOTSTRAP_PATH = "/opt/ec2-executor/bootstrap.sh"
HOST_KEY_PATH = "/etc/ssh/ec2_executor_host_ed25519_key"
SSHD_DROP_IN_PATH = "/etc/ssh/sshd_config.d/00-ec2-executor.conf"

# A bootstrap that only does what the executor checks for: `$PREFIX/ready` with a python path.
STAND_IN_BOOTSTRAP = """\
#!/usr/bin/env bash
# Stand-in for ec2_executor/bootstrap.sh: same interface, installs nothing.
set -euo pipefail
args=("$@")
prefix=/opt/ec2-executor
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --python|--covalent|--cloudpickle|--user) shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$prefix"
echo "stand-in bootstrap ${args[*]}" >> "$prefix/bootstrap.log"
command -v python3 > "$prefix/ready"
"""


class UserDataError(ValueError):
    """The user data does not follow the contract."""


@dataclass(frozen=True)
class BootSpec:
    """What an emulated boot needs from the user data."""

    authorized_keys: tuple[str, ...]
    host_key_pem: str
    port: int
    bootstrap_script: str | None
    """The script `runcmd` runs (content of its `write_files` entry), or None."""
    bootstrap_args: tuple[str, ...]
    """The arguments `runcmd` passes to it (without the script path)."""
    companions: dict[str, str] = field(default_factory=dict)
    """Other `write_files` entries in the bootstrap's directory, by file name (runner.py)."""


def _decode_entry(entry: dict[str, Any]) -> str:
    content = entry.get("content", "")
    encoding = str(entry.get("encoding", "text/plain")).lower()
    if encoding in ("text/plain", ""):
        return str(content)
    if isinstance(content, str):
        content = content.encode()
    if encoding in ("b64", "base64"):
        return base64.b64decode(content).decode()
    if encoding in ("gz+b64", "gz+base64", "gzip+b64", "gzip+base64"):
        return gzip.decompress(base64.b64decode(content)).decode()
    if encoding in ("gz", "gzip"):
        return gzip.decompress(content).decode()
    raise UserDataError(f"write_files entry {entry.get('path')!r}: unknown encoding {encoding!r}")


def _sshd_directives(config: str, keyword: str) -> list[str]:
    pattern = re.compile(rf"^\s*{keyword}\s+(\S+)", re.IGNORECASE | re.MULTILINE)
    return [match.group(1) for match in pattern.finditer(config)]


def _command_argv(command: Any) -> list[str]:
    if isinstance(command, str):
        return shlex.split(command)
    if isinstance(command, list):
        return [str(part) for part in command]
    raise UserDataError(f"runcmd entry is neither a string nor a list: {command!r}")


def parse_user_data(text: str | bytes) -> BootSpec:
    """Parse decoded user data (a `#cloud-config` document; gzip-compressed is accepted)."""
    if isinstance(text, bytes):
        if text[:2] == b"\x1f\x8b":
            text = gzip.decompress(text)
        text = text.decode()
    if not text.startswith("#cloud-config"):
        raise UserDataError("user data is not a #cloud-config document")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise UserDataError("cloud-config is not a mapping")

    authorized_keys = tuple(str(key).strip() for key in document.get("ssh_authorized_keys") or ())
    if not authorized_keys:
        raise UserDataError("no ssh_authorized_keys")

    files: dict[str, str] = {}
    for entry in document.get("write_files") or ():
        if not isinstance(entry, dict) or "path" not in entry:
            raise UserDataError(f"write_files entry without a path: {entry!r}")
        files[str(entry["path"])] = _decode_entry(entry)

    sshd_configs = [
        content
        for path, content in files.items()
        if path == "/etc/ssh/sshd_config" or path.startswith("/etc/ssh/sshd_config.d/")
    ]
    ports = [port for config in sshd_configs for port in _sshd_directives(config, "Port")]
    port = int(ports[0]) if ports else 22
    host_key_paths = [path for c in sshd_configs for path in _sshd_directives(c, "HostKey")]
    if host_key_paths:
        missing = [path for path in host_key_paths if path not in files]
        if missing:
            raise UserDataError(f"HostKey {missing[0]} is not among write_files")
        host_key_pem = files[host_key_paths[0]]
    else:
        candidates = [c for c in files.values() if "BEGIN OPENSSH PRIVATE KEY" in c]
        if not candidates:
            raise UserDataError("no host key among write_files")
        host_key_pem = candidates[0]
    if "PRIVATE KEY" not in host_key_pem:
        raise UserDataError("the host key entry does not hold a private key")

    bootstrap_script: str | None = None
    bootstrap_args: tuple[str, ...] = ()
    companions: dict[str, str] = {}
    for command in document.get("runcmd") or ():
        argv = _command_argv(command)
        if argv and argv[0] in ("bash", "sh", "/bin/bash", "/bin/sh") and len(argv) > 1:
            argv = argv[1:]
        if argv and argv[0] in files:
            bootstrap_script = files[argv[0]]
            bootstrap_args = tuple(argv[1:])
            folder = posixpath.dirname(argv[0])
            companions = {
                posixpath.basename(path): content
                for path, content in files.items()
                if posixpath.dirname(path) == folder and path != argv[0]
            }
            break

    return BootSpec(
        authorized_keys=authorized_keys,
        host_key_pem=host_key_pem if host_key_pem.endswith("\n") else host_key_pem + "\n",
        port=port,
        bootstrap_script=bootstrap_script,
        bootstrap_args=bootstrap_args,
        companions=companions,
    )


def render_user_data(
    *,
    authorized_keys: Sequence[str],
    host_key_pem: str,
    port: int = 2222,
    bootstrap_script: str = STAND_IN_BOOTSTRAP,
    python: str = "3.11",
    covalent: str = "0.240.0",
    cloudpickle: str = "3.1.3",
    user: str = "ec2-user",
    shutdown_minutes: int = 120,
) -> str:
    """User data in the product's format (for tests that launch instances by hand)."""
    document = {
        "ssh_deletekeys": False,
        "ssh_genkeytypes": [],
        "ssh_authorized_keys": list(authorized_keys),
        "write_files": [
            {
                "path": HOST_KEY_PATH,
                "permissions": "0600",
                "encoding": "b64",
                "content": base64.b64encode(host_key_pem.encode()).decode(),
            },
            {
                "path": SSHD_DROP_IN_PATH,
                "content": (
                    f"Port {port}\n"
                    f"HostKey {HOST_KEY_PATH}\n"
                    "PasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\n"
                ),
            },
            {"path": BOOTSTRAP_PATH, "permissions": "0755", "content": bootstrap_script},
        ],
        "bootcmd": [["shutdown", "-P", f"+{shutdown_minutes}"]],
        "runcmd": [
            [
                BOOTSTRAP_PATH,
                "--python",
                python,
                "--covalent",
                covalent,
                "--cloudpickle",
                cloudpickle,
                "--user",
                user,
            ]
        ],
    }
    return "#cloud-config\n" + yaml.dump(
        document, Dumper=_LiteralDumper, sort_keys=False, width=1000
    )


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, like the template renders them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)
