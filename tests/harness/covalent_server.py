"""A real Covalent server (`covalent start`) for end-to-end tests, in its own temporary directories.

Covalent 0.240.0 takes every path it writes from environment variables, falling back to the
user's home (`covalent/_shared_files/defaults.py`): `CovalentPaths` sets all of them under one
temporary directory, for the server *and* for the test process (the client reads the same config
file, as it does with a real server). The server also gets its own `HOME` and `XDG_*` homes, so
nothing it runs can write to the user's real `~/.config/covalent`, `~/.cache/covalent` or
`~/.local/share/covalent`.

    paths = CovalentPaths.create(base_dir)
    with client_isolation(paths):            # before the test process imports covalent, if it can
        server = CovalentServer.start(paths, env=aws_env, executors={"ec2": {...}})
        ...  ct.dispatch(...)  ...
        server.stop()

`covalent start` runs the server as a daemon (`sh -c "python app.py ... >> log"`, pid in
`<cache>/ui.pid`). Every process of the server carries a marker variable, so `stop()` can find
whatever `covalent stop` left behind, even orphans, and end it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import toml  # type: ignore[import-untyped, unused-ignore]

from .moto import AWS_ENV_UNSET, patched_environ
from .net import free_port
from .processes import alive, cmdline, pids_with_env, terminate

log = logging.getLogger("harness.covalent")

MARKER_ENV = "EC2_EXECUTOR_HARNESS_COVALENT_SERVER"
"""Set in the server's environment (inherited by all its processes) to find them at `stop()`."""

ADDRESS = "127.0.0.1"
"""The server binds here (`dispatcher.address`), and the client connects here."""

TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "POSTPROCESSING_FAILED"})


def _venv_bin() -> Path:
    return Path(sys.executable).parent


@dataclass(frozen=True)
class CovalentPaths:
    """Every directory Covalent 0.240.0 writes, under `base`, and the variables that say so."""

    base: Path

    @classmethod
    def create(cls, base: Path | str) -> CovalentPaths:
        paths = cls(Path(base).resolve())
        for directory in paths.directories():
            directory.mkdir(parents=True, exist_ok=True)
        return paths

    @property
    def config_dir(self) -> Path:
        return self.base / "config"

    @property
    def cache_dir(self) -> Path:
        return self.base / "cache"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_dir(self) -> Path:
        return self.base / "logs"

    @property
    def results_dir(self) -> Path:
        """Where the client downloads results (`sdk.results_dir`)."""
        return self.base / "results"

    @property
    def dispatch_cache_dir(self) -> Path:
        return self.base / "dispatches"

    @property
    def executor_dir(self) -> Path:
        return self.base / "executor_plugins"

    @property
    def home(self) -> Path:
        """`HOME` of the server processes."""
        return self.base / "home"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "covalent.conf"

    @property
    def database(self) -> Path:
        return self.data_dir / "dispatcher_db.sqlite"

    @property
    def pid_file(self) -> Path:
        """Written by `covalent start` (`dispatcher.cache_dir/ui.pid`)."""
        return self.cache_dir / "ui.pid"

    @property
    def server_log(self) -> Path:
        """The server's stdout and stderr (`user_interface.log_dir/covalent_ui.log`)."""
        return self.log_dir / "covalent_ui.log"

    def directories(self) -> tuple[Path, ...]:
        return (
            self.config_dir,
            self.cache_dir,
            self.data_dir,
            self.log_dir,
            self.results_dir,
            self.dispatch_cache_dir,
            self.executor_dir,
            self.home / ".config",
            self.home / ".cache",
            self.home / ".local" / "share",
        )

    def environment(self) -> dict[str, str]:
        """The COVALENT_* variables, for the server and the client alike."""
        return {
            "COVALENT_CONFIG_DIR": str(self.config_dir),
            "COVALENT_CACHE_DIR": str(self.cache_dir),
            "COVALENT_DATA_DIR": str(self.data_dir),
            "COVALENT_LOGDIR": str(self.log_dir),
            "COVALENT_RESULTS_DIR": str(self.results_dir),
            "COVALENT_DISPATCH_CACHE_DIR": str(self.dispatch_cache_dir),
            "COVALENT_EXECUTOR_DIR": str(self.executor_dir),
            "COVALENT_DATABASE": str(self.database),
            "COVALENT_HEARTBEAT_FILE": str(self.cache_dir / "heartbeat"),
            "COVALENT_DISPATCHER_ADDR": ADDRESS,
            "COVALENT_DISABLE_DASK": "1",
        }

    def home_environment(self) -> dict[str, str]:
        """A home of its own, for subprocesses (never for the test process itself)."""
        return {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_CONFIG_DIR": str(self.home / ".config"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
        }


# --- the client: the test process ------------------------------------------------------------


@contextlib.contextmanager
def client_isolation(paths: CovalentPaths) -> Iterator[None]:
    """Point the covalent client of this process at `paths`, and not at the user's home.

    Sets the COVALENT_* variables; if covalent is already imported (its config manager read
    the user's config at import), re-points its config manager and the dispatch cache that
    `covalent._dispatcher_plugins.local` read at import. On exit the variables are restored
    and a re-pointed manager gets its previous state back in memory (nothing is written).
    """
    with patched_environ(paths.environment(), unset=()):
        config_module = sys.modules.get("covalent._shared_files.config")
        local_module = sys.modules.get("covalent._dispatcher_plugins.local")
        saved: dict[str, Any] = {}
        if config_module is not None:
            manager = config_module._config_manager
            saved = {"config_file": manager.config_file, "config_data": manager.config_data}
            type(manager).__init__(manager)  # reads the variables above, writes our file only
        saved_cache = getattr(local_module, "dispatch_cache_dir", None)
        if local_module is not None:
            setattr(local_module, "dispatch_cache_dir", paths.dispatch_cache_dir)  # noqa: B010
        try:
            yield
        finally:
            if local_module is not None:
                setattr(local_module, "dispatch_cache_dir", saved_cache)  # noqa: B010
            if saved:
                assert config_module is not None
                vars(config_module._config_manager).update(saved)


def point_client_at(server: CovalentServer) -> None:
    """Make the covalent client of this process use `server` (re-reads the shared config)."""
    from covalent._shared_files.config import reload_config, set_config

    if Path(_client_config_file()) != server.paths.config_file:
        raise RuntimeError(
            f"the covalent client reads {_client_config_file()}, not {server.paths.config_file}:"
            " use client_isolation() before dispatching"
        )
    reload_config()
    set_config({"dispatcher.address": ADDRESS, "dispatcher.port": server.port})


def _client_config_file() -> str:
    from covalent._shared_files import config

    return str(config._config_manager.config_file)


# --- the server ------------------------------------------------------------------------------


@dataclass
class CovalentServer:
    """A running `covalent start` server; `stop()` it (idempotent)."""

    paths: CovalentPaths
    port: int
    env: dict[str, str] = field(repr=False)
    marker: str
    log_level: str = "warning"
    """`sdk.log_level` (the server log's level; "info" adds every HTTP request)."""
    pid: int | None = None
    start_seconds: float = 0.0
    killed_after_stop: list[str] = field(default_factory=list)
    """Processes `covalent stop` left behind that `stop()` had to end (command lines)."""
    _stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://{ADDRESS}:{self.port}"

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        paths: CovalentPaths,
        *,
        env: Mapping[str, str] | None = None,
        executors: Mapping[str, Mapping[str, Any]] | None = None,
        port: int | None = None,
        timeout: float = 120.0,
        log_level: str = "warning",
    ) -> CovalentServer:
        """Write the config (`[executors.<name>]` from `executors`), `covalent start --no-cluster`,
        and wait until the server answers HTTP.

        env: extra variables for the server (AWS endpoint, caches, ...); the AWS variables that
            could reach real AWS are removed from the inherited environment.
        """
        port = port or free_port()
        marker = uuid.uuid4().hex
        server = cls(
            paths=paths,
            port=port,
            env=_server_environment(paths, env or {}, marker, log_level),
            marker=marker,
            log_level=log_level,
        )
        server._write_config(executors or {})
        began = time.monotonic()
        try:
            server._covalent("start", "--port", str(port), "--no-cluster", timeout=timeout)
            server._wait_until_up(began + timeout)
        except BaseException:
            server.stop()
            raise
        server.start_seconds = time.monotonic() - began
        server.pid = _read_pid(paths.pid_file)
        log.info("covalent server on %s after %.1f s", server.url, server.start_seconds)
        return server

    def stop(self, timeout: float = 60.0) -> None:
        """`covalent stop`, then end whatever process of the server is still there."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._covalent("stop", timeout=timeout)
        except (subprocess.SubprocessError, OSError) as error:
            log.warning("covalent stop failed: %s", error)
        leftovers = pids_with_env(f"{MARKER_ENV}={self.marker}")
        self.killed_after_stop = [cmdline(pid) for pid in leftovers]
        terminate(leftovers, grace=10.0, label="covalent server")
        still = [pid for pid in pids_with_env(f"{MARKER_ENV}={self.marker}") if alive(pid)]
        if still:
            raise RuntimeError(f"covalent server processes survived SIGKILL: {still}")

    def __enter__(self) -> CovalentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def processes(self) -> list[int]:
        """Live processes of this server (the daemon and its children)."""
        return [pid for pid in pids_with_env(f"{MARKER_ENV}={self.marker}") if alive(pid)]

    # -- debugging ----------------------------------------------------------------------------

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.paths.server_log.read_text(errors="replace")
        except FileNotFoundError:
            return f"({self.paths.server_log} does not exist)"
        return "\n".join(text.splitlines()[-lines:])

    # -- results ------------------------------------------------------------------------------

    def wait_for_result(self, dispatch_id: str, timeout: float = 300.0) -> Any:
        """The full `Result` once the dispatch is in a final state (`ct.get_result(wait=True)`
        has no deadline: this one raises `TimeoutError` with the server log's tail)."""
        from covalent._results_manager.results_manager import get_result

        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            status_only: Any = get_result(dispatch_id, status_only=True)  # a dict, in fact
            status = str(status_only["status"])
            if status in TERMINAL_STATUSES:
                return get_result(dispatch_id, wait=True)
            time.sleep(0.5)
        raise TimeoutError(
            f"dispatch {dispatch_id} still {status} after {timeout:.0f} s; server log tail:\n"
            + self.log_tail()
        )

    # -- internals ----------------------------------------------------------------------------

    def _write_config(self, executors: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge our settings into the (shared) config file before the server reads it."""
        file = self.paths.config_file
        data: dict[str, Any] = toml.load(file) if file.is_file() else {}
        data.setdefault("dispatcher", {}).update({"address": ADDRESS, "port": self.port})
        data.setdefault("user_interface", {}).update({"address": ADDRESS, "port": self.port})
        data.setdefault("sdk", {}).update({"no_cluster": "true", "log_level": self.log_level})
        # The client wrote its executor plugins' defaults here at import, some of them under
        # this user's home (e.g. [executors.local] workdir): move those into the server's home.
        for section in data.get("executors", {}).values():
            _rehome(section, Path.home(), self.paths.home)
        for name, settings in executors.items():
            data.setdefault("executors", {}).setdefault(name, {}).update(dict(settings))
        file.write_text(toml.dumps(data))

    def _covalent(self, *args: str, timeout: float) -> str:
        command = [str(_venv_bin() / "covalent"), *args]
        try:
            done = subprocess.run(
                command,
                env=self.env,
                cwd=self.paths.base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(
                f"`covalent {' '.join(args)}` did not return within {timeout:.0f} s; "
                f"server log tail:\n{self.log_tail()}"
            ) from error
        if done.returncode != 0 or "Error" in done.stdout:
            raise RuntimeError(
                f"`covalent {' '.join(args)}` exited {done.returncode}:\n{done.stdout}\n"
                f"{done.stderr}\nserver log tail:\n{self.log_tail()}"
            )
        return done.stdout

    def _wait_until_up(self, deadline: float) -> None:
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    response.read()
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError as error:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"covalent server on {self.url} does not answer ({error}); log tail:\n"
                        + self.log_tail()
                    ) from error
                time.sleep(0.2)


@contextlib.contextmanager
def own_servers(
    paths: CovalentPaths,
    *,
    env: Mapping[str, str],
    executors: Mapping[str, Mapping[str, Any]],
    log_level: str = "warning",
) -> Iterator[Callable[[], CovalentServer]]:
    """A test's own Covalent servers on `paths`, one per call of the function it yields (the
    client pointed at the newest; a server started again after a kill uses the same files),
    all stopped at the end, when the client goes back to what it used before."""
    started: list[CovalentServer] = []

    def start() -> CovalentServer:
        server = CovalentServer.start(paths, env=env, executors=executors, log_level=log_level)
        point_client_at(server)
        started.append(server)
        return server

    with client_isolation(paths):
        try:
            yield start
        finally:
            for server in reversed(started):
                server.stop()


def _server_environment(
    paths: CovalentPaths, extra: Mapping[str, str], marker: str, log_level: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AWS_ENV_UNSET}
    env.update(paths.environment())
    env.update(paths.home_environment())
    env.update(extra)
    env[MARKER_ENV] = marker
    env["LOGLEVEL"] = log_level
    env["PATH"] = f"{_venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _rehome(section: dict[str, Any], real_home: Path, home: Path) -> None:
    prefix = f"{real_home}{os.sep}"
    for key, value in section.items():
        if isinstance(value, dict):
            _rehome(value, real_home, home)
        elif isinstance(value, str) and value.startswith(prefix):
            section[key] = str(home / value[len(prefix) :])


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
