"""The instance's cloud-config, as an `Fn::Sub` string over the stack's parameters.

Pure text: rendering needs no `aws_cdk`, so tests can check it with a YAML parser and `bash -n`.
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

HOST_KEY_PATH = "/etc/ssh/ec2_executor_host_ed25519_key"
SSHD_DROP_IN_PATH = "/etc/ssh/sshd_config.d/00-ec2-executor.conf"
BOOTSTRAP_PATH = "/opt/ec2-executor/bootstrap.sh"


def bootstrap_script_path() -> Path:
    """Where `ec2_executor/bootstrap.sh` lives, found without importing the package."""
    spec = importlib.util.find_spec("ec2_executor")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The ec2_executor package is not installed; run 'make install'.")
    return Path(next(iter(spec.submodule_search_locations))) / "bootstrap.sh"


def _base64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def cloud_config_template(bootstrap_script: str) -> str:
    """The cloud-config for `Fn::Sub`; `${Name}` refers to a stack parameter.

    Host key and port go into an sshd drop-in written before sshd starts (cloud-init's first
    stage runs before sshd), so the only key sshd ever offers is the pinned one. The lifetime
    watchdog is armed in `bootcmd`, the earliest hook, so it holds even if the bootstrap hangs.
    The authorised key is a literal block: a key comment such as `work: laptop` or `#2` would
    otherwise turn the list item into a mapping or a truncated key.
    """
    # The script goes in as base64: verbatim, whatever `${...}`, quotes or indentation it
    # holds, with nothing for `Fn::Sub` or YAML to reinterpret.
    script = _base64(bootstrap_script)
    return f"""#cloud-config
ssh_deletekeys: false
ssh_genkeytypes: []
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
  - path: {BOOTSTRAP_PATH}
    permissions: "0755"
    encoding: b64
    content: {script}
bootcmd:
  - systemd-run --on-active=${{MaxLifetimeMinutes}}min --unit=ec2-executor-lifetime systemctl poweroff || shutdown -P +${{MaxLifetimeMinutes}}
runcmd:
  - [{BOOTSTRAP_PATH}, --python, "${{PythonVersion}}", --covalent, "${{CovalentVersion}}", --cloudpickle, "${{CloudpickleVersion}}", --user, "${{SshUser}}"]
"""  # noqa: E501
