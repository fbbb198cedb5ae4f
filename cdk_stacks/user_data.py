"""The instance's cloud-config, as an `Fn::Sub` string over the stack's parameters.

Pure text: rendering needs no `aws_cdk`, so tests can check it with a YAML parser and `bash -n`.
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST_KEY_PATH = "/etc/ssh/ec2_executor_host_ed25519_key"
SSHD_DROP_IN_PATH = "/etc/ssh/sshd_config.d/00-ec2-executor.conf"
INSTANCE_DIR = "/opt/ec2-executor"
BOOTSTRAP_PATH = f"{INSTANCE_DIR}/bootstrap.sh"
USER_DATA_LIMIT = 16 * 1024
"""EC2's limit on user data, in bytes of its raw form, before base64 (EC2 User Guide, "Work
with instance user data"). CloudFormation accepts a stack over it; its launch then fails."""
INSTANCE_FILES = {
    "bootstrap.sh": "0755",
    "runner.py": "0644",
    "run-task.sh": "0755",
    "idle-watch.sh": "0755",
    "owner-watch.sh": "0755",
}
"""The package's files that go to `INSTANCE_DIR`: the bootstrap, the task runner it starts
warm, the task's one command (`remote.py` calls it), the idle and the orphan power-offs.
Values are their modes."""


def package_file(name: str) -> Path:
    """A file of the instance's program (`ec2_executor/instance/`), found without importing
    the package."""
    spec = importlib.util.find_spec("ec2_executor")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The ec2_executor package is not installed; run 'make install'.")
    return Path(next(iter(spec.submodule_search_locations))) / "instance" / name


def instance_files() -> dict[str, str]:
    """The instance's files by name, read from the package; the shell scripts go without their
    comment lines (the package keeps them): user data is capped at 16 KB."""
    return {name: _shipped(name, package_file(name).read_text()) for name in INSTANCE_FILES}


# A line that is only a comment (not the `#!` line): nothing a running script reads.
_COMMENT_LINE = re.compile(r"^[ \t]*#(?!!).*\n", re.M)


def _shipped(name: str, text: str) -> str:
    return _COMMENT_LINE.sub("", text) if name.endswith(".sh") else text


def _gzip_base64(text: str) -> str:
    """cloud-init's `gz+b64`: a third of the size (user data is capped at 16 KB); mtime=0
    keeps the template byte-for-byte the same from one synthesis to the next."""
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def _write_file_entries(files: dict[str, str]) -> str:
    return "".join(
        f"""  - path: {INSTANCE_DIR}/{name}
    permissions: "{INSTANCE_FILES[name]}"
    encoding: gz+b64
    content: {_gzip_base64(text)}
"""
        for name, text in files.items()
    )


def cloud_config_template(files: dict[str, str]) -> str:
    """The cloud-config for `Fn::Sub`; `${Name}` refers to a stack parameter.

    Host key and port go into an sshd drop-in written before sshd starts (cloud-init's first
    stage runs before sshd), so the only key sshd ever offers is the pinned one. The lifetime
    watchdog is armed in `bootcmd`, the earliest hook, so it holds even if the bootstrap hangs;
    it powers off for `max_lifetime_minutes` or for `budget_usd` (`LifetimeLimit` says which,
    in `poweroff` beside the bootstrap, as the idle and orphan power-offs do).
    On Debian and Ubuntu that hook runs before `sysinit.target`: a timer with its default
    dependencies would wait for that target while cloud-init waits for the timer (a boot that
    never ends), hence `DefaultDependencies=no`; `AccuracySec` makes it fire within a second
    of its time rather than systemd's default minute. `ssh_genkeytypes` needs one type for
    cloud-init's schema: ed25519 costs milliseconds, and sshd offers only the pinned key.
    `ClientAlive*`: sshd closes the connection of a dispatcher that stopped answering (asleep,
    off the network) within about a minute, so the orphan power-off starts counting.
    The authorised key is a literal block: a key comment such as `work: laptop` or `#2` would
    otherwise turn the list item into a mapping or a truncated key.
    """
    # The files go in gzipped and base64-encoded: verbatim, whatever `${...}`, quotes or
    # indentation they hold, with nothing for `Fn::Sub` or YAML to reinterpret.
    return f"""#cloud-config
ssh_deletekeys: false
ssh_genkeytypes: [ed25519]
ssh_authorized_keys:
  - |-
    ${{AuthorizedKey}}
write_files:
  - path: {HOST_KEY_PATH}
    permissions: "0600"
    encoding: b64
    content: ${{HostKey}}
  - path: {SSHD_DROP_IN_PATH}
    content: |
      Port ${{SshPort}}
      HostKey {HOST_KEY_PATH}
      PasswordAuthentication no
      KbdInteractiveAuthentication no
      ClientAliveInterval 15
      ClientAliveCountMax 4
{_write_file_entries(files)}bootcmd:
  - systemd-run --on-active=${{MaxLifetimeMinutes}}min --timer-property=DefaultDependencies=no --timer-property=AccuracySec=1s --unit=ec2-executor-lifetime sh -c 'echo "$(date -u +%FT%TZ) ${{LifetimeLimit}} reached, powering off" >{INSTANCE_DIR}/poweroff; systemctl poweroff' || shutdown -P +${{MaxLifetimeMinutes}}
runcmd:
  - [{BOOTSTRAP_PATH}, --python, "${{PythonVersion}}", --covalent, "${{CovalentVersion}}", --cloudpickle, "${{CloudpickleVersion}}", --user, "${{SshUser}}", --idle-minutes, "${{IdleMinutes}}", --orphan-minutes, "${{OrphanMinutes}}", --ssh-port, "${{SshPort}}", --spot, "${{UseSpot}}"]
"""  # noqa: E501


# `${Name}` (a parameter) or `${!` (a literal `${`), as `Fn::Sub` reads its string.
_SUB_TOKEN = re.compile(r"\$\{(!|[^}]*\})")


@dataclass(frozen=True)
class UserDataSize:
    total: int
    """Bytes of the user data with every parameter substituted."""
    by_parameter: dict[str, int]
    """Bytes each parameter's value adds, over all its occurrences."""


def user_data_size(template: Mapping[str, Any], values: Mapping[str, str]) -> UserDataSize:
    """The size of the instance's user data once CloudFormation has substituted `values` (the
    stack parameters as `create_stack` sends them) into the template's `Fn::Sub` string."""
    text = _user_data_sub(template)
    added: dict[str, int] = {}

    def substitute(match: re.Match[str]) -> str:
        token = match.group(1)
        if token == "!":
            return "${"
        value = values[token[:-1]]
        added[token[:-1]] = added.get(token[:-1], 0) + len(value.encode())
        return value

    rendered = _SUB_TOKEN.sub(substitute, text)
    return UserDataSize(total=len(rendered.encode()), by_parameter=added)


def _user_data_sub(template: Mapping[str, Any]) -> str:
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::EC2::Instance":
            text = resource["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
            if isinstance(text, str):
                return text
    raise ValueError("The template has no AWS::EC2::Instance whose user data is an Fn::Sub string.")
