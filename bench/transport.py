"""Our SSH transport (`ec2_executor.remote.RemoteHost`) against the Covalent SSH plugin
(`covalent-ssh-plugin`, its `SSHExecutor.run` driven directly) and plain `scp`, all against one
`sshd` on 127.0.0.1 started for this benchmark. Same trivial function, same 100 MiB numpy
argument, same remote interpreter, alternating, several repeats.

python -m bench.transport [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_TMP,
    Section,
    Stat,
    Target,
    benchmark_main,
    fmt_s,
    free_port,
    median,
    network_guard,
    progress,
    scratch,
    table,
)

KEY = "transport"
TITLE = "3. Transport: our SSH round trip vs the Covalent SSH plugin vs scp"
COMMAND = "python -m bench.transport"

PLUGIN = "covalent-ssh-plugin==0.24.1"
"""The newest release (Sept. 2023); it requires covalent>=0.202.0,<1, so it accepts 0.240.0."""
PLUGIN_REQUIREMENTS = (PLUGIN, "covalent==0.240.0", "fastapi<0.132")
BIG_BYTES = 100 * 2**20
PRIVSEP_DIR = Path("/run/sshd")
SESSION_LINE = re.compile(r"server_input_channel_open: ctype session")
AUTH_LINE = re.compile(r"Accepted publickey for ")


# --- the sshd ---------------------------------------------------------------------------------


@dataclass
class Sshd:
    port: int
    user: str
    workdir: Path
    client_key_file: Path
    client_key: Any
    authorized_key: str
    host_public: Any
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.workdir / "sshd.log"

    def counts(self) -> tuple[int, int]:
        """(connections authenticated, session channels opened) so far, from sshd's log."""
        text = self.log.read_text(errors="replace")
        return len(AUTH_LINE.findall(text)), len(SESSION_LINE.findall(text))

    def counts_settled(self, before: tuple[int, int]) -> tuple[int, int]:
        """The counts since `before`, once sshd's session processes have flushed their lines."""
        last: tuple[int, int] = (-1, -1)
        for _ in range(20):
            now = self.counts()
            if now == last:
                break
            last = now
            time.sleep(0.05)
        return last[0] - before[0], last[1] - before[1]


@contextlib.contextmanager
def sshd(prefix: Path) -> Iterator[Sshd]:
    """One OpenSSH server on 127.0.0.1:<free port>, keys generated here, like the harness's
    emulated boot (tests/harness/boot.py) but at LogLevel DEBUG1, to count session channels."""
    from harness import generate_ed25519_keypair

    workdir = scratch("sshd")
    host, client = generate_ed25519_keypair("bench-host"), generate_ed25519_keypair("bench")
    host_key = workdir / "host_key"
    host_key.write_text(host.private_openssh)
    client_key_file = workdir / "client_key"
    client_key_file.write_text(client.private_openssh)
    for path in (host_key, client_key_file):
        path.chmod(0o600)
    (workdir / "authorized_keys").write_text(client.public_openssh + "\n")
    port = free_port()
    PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    (workdir / "sshd_config").write_text(
        textwrap.dedent(
            f"""\
            Port {port}
            ListenAddress 127.0.0.1:{port}
            HostKey "{host_key}"
            AuthorizedKeysFile "{workdir / "authorized_keys"}"
            PidFile "{workdir / "sshd.pid"}"
            StrictModes no
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            PermitRootLogin prohibit-password
            UseDNS no
            PrintMotd no
            X11Forwarding no
            MaxStartups 100
            MaxSessions 100
            LogLevel DEBUG1
            Subsystem sftp internal-sftp
            SetEnv "EC2_EXECUTOR_PREFIX={prefix}"
            """
        )
    )
    sshd_path = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin")
    if not sshd_path:
        raise RuntimeError("sshd (openssh-server) is not installed")
    process = subprocess.Popen(
        [
            str(Path(sshd_path).resolve()),
            "-D",
            "-e",
            "-f",
            str(workdir / "sshd_config"),
            "-E",
            str(workdir / "sshd.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while "Server listening on" not in _read(workdir / "sshd.log"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {_read(workdir / 'sshd.log')[-2000:]}")
            time.sleep(0.02)
        yield Sshd(
            port=port,
            user=getpass.getuser(),
            workdir=workdir,
            client_key_file=client_key_file,
            client_key=client.paramiko_key(),
            authorized_key=client.public_openssh,
            host_public=host.paramiko_public_key(),
            process=process,
        )
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# --- ours: RemoteHost ------------------------------------------------------------------------


def ours(server: Sshd, args: list[Any], remote_dir: Path) -> tuple[float, Any, int]:
    """What `Electron.run_task` does once the stack is up: connect, wait for the bootstrap,
    pickle the task, one command with the payload on stdin and the envelope on stdout, unpickle.
    Returns (seconds, result, round trips)."""
    import cloudpickle

    from ec2_executor.access import ClientIdentity
    from ec2_executor.remote import Endpoint, RemoteHost

    function = (lambda x: x) if args else (lambda: 1)
    started = time.perf_counter()
    remote = RemoteHost(
        Endpoint(host="127.0.0.1", port=server.port, user=server.user),
        ClientIdentity(key=server.client_key, authorized_key=server.authorized_key),
        server.host_public,
    )
    with remote:
        remote.connect()
        python = remote.wait_for_bootstrap(30)
        payload = cloudpickle.dumps((function, args, {}))
        envelope = cloudpickle.loads(
            remote.run_task(payload, python=python, remote_dir=str(remote_dir))
        )
    seconds = time.perf_counter() - started
    if envelope["traceback"]:
        raise RuntimeError(envelope["traceback"])
    return seconds, envelope["result"], remote.round_trips


# --- theirs: covalent-ssh-plugin in its own venv ---------------------------------------------

DRIVER = r'''
"""Drives covalent_ssh_plugin.SSHExecutor.run directly; one JSON line per command on stdin."""
import asyncio, json, os, sys, time

import asyncssh

counts = {"connections": 0, "sessions": 0}
_connect = asyncssh.connect
async def connect(*args, **kwargs):
    counts["connections"] += 1
    return await _connect(*args, **kwargs)
asyncssh.connect = connect
_create_session = asyncssh.SSHClientConnection.create_session
async def create_session(self, *args, **kwargs):
    counts["sessions"] += 1
    return await _create_session(self, *args, **kwargs)
asyncssh.SSHClientConnection.create_session = create_session

import covalent  # first: covalent then loads the plugin whole and adds [executors.ssh]
import numpy as np
from covalent_ssh_plugin.ssh import SSHExecutor

settings = json.loads(sys.argv[1])
executor = SSHExecutor(
    username=settings["user"],
    hostname="127.0.0.1",  # the port comes from $HOME/.ssh/config (the plugin passes none)
    ssh_key_file=settings["key"],
    cache_dir=settings["cache_dir"],
    python_path=settings["python"],
    remote_cache=settings["remote_cache"],
    remote_workdir=settings["remote_workdir"],
)
big = np.ones(settings["big_bytes"] // 8)
loop = asyncio.new_event_loop()
print("BENCH " + json.dumps({"ready": True}), flush=True)
for number, line in enumerate(sys.stdin):
    kind = line.strip()
    function, args = (lambda x: x, [big]) if kind == "big" else (lambda: 1, [])
    counts.update(connections=0, sessions=0)
    started = time.perf_counter()
    result = loop.run_until_complete(
        executor.run(function, args, {}, {"dispatch_id": f"bench-{number}", "node_id": 0})
    )
    seconds = time.perf_counter() - started
    ok = result.nbytes == big.nbytes and bool((result == 1).all()) if kind == "big" else result == 1
    print("BENCH " + json.dumps({"seconds": seconds, "ok": bool(ok), **counts}), flush=True)
'''


def plugin_venv() -> tuple[Path, float | None]:
    """The SSH plugin's venv (kept in the benchmarks' temp dir); built when missing. Returns
    its python and the install time when this run built it."""
    import importlib.metadata

    venv = BENCH_TMP / "ssh-plugin-venv"
    wanted = [
        *PLUGIN_REQUIREMENTS,
        f"numpy=={importlib.metadata.version('numpy')}",
        f"cloudpickle=={importlib.metadata.version('cloudpickle')}",
    ]
    marker = venv / "bench-requirements.json"
    python = venv / "bin" / "python"
    if marker.exists() and json.loads(marker.read_text()) == wanted and python.exists():
        return python, None
    progress(f"transport: installing {' '.join(wanted)} into {venv} (once)")
    shutil.rmtree(venv, ignore_errors=True)
    started = time.monotonic()
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    marker.write_text(json.dumps(wanted))
    return python, time.monotonic() - started


class Theirs:
    """The long-lived driver process: one `SSHExecutor.run` per request, timed inside it."""

    def __init__(self, python: Path, server: Sshd, remote_python: str, base: Path) -> None:
        home = base / "home"
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "config").write_text(f"Host 127.0.0.1\n  Port {server.port}\n")
        for name in ("cache", "remote-cache", "workdir", "covalent"):
            (base / name).mkdir()
        driver = base / "driver.py"
        driver.write_text(DRIVER)
        settings = {
            "user": server.user,
            "key": str(server.client_key_file),
            "cache_dir": str(base / "cache"),
            "python": remote_python,
            "remote_cache": str(base / "remote-cache"),
            "remote_workdir": str(base / "workdir"),
            "big_bytes": BIG_BYTES,
        }
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            **{
                name: str(base / "covalent" / name.lower())
                for name in (
                    "COVALENT_CONFIG_DIR",
                    "COVALENT_CACHE_DIR",
                    "COVALENT_DATA_DIR",
                    "COVALENT_LOGDIR",
                    "COVALENT_RESULTS_DIR",
                    "COVALENT_DISPATCH_CACHE_DIR",
                    "COVALENT_EXECUTOR_DIR",
                )
            },
        }
        self.process = subprocess.Popen(
            [str(python), str(driver), json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            cwd=base,
        )
        self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:  # covalent may log to stdout too: replies carry a prefix
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the SSH plugin driver exited ({self.process.wait()})")
            if line.startswith("BENCH "):
                reply: dict[str, Any] = json.loads(line[len("BENCH ") :])
                return reply

    def run(self, kind: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(kind + "\n")
        self.process.stdin.flush()
        reply = self._reply()
        if not reply.get("ok"):
            raise RuntimeError(f"the SSH plugin returned a wrong result: {reply}")
        return reply

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


# --- scp -------------------------------------------------------------------------------------


def scp_round_trip(server: Sshd, local: Path, remote: Path, back: Path) -> float:
    base = [
        "scp",
        "-q",
        "-i",
        str(server.client_key_file),
        "-P",
        str(server.port),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ]
    target = f"{server.user}@127.0.0.1:{remote}"
    started = time.perf_counter()
    subprocess.run([*base, str(local), target], check=True, timeout=300)
    subprocess.run([*base, target, str(back)], check=True, timeout=300)
    seconds = time.perf_counter() - started
    if back.stat().st_size != local.stat().st_size:
        raise RuntimeError("scp brought back a different size")
    return seconds


# --- the benchmark ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Section:
    import cloudpickle
    import numpy as np

    repeats = args.repeats or 5
    section = Section(KEY, TITLE, COMMAND)
    plugin_python, install_seconds = plugin_venv()
    plugin_version = subprocess.run(
        [str(plugin_python), "-m", "pip", "show", "covalent-ssh-plugin"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    version = re.search(r"^Version: (\S+)", plugin_version, re.MULTILINE)
    base = scratch("transport")
    prefix = base / "prefix"
    prefix.mkdir()
    remote_python = sys.executable  # the same interpreter runs both sides' remote code
    (prefix / "ready").write_text(remote_python + "\n")
    big = np.ones(BIG_BYTES // 8)
    blob = base / "payload.bin"
    blob.write_bytes(cloudpickle.dumps((lambda x: x, [big], {})))
    results: dict[str, list[Any]] = {
        "ours_trivial": [],
        "theirs_trivial": [],
        "ours_big": [],
        "theirs_big": [],
        "scp_big": [],
    }
    with network_guard(), sshd(prefix) as server:
        theirs = Theirs(plugin_python, server, remote_python, base / "plugin")
        try:
            progress("transport: warm-up (one run each)")
            ours(server, [], base / "ours-warm")
            theirs.run("trivial")

            def measure_ours(kind: str, index: int) -> None:
                before = server.counts()
                remote_dir = base / f"ours-{kind}-{index}"
                seconds, result, trips = ours(server, [big] if kind == "big" else [], remote_dir)
                if kind == "big":
                    if not (result.nbytes == big.nbytes and bool((result == 1).all())):
                        raise RuntimeError("our transport returned a different array")
                elif result != 1:
                    raise RuntimeError(f"our transport returned {result!r}")
                connections, sessions = server.counts_settled(before)
                results[f"ours_{kind}"].append(
                    {"seconds": seconds, "round_trips": trips, "sshd": [connections, sessions]}
                )
                shutil.rmtree(remote_dir, ignore_errors=True)

            def measure_theirs(kind: str) -> None:
                before = server.counts()
                reply = theirs.run(kind)
                connections, sessions = server.counts_settled(before)
                reply["sshd"] = [connections, sessions]
                results[f"theirs_{kind}"].append(reply)

            for i in range(repeats):
                progress(f"transport: trivial function, repeat {i + 1}/{repeats}")
                # Alternate who goes first, so drift on this shared machine hits both alike.
                if i % 2 == 0:
                    measure_ours("trivial", i)
                    measure_theirs("trivial")
                else:
                    measure_theirs("trivial")
                    measure_ours("trivial", i)
            for i in range(repeats):
                progress(f"transport: 100 MiB round trip, repeat {i + 1}/{repeats}")
                order = ["ours", "theirs", "scp"] if i % 2 == 0 else ["scp", "theirs", "ours"]
                for who in order:
                    if who == "ours":
                        measure_ours("big", i)
                    elif who == "theirs":
                        measure_theirs("big")
                    else:
                        before = server.counts()
                        seconds = scp_round_trip(
                            server, blob, base / "scp-remote.bin", base / "scp-back.bin"
                        )
                        connections, sessions = server.counts_settled(before)
                        results["scp_big"].append(
                            {"seconds": seconds, "sshd": [connections, sessions]}
                        )
                        for name in ("scp-remote.bin", "scp-back.bin"):
                            (base / name).unlink(missing_ok=True)
        finally:
            theirs.close()
    section.data = {
        "plugin": f"covalent-ssh-plugin {version.group(1) if version else '?'}",
        "plugin_install_seconds": install_seconds,
        "payload_bytes": blob.stat().st_size,
        **results,
    }
    section.targets, section.body = render(section.data, repeats)
    return section


def _pair_ratios(slow: list[dict[str, Any]], fast: list[dict[str, Any]]) -> list[float]:
    return [s["seconds"] / f["seconds"] for s, f in zip(slow, fast, strict=True)]


def render(data: dict[str, Any], repeats: int) -> tuple[list[Target], str]:
    def stat(key: str) -> Stat:
        return Stat.of([r["seconds"] for r in data[key]])

    payload = data["payload_bytes"]
    trivial_ratio = median(_pair_ratios(data["theirs_trivial"], data["ours_trivial"]))
    # Throughput of a round trip: the bytes go up and come back.
    scp_vs_ours = median(_pair_ratios(data["scp_big"], data["ours_big"]))
    mib = 2 * payload / 2**20

    def throughput(key: str) -> str:
        return f"{mib / stat(key).median:.0f} MiB/s"

    targets = [
        Target(
            "trivial function: SSH plugin time / our time",
            f"{trivial_ratio:.1f}× (ours {fmt_s(stat('ours_trivial').median)}, plugin "
            f"{fmt_s(stat('theirs_trivial').median)})",
            "≥ 3×",
            trivial_ratio >= 3,
        ),
        Target(
            "100 MiB round trip: our throughput / scp's",
            f"{scp_vs_ours:.2f} (ours {throughput('ours_big')}, scp {throughput('scp_big')})",
            "≥ 0.5",
            scp_vs_ours >= 0.5,
        ),
    ]

    def trips(key: str) -> str:
        first = data[key][0]
        connections, sessions = first["sshd"]
        own = ""
        if "round_trips" in first:
            own = f"; `RemoteHost.round_trips` = {first['round_trips']}"
        if "sessions" in first:
            own = (
                f"; in the plugin's process: {first['connections']} `asyncssh.connect`, "
                f"{first['sessions']} `create_session`"
            )
        return f"{connections} connection(s), {sessions} session channel(s){own}"

    rows = []
    for key, label in (
        ("ours_trivial", "ours (`RemoteHost`), `lambda: 1`"),
        ("theirs_trivial", "SSH plugin (`SSHExecutor.run`), `lambda: 1`"),
        ("ours_big", "ours, 100 MiB array round trip"),
        ("theirs_big", "SSH plugin, 100 MiB array round trip"),
        ("scp_big", "`scp` up + `scp` back, the same pickled bytes"),
    ):
        extra = f"{mib / stat(key).median:.0f} MiB/s" if key.endswith("big") else "–"
        rows.append((label, stat(key).s(), extra, trips(key)))
    install = data.get("plugin_install_seconds")
    install_text = (
        f"This run installed it ({install:.0f} s, not measured)."
        if install
        else "It was installed by an earlier run (kept there)."
    )
    big_ratio = median(_pair_ratios(data["theirs_big"], data["ours_big"]))
    body = f"""
One `sshd` (OpenSSH, `LogLevel DEBUG1`) on 127.0.0.1 and a free port, with a host key and a
client key generated for the run. The same remote interpreter ({sys.executable}, cloudpickle and
numpy) runs both sides' remote code. {data["plugin"]} was installed from PyPI into its own
venv (`python -m venv` + `pip install {" ".join(PLUGIN_REQUIREMENTS)} numpy cloudpickle`, pinned
to this venv's numpy and cloudpickle) under {BENCH_TMP}. {install_text} 0.24.1 is the plugin's
newest release and asks for `covalent>=0.202.0,<1`, so it takes covalent 0.240.0 as is.

- **Ours**: what `Electron.run_task` does once the stack is up, with a new `RemoteHost` per
  run: connect (pinned host key), `wait_for_bootstrap` (one command; the ready file is already
  there), cloudpickle the task, `run_task` (one command: payload on stdin, envelope on stdout),
  unpickle. Timed in this process.
- **SSH plugin**: `SSHExecutor(username, hostname="127.0.0.1", ssh_key_file, cache_dir,
  python_path, remote_cache, remote_workdir).run(fn, args, {{}}, task_metadata)` called directly
  (no Covalent dispatch, no server) in a long-lived process of the plugin's venv, timed around
  `run` inside that process; defaults otherwise (`do_cleanup=True`). The plugin passes no port to
  `asyncssh.connect`; the port comes from `~/.ssh/config` of a `HOME` made for the driver.
- **scp**: `scp` (OpenSSH {_scp_version()}, SFTP protocol, default cipher) of the pickled
  payload ({payload / 2**20:.1f} MiB) up, then back.

{repeats} repeats, each pair run back to back with the order alternating; one warm-up run
each first. Times are medians (min–max); ratios are medians of the per-pair ratios.

{table(("Run", "Time", "Round-trip throughput", "SSH round trips (from sshd's log)"), rows)}

Round trips are counted on the server, the same way for everyone: `Accepted publickey` lines
(connections) and `server_input_channel_open: ctype session` lines (session channels: one per
command, per scp transfer, per SFTP session) in sshd's DEBUG1 log. The plugin's own counters
(patched `asyncssh.connect` and `SSHClientConnection.create_session` in its process) agree.
The plugin opens a connection per task and then runs `python --version`, `mkdir`, two scp
uploads (function and script), the task, `ls` of the result, one scp download and three `rm`:
ten sessions, each a round trip on a real network, where ours uses two.

On 100 MiB the plugin takes {big_ratio:.2f}× our time: it pickles to a local file, copies it
with scp, and the result comes back the same way, through files on both ends.
"""
    return targets, body


def _scp_version() -> str:
    done = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().split(",")[0].replace("OpenSSH_", "")


def main() -> None:
    benchmark_main(KEY, run, __doc__ or "")


if __name__ == "__main__":
    main()
    sys.exit(0)
