"""The instance's cloud-config, as an `Fn::Sub` string over the stack's parameters.

Pure text: rendering needs no `aws_cdk`, so tests can check it with a YAML parser and `bash -n`.
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
from pathlib import Path

HOST_KEY_PATH = "/etc/ssh/ec2_executor_host_ed25519_key"
SSHD_DROP_IN_PATH = "/etc/ssh/sshd_config.d/00-ec2-executor.conf"
BOOTSTRAP_PATH = "/opt/ec2-executor/bootstrap.sh"
RUNNER_PATH = "/opt/ec2-executor/runner.py"  # beside the bootstrap, which starts it warm


def package_file(name: str) -> Path:
    """A file of the `ec2_executor` package, found without importing the package."""
    spec = importlib.util.find_spec("ec2_executor")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The ec2_executor package is not installed; run 'make install'.")
    return Path(next(iter(spec.submodule_search_locations))) / name


def bootstrap_script_path() -> Path:
    return package_file("bootstrap.sh")


def runner_path() -> Path:
    return package_file("runner.py")


def _base64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _gzip_base64(text: str) -> str:
    """cloud-init's `gz+b64`: a third of the size (user data is capped at 16 KB); mtime=0
    keeps the template byte-for-byte the same from one synthesis to the next."""
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def cloud_config_template(bootstrap_script: str, runner: str) -> str:
    """The cloud-config for `Fn::Sub`; `${Name}` refers to a stack parameter.

    Host key and port go into an sshd drop-in written before sshd starts (cloud-init's first
    stage runs before sshd), so the only key sshd ever offers is the pinned one. The lifetime
    watchdog is armed in `bootcmd`, the earliest hook, so it holds even if the bootstrap hangs.
    On Debian and Ubuntu that hook runs before `sysinit.target`: a timer with its default
    dependencies would wait for that target while cloud-init waits for the timer (a boot that
    never ends), hence `DefaultDependencies=no`; `AccuracySec` makes it fire within a second
    of its time rather than systemd's default minute. `ssh_genkeytypes` needs one type for
    cloud-init's schema: ed25519 costs milliseconds, and sshd offers only the pinned key.
    The authorised key is a literal block: a key comment such as `work: laptop` or `#2` would
    otherwise turn the list item into a mapping or a truncated key.
    """
    # The scripts go in gzipped and base64-encoded: verbatim, whatever `${...}`, quotes or
    # indentation they hold, with nothing for `Fn::Sub` or YAML to reinterpret.
    script = _gzip_base64(bootstrap_script)
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
  - path: {BOOTSTRAP_PATH}
    permissions: "0755"
    encoding: gz+b64
    content: {script}
  - path: {RUNNER_PATH}
    permissions: "0644"
    encoding: gz+b64
    content: {_gzip_base64(runner)}
bootcmd:
  - systemd-run --on-active=${{MaxLifetimeMinutes}}min --timer-property=DefaultDependencies=no --timer-property=AccuracySec=1s --unit=ec2-executor-lifetime systemctl poweroff || shutdown -P +${{MaxLifetimeMinutes}}
runcmd:
  - [{BOOTSTRAP_PATH}, --python, "${{PythonVersion}}", --covalent, "${{CovalentVersion}}", --cloudpickle, "${{CloudpickleVersion}}", --user, "${{SshUser}}"]
"""  # noqa: E501
