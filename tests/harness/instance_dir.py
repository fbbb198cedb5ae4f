"""An emulated instance's directory, made from its user data as cloud-init makes `/etc/ssh` and
`/opt/ec2-executor` on EC2: the bootstrap and its companions, the host key, the authorised keys,
and an sshd configuration bound to the instance's own address and port."""

from __future__ import annotations

from pathlib import Path

from .boot_log import BootedInstance
from .userdata import BootSpec

MARKER_ENV = "EC2_EXECUTOR_HARNESS_INSTANCE"
"""Set in every process of an emulated instance (SSH sessions and bootstrap), so that the harness
can find and end them when the instance goes away, even after they were orphaned."""


def session_env(record: BootedInstance, python_path: str | None) -> dict[str, str]:
    """What every process of the instance gets: its prefix, its marker and a home of its own,
    so nothing run "on the instance" (covalent's config, caches) writes into this machine's
    real home; and a root of its own for `bake.sh`, which cleans the system's files (host
    keys, machine-id, authorised keys) of the root it is given."""
    env = {
        "EC2_EXECUTOR_PREFIX": str(record.prefix),
        "EC2_EXECUTOR_ROOT": str(record.workdir / "root"),
        MARKER_ENV: record.marker,
        "HOME": str(record.workdir / "home"),
    }
    if python_path:
        env["PYTHONPATH"] = python_path
    return env


def prepare(record: BootedInstance, spec: BootSpec, env: dict[str, str]) -> None:
    """The instance's directory, its prefix with the bootstrap's files, and sshd's files."""
    record.workdir.mkdir(parents=True)
    record.prefix.mkdir()
    (record.workdir / "home").mkdir()
    (record.workdir / "root").mkdir()
    _write_files(record.prefix, spec)
    host_key = _private(record.workdir / "ssh_host_ed25519_key", spec.host_key_pem)
    authorized = "".join(f"{key}\n" for key in spec.authorized_keys)
    authorized_keys = _private(record.workdir / "authorized_keys", authorized)
    record.sshd_config.write_text(sshd_config(record, host_key, authorized_keys, env))


def _write_files(prefix: Path, spec: BootSpec) -> None:
    """The bootstrap and its companions (runner.py, run-task.sh) into the prefix, before sshd
    starts, as cloud-init writes them to /opt/ec2-executor."""
    files = dict(spec.companions)
    if spec.bootstrap_script is not None:
        files["bootstrap.sh"] = spec.bootstrap_script
    for name, content in files.items():
        path = prefix / name
        path.write_text(content)
        path.chmod(0o755 if name.endswith(".sh") else 0o644)


def _private(path: Path, content: str) -> Path:
    path.write_text(content)
    path.chmod(0o600)
    return path


def sshd_config(
    record: BootedInstance, host_key: Path, authorized_keys: Path, env: dict[str, str]
) -> str:
    """sshd on the instance's address and the user data's port, keys from its directory."""
    set_env = " ".join(f'"{name}={value}"' for name, value in env.items())
    return (
        f"# emulated boot of {record.instance_id} (tests/harness/boot.py)\n"
        f"Port {record.port}\n"
        f"ListenAddress {record.private_ip}:{record.port}\n"
        f'HostKey "{host_key}"\n'
        f'AuthorizedKeysFile "{authorized_keys}"\n'
        f'PidFile "{record.workdir / "sshd.pid"}"\n'
        "StrictModes no\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "PermitRootLogin prohibit-password\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        "X11Forwarding no\n"
        "MaxStartups 100\n"
        "MaxSessions 100\n"
        "LogLevel VERBOSE\n"
        "Subsystem sftp internal-sftp\n"
        f"SetEnv {set_env}\n"
    )
