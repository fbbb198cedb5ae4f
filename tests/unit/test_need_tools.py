"""tests/need-tools.sh: what `make test` and `make demo` run first, on a machine without sshd or
shellcheck (hidden from PATH here: this machine has both)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness.shared_dirs import NOBODY, shared_temp_dir

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "need-tools.sh"
DEBIAN = "ID=debian\n"
ELSEWHERE = 'ID=fedora\nID_LIKE="rhel centos"\n'


def bare_path(tmp_path: Path, *tools: str) -> str:
    """A PATH with `tools` and what the script itself runs, but no sshd or shellcheck."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    bin_dir.chmod(0o755)  # whatever the umask: the script may run as another user
    for tool in ("id", "env", *tools):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def need_tools(
    tmp_path: Path,
    os_release: str,
    *tools: str,
    user: str | None = None,
    path: str | None = None,
) -> subprocess.CompletedProcess[str]:
    release = tmp_path / "os-release"
    release.write_text(os_release)
    release.chmod(0o644)
    env = {
        "PATH": path or bare_path(tmp_path, *tools),
        "EC2_EXECUTOR_SBIN": "",
        "EC2_EXECUTOR_OS_RELEASE": str(release),
    }
    # A copy beside the os-release: `user` may not be able to enter the checkout's directory.
    script = tmp_path / SCRIPT.name
    shutil.copyfile(SCRIPT, script)
    script.chmod(0o755)
    command = ["/bin/bash", str(script)]
    if user is not None:
        command = [
            str(shutil.which("runuser")),
            "-u",
            user,
            "--",
            "/usr/bin/env",
            *[f"{k}={v}" for k, v in env.items()],
            *command,
        ]
    return subprocess.run(
        command,
        env=env,
        cwd=tmp_path,  # bash as `user` would complain of a working directory it cannot enter
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def test_shell_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "make test installs shellcheck first (tests/need-tools.sh)"
    done = subprocess.run(
        [shellcheck, str(SCRIPT), str(REPO / ".ci" / "run")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout


def test_with_both_tools_it_does_nothing() -> None:
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_elsewhere_it_stops_with_one_line_naming_both_packages(tmp_path: Path) -> None:
    done = need_tools(tmp_path, ELSEWHERE)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "openssh-server shellcheck" in done.stderr and "package manager" in done.stderr


@pytest.mark.skipif(shutil.which("runuser") is None or os.getuid() != 0, reason="needs root")
def test_without_root_or_sudo_it_says_what_to_run_as_root() -> None:
    with shared_temp_dir() as shared:
        done = need_tools(shared, DEBIAN, "apt-get", user=NOBODY)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "'apt-get install openssh-server shellcheck' as root" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(
    os.getuid() != 0 or not Path("/etc/debian_version").exists(), reason="Debian as root only"
)
def test_on_debian_as_root_it_installs_the_missing_one(tmp_path: Path) -> None:
    """Real apt-get. sshd, installed here, is only hidden (no sbin directory on PATH), so the
    install finds it there and changes nothing (--no-upgrade)."""
    done = need_tools(tmp_path, DEBIAN, path="/usr/bin:/bin")
    assert done.returncode == 0, done.stderr
    assert "Installing openssh-server " in done.stderr
    assert "shellcheck" not in done.stderr
