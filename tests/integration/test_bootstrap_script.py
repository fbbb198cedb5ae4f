"""Real runs of ec2_executor/instance/bootstrap.sh against a temporary prefix.

Offline tests set EC2_EXECUTOR_BOOTSTRAP_OFFLINE=1 (the script then never calls the
package manager or installs uv) and PIP_NO_INDEX=1, and find the interpreter through a
temporary bin dir holding ``python3.X`` -> this test's base interpreter.  The "already
installed" case puts this test venv's site-packages on PYTHONPATH, which the
``--system-site-packages`` venv then sees, so pip has nothing to do.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest

from cdk_stacks.user_data import instance_files

SCRIPT = Path(__file__).resolve().parents[2] / "ec2_executor" / "instance" / "bootstrap.sh"
PY_MINOR = f"{sys.version_info.major}.{sys.version_info.minor}"
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
COVALENT = importlib.metadata.version("covalent")
CLOUDPICKLE = importlib.metadata.version("cloudpickle")
SYSTEM_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
BASH = shutil.which("bash") or "/bin/bash"
NO_USER = "ec2-executor-test-no-such-user"
OFFLINE = {"EC2_EXECUTOR_BOOTSTRAP_OFFLINE": "1", "PIP_NO_INDEX": "1"}
PRESENT = {**OFFLINE, "PYTHONPATH": SITE_PACKAGES}

_DROP = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "EC2_EXECUTOR_PREFIX")
_DROP_PREFIXES = ("EC2_EXECUTOR_BOOTSTRAP_", "UV_")


def _env(path_dirs: list[Path | str], extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _DROP and not k.startswith(_DROP_PREFIXES)
    }
    env["PATH"] = os.pathsep.join([*map(str, path_dirs), *SYSTEM_PATH])
    env.update(extra or {})
    return env


def run_bootstrap(
    prefix: Path | None,
    path_dirs: list[Path | str],
    extra_env: dict[str, str] | None = None,
    *,
    python: str = PY_MINOR,
    covalent: str = COVALENT,
    cloudpickle: str = CLOUDPICKLE,
    user: str = NO_USER,
    extra_args: tuple[str, ...] = (),
    timeout: float = 300,
    script: Path = SCRIPT,
) -> subprocess.CompletedProcess[str]:
    args = [BASH, str(script), "--python", python, "--covalent", covalent]
    args += ["--cloudpickle", cloudpickle, "--user", user, *extra_args]
    if prefix is not None:
        args += ["--prefix", str(prefix)]
    return subprocess.run(
        args,
        env=_env(path_dirs, extra_env),
        cwd=prefix.parent if prefix is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def venv_versions(python: str, env: dict[str, str], cwd: Path) -> list[str]:
    code = (
        "import sys, importlib.metadata as m; "
        "print(sys.prefix, '%d.%d' % sys.version_info[:2], "
        "m.version('covalent'), m.version('cloudpickle'), m.version('pip'))"
    )
    out = subprocess.run(
        [python, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


@pytest.fixture
def interp_bin(tmp_path: Path) -> Path:
    """A bin dir whose python3.X is the real interpreter running these tests."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / f"python{PY_MINOR}").symlink_to(BASE_PYTHON)
    return bin_dir


@pytest.fixture
def no_system_uv() -> None:
    # uv would ignore the PYTHONPATH trick the offline tests rely on.
    if shutil.which("uv", path=os.pathsep.join(SYSTEM_PATH)):
        pytest.skip("uv is on the system PATH; offline tests need the pip path")


@pytest.fixture
def nobody() -> pwd.struct_passwd:
    """Another user, for what the bootstrap does as root for the SSH user."""
    if os.geteuid() != 0:
        pytest.skip("acting for another user needs root")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")


def with_runner(tmp_path: Path) -> Path:
    """A copy of the bootstrap with runner.py beside it, as the user data lays them out (the
    package's own copy starts no worker in tests that run it for a user that does not exist)."""
    here = tmp_path / "opt"
    here.mkdir()
    shutil.copyfile(SCRIPT, here / "bootstrap.sh")
    shutil.copyfile(SCRIPT.parent / "runner.py", here / "runner.py")
    return here / "bootstrap.sh"


def assert_failed(prefix: Path, result: subprocess.CompletedProcess[str], text: str) -> str:
    assert result.returncode != 0, result.stderr
    assert not (prefix / "ready").exists()
    reason = (prefix / "failed").read_text()
    assert reason.count("\n") == 1 and reason.endswith("\n")
    assert text in reason
    assert "bootstrap failed" in result.stderr
    assert "FAILED: " + reason.strip() in (prefix / "bootstrap.log").read_text()
    return reason


# --- static checks -----------------------------------------------------------


SHELL_FILES = sorted(SCRIPT.parent.glob("*.sh"))
HARNESS_SHELL_FILES = sorted(
    [*(SCRIPT.parents[2] / "tests" / "harness").glob("*.sh"), *SCRIPT.parents[2].glob(".ci/*.sh")]
)
"""The real-guest boot's image, network and run scripts; CI's package installer."""


def test_the_instance_scripts_are_all_checked() -> None:
    assert {p.name for p in SHELL_FILES} == {
        "bootstrap.sh",
        "run-task.sh",
        "idle-watch.sh",
        "owner-watch.sh",
        "bake.sh",
    }


@pytest.mark.parametrize("script", SHELL_FILES + HARNESS_SHELL_FILES, ids=lambda p: p.name)
def test_bash_syntax(script: Path) -> None:
    subprocess.run([BASH, "-n", str(script)], check=True)


@pytest.mark.parametrize("script", SHELL_FILES + HARNESS_SHELL_FILES, ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_is_small_strict_bash() -> None:
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "\r" not in text
    # Inlined, gzipped and without its comment lines, into the user data (16 KB limit,
    # checked in test_electron_stack) and the template (51,200 bytes): keep it well under both.
    assert len(instance_files()["bootstrap.sh"].encode()) < 9 * 1024


# --- real runs, offline ------------------------------------------------------


@pytest.mark.usefixtures("no_system_uv")
def test_already_installed_writes_ready_and_second_run_is_fast(
    tmp_path: Path, interp_bin: Path
) -> None:
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    (prefix / "failed").write_text("stale\n")
    venv_python = prefix / "venv" / "bin" / "python"

    first = run_bootstrap(prefix, [interp_bin], PRESENT)
    assert first.returncode == 0, (prefix / "bootstrap.log").read_text()
    assert (prefix / "ready").read_text() == f"{venv_python}\n"
    assert not (prefix / "failed").exists()
    assert {p.name for p in prefix.iterdir()} - {".lock"} == {"bootstrap.log", "ready", "venv"}
    assert "include-system-site-packages = true" in (prefix / "venv" / "pyvenv.cfg").read_text()
    log = (prefix / "bootstrap.log").read_text()
    assert f"user '{NO_USER}' does not exist" in log
    assert f"interpreter: {BASE_PYTHON}" in log

    # The venv interpreter sees the pinned versions (covalent is not imported: this
    # test venv's editable ec2-executor plugin entry point cannot load via PYTHONPATH).
    env = _env([], {"PYTHONPATH": SITE_PACKAGES})
    found = venv_versions(str(venv_python), env, tmp_path)
    assert found[1:4] == [PY_MINOR, COVALENT, CLOUDPICKLE]
    assert Path(found[0]) == prefix / "venv"

    started = time.monotonic()
    second = run_bootstrap(prefix, [interp_bin], PRESENT)
    elapsed = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert elapsed < 5, f"fast path took {elapsed:.1f}s"
    assert (prefix / "ready").read_text() == f"{venv_python}\n"
    log = (prefix / "bootstrap.log").read_text()
    assert log.count(" start: ") == 1  # second run did not reinstall
    assert log.count(f"ready: {venv_python}") == 2


@pytest.mark.usefixtures("no_system_uv")
def test_starts_the_warm_worker_before_ready_and_leaves_its_output(
    tmp_path: Path, interp_bin: Path
) -> None:
    script = with_runner(tmp_path)
    here = script.parent
    prefix = tmp_path / "prefix"
    worker = prefix / "worker"
    # capture_output: if the worker kept the bootstrap's stdout/stderr (cloud-init's
    # output), this would wait for it and time out.
    result = run_bootstrap(
        prefix, [interp_bin], PRESENT, user=getpass.getuser(), script=script, timeout=120
    )
    pid = int((worker / "pid").read_text()) if (worker / "pid").exists() else None
    try:
        assert result.returncode == 0, (prefix / "bootstrap.log").read_text()
        assert pid is not None, (prefix / "bootstrap.log").read_text()
        log = (prefix / "bootstrap.log").read_text()
        # The worker waits before `ready` is written: a task never misses it.
        assert log.index(f"worker waiting (pid {pid})") < log.index("ready: ")
        assert stat.S_IMODE(worker.stat().st_mode) == 0o700
        assert all(stat.S_ISFIFO((worker / name).stat().st_mode) for name in ("go", "done"))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:4] == [str(here / "runner.py").encode(), b"--serve", str(worker).encode()]
        assert cmdline[0] == str(prefix / "venv" / "bin" / "python").encode()

        # Run again (a retry): the idle worker of the first run is replaced, not left behind.
        again = run_bootstrap(
            prefix, [interp_bin], PRESENT, user=getpass.getuser(), script=script, timeout=120
        )
        assert again.returncode == 0, (prefix / "bootstrap.log").read_text()
        first, pid = pid, int((worker / "pid").read_text())
        assert pid != first
        assert not _running(first)
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by whoever adopted it, in its own time)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state == "Z":
            return False
        time.sleep(0.05)
    return True


FAKE_RUNUSER = """#!/bin/bash
printf '%s\\n' "$@" > "$RUNUSER_ARGS"
exec bash -c "$6"
"""


@pytest.mark.usefixtures("no_system_uv")
def test_the_worker_of_another_user_starts_in_its_login_shell(
    tmp_path: Path, interp_bin: Path, nobody: pwd.struct_passwd
) -> None:
    # runuser itself is replaced (it would need an interpreter 'nobody' may run): it records
    # its arguments and runs the command as this user.
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "runuser").write_text(FAKE_RUNUSER)
    (fake_bin / "runuser").chmod(0o755)
    script = with_runner(tmp_path)
    prefix, recorded = tmp_path / "prefix", tmp_path / "runuser-args"
    result = run_bootstrap(
        prefix,
        [fake_bin, interp_bin],
        {**PRESENT, "RUNUSER_ARGS": str(recorded)},
        user="nobody",
        script=script,
        timeout=120,
    )
    worker = prefix / "worker"
    pid = int((worker / "pid").read_text()) if (worker / "pid").exists() else None
    try:
        assert result.returncode == 0, (prefix / "bootstrap.log").read_text()
        assert pid is not None, (prefix / "bootstrap.log").read_text()
        args = recorded.read_text().splitlines()
        assert args[:5] == ["-l", "nobody", "-s", "/bin/bash", "-c"]
        assert worker.stat().st_uid == nobody.pw_uid
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        path = next(v for v in environ if v.startswith(b"PATH=")).decode()[5:]
        assert path.split(":")[0] == str(prefix / "venv" / "bin")
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.usefixtures("no_system_uv")
def test_chowns_venv_to_existing_user(
    tmp_path: Path, interp_bin: Path, nobody: pwd.struct_passwd
) -> None:
    prefix = tmp_path / "prefix"
    result = run_bootstrap(prefix, [interp_bin], PRESENT, user="nobody")
    assert result.returncode == 0, (prefix / "bootstrap.log").read_text()
    assert (prefix / "venv" / "pyvenv.cfg").stat().st_uid == nobody.pw_uid
    assert (prefix / "venv" / "bin").stat().st_uid == nobody.pw_uid
    assert (prefix / "ready").stat().st_uid == 0


@pytest.mark.usefixtures("no_system_uv")
def test_replaces_venv_with_wrong_python(tmp_path: Path, interp_bin: Path) -> None:
    prefix = tmp_path / "prefix"
    fake = prefix / "venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 3.0 none none none\n")
    fake.chmod(0o755)
    result = run_bootstrap(prefix, [interp_bin], PRESENT)
    assert result.returncode == 0, (prefix / "bootstrap.log").read_text()
    assert fake.is_symlink()  # a real venv replaced the stub
    assert (prefix / "ready").read_text() == f"{fake}\n"


@pytest.mark.usefixtures("no_system_uv")
def test_uninstallable_version_fails(tmp_path: Path, interp_bin: Path) -> None:
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    (prefix / "ready").write_text("stale\n")
    result = run_bootstrap(prefix, [interp_bin], PRESENT, covalent="0.0.0-does-not-exist")
    reason = assert_failed(prefix, result, "covalent==0.0.0-does-not-exist")
    assert reason.startswith("installing ")
    log = (prefix / "bootstrap.log").read_text()
    assert "ERROR: Invalid requirement: 'covalent==0.0.0-does-not-exist'" in log


def test_install_that_leaves_wrong_versions_fails_verify(tmp_path: Path, interp_bin: Path) -> None:
    """A fake uv on PATH: checks the uv command lines and that verify catches a no-op install."""
    uv_bin = tmp_path / "uvbin"
    uv_bin.mkdir()
    calls = tmp_path / "uv-calls"
    fake_uv = uv_bin / "uv"
    fake_uv.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {calls}\n'
        'if [ "$1" = venv ]; then exec "$5" -m venv --system-site-packages "$6"; fi\n'
        '[ "$1" = pip ]\n'
    )
    fake_uv.chmod(0o755)
    prefix = tmp_path / "prefix"
    result = run_bootstrap(prefix, [interp_bin, uv_bin], PRESENT, covalent="0.1.0")
    assert_failed(
        prefix, result, f"want python/covalent/cloudpickle {PY_MINOR} 0.1.0 {CLOUDPICKLE}"
    )
    assert f"found {PY_MINOR} {COVALENT} {CLOUDPICKLE}" in (prefix / "failed").read_text()
    venv = prefix / "venv"
    assert calls.read_text().splitlines() == [
        f"venv --seed --system-site-packages --python {BASE_PYTHON} {venv}",
        f"pip install --python {venv}/bin/python covalent==0.1.0 cloudpickle=={CLOUDPICKLE}",
    ]


def test_no_interpreter_fails(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    result = run_bootstrap(prefix, [], OFFLINE, python="3.99")
    assert_failed(prefix, result, "no Python 3.99 found")
    assert not (prefix / "venv").exists()


def test_interpreter_with_wrong_version_is_rejected(tmp_path: Path) -> None:
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    fake = fake_bin / f"python{PY_MINOR}"
    fake.write_text("#!/bin/sh\necho 2.7 /usr/bin/python2.7\n")
    fake.chmod(0o755)
    prefix = tmp_path / "prefix"
    result = run_bootstrap(prefix, [fake_bin], OFFLINE)
    assert_failed(prefix, result, f"no Python {PY_MINOR} found")


def test_prefix_from_env_and_flag_wins(tmp_path: Path) -> None:
    from_env, from_flag = tmp_path / "env-prefix", tmp_path / "flag-prefix"
    extra = {**OFFLINE, "EC2_EXECUTOR_PREFIX": str(from_env)}
    result = run_bootstrap(None, [], extra, python="3.99")
    assert_failed(from_env, result, "no Python 3.99 found")

    result = run_bootstrap(from_flag, [], extra, python="3.99")
    assert_failed(from_flag, result, "no Python 3.99 found")
    assert (from_env / "bootstrap.log").read_text().count("FAILED") == 1


@pytest.mark.parametrize(
    ("kwargs", "extra_args", "message"),
    [
        ({}, ("--bogus", "x"), "usage: unknown argument '--bogus'"),
        ({"python": "3"}, (), "usage: --python must be like 3.11"),
        ({"covalent": ""}, (), "usage: --covalent and --cloudpickle are required"),
    ],
    ids=["unknown-arg", "bad-python", "missing-covalent"],
)
def test_usage_errors_write_failed(
    tmp_path: Path, kwargs: dict[str, Any], extra_args: tuple[str, ...], message: str
) -> None:
    prefix = tmp_path / "prefix"
    result = run_bootstrap(prefix, [], OFFLINE, extra_args=extra_args, **kwargs)
    assert_failed(prefix, result, message)


# --- real install from the package index ----------------------------------------


def _uv_dir() -> str | None:
    try:
        import uv

        return str(Path(uv.find_uv_bin()).parent)
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        return str(Path(found).parent) if found else None


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_real_install_from_index(tmp_path: Path, interp_bin: Path, installer: str) -> None:
    path_dirs: list[Path | str] = [interp_bin]
    if installer == "uv":
        uv_dir = _uv_dir()
        if uv_dir is None:
            pytest.skip("uv is not installed")
        uv_link = tmp_path / "uvbin"
        uv_link.mkdir()
        (uv_link / "uv").symlink_to(Path(uv_dir) / "uv")  # only uv, not the whole dir
        path_dirs.append(uv_link)
    elif shutil.which("uv", path=os.pathsep.join(SYSTEM_PATH)):
        pytest.skip("uv is on the system PATH; cannot exercise the pip path")

    prefix = tmp_path / "prefix"
    result = run_bootstrap(prefix, path_dirs, timeout=900)
    log = (prefix / "bootstrap.log").read_text()
    assert result.returncode == 0, log[-5000:]
    venv_python = prefix / "venv" / "bin" / "python"
    assert (prefix / "ready").read_text() == f"{venv_python}\n"
    assert not (prefix / "cache").exists()

    env = _env([])
    found = venv_versions(str(venv_python), env, tmp_path)
    assert found[1:4] == [PY_MINOR, COVALENT, CLOUDPICKLE]
    subprocess.run(
        [str(venv_python), "-c", "import covalent, cloudpickle"], env=env, cwd=tmp_path, check=True
    )

    started = time.monotonic()
    again = run_bootstrap(prefix, path_dirs)
    assert again.returncode == 0
    assert time.monotonic() - started < 5
