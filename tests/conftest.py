"""Shared fixtures: AWS (a moto server) on loopback, emulated instance boots, a network guard.

The logic lives in `tests/harness/` (imported as `harness`); this file only wires it to pytest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:  # already there with pytest's default import mode
    sys.path.insert(0, _TESTS_DIR)

from harness import (  # noqa: E402
    Delays,
    EmulatedBoot,
    GuestBoot,
    GuestNetwork,
    Image,
    LoopbackNetwork,
    MotoServer,
    NetworkGuard,
    booting,
    build_image_venv,
    create_guest_subnet,
    create_loopback_network,
    current_site_packages,
    guest_booting,
    guest_network,
    guest_support,
    patched_environ,
)
from harness.boot import OFFLINE  # noqa: E402
from harness.covalent_server import CovalentPaths, client_isolation  # noqa: E402
from harness.guest_image import guest_image as build_guest_image  # noqa: E402
from harness.iam import enforce_iam, everywhere  # noqa: E402

_NETWORK_GUARD = NetworkGuard()


_COVALENT = pytest.StashKey[tuple[CovalentPaths, contextlib.ExitStack]]()
_FAILED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    _NETWORK_GUARD.install()
    _isolate_covalent(config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[_FAILED] = session.testsfailed > 0


def pytest_unconfigure(config: pytest.Config) -> None:
    isolation = config.stash.get(_COVALENT, None)  # None: pytest_configure refused
    if isolation is not None:
        isolation[1].close()
    _NETWORK_GUARD.uninstall()


def _isolate_covalent(config: pytest.Config) -> None:
    """Point this process's covalent client, and every process the tests start, at temporary
    directories, before anything imports covalent (its config manager reads and writes its
    config file at import): no test touches the user's ~/.config/covalent, ~/.cache/covalent
    or ~/.local/share/covalent."""
    if "covalent" in sys.modules:  # it has read the user's config already: isolation too late
        raise pytest.UsageError(
            "covalent was imported before tests/conftest.py could point it at temporary "
            "directories; import it lazily in conftest files and the harness"
        )
    base = Path(tempfile.mkdtemp(prefix="ec2-tests-covalent-"))
    stack = contextlib.ExitStack()
    stack.callback(_remove_unless_failed, config, base)
    paths = CovalentPaths.create(base)
    stack.enter_context(client_isolation(paths))
    config.stash[_COVALENT] = (paths, stack)


def _remove_unless_failed(config: pytest.Config, base: Path) -> None:
    """Keep the Covalent directories (server log, database, results) after a failure."""
    if config.stash.get(_FAILED, False):
        print(f"\nCovalent files (config, logs, database) kept in {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def covalent_paths(request: pytest.FixtureRequest) -> CovalentPaths:
    """The temporary directories of this process's covalent client (and of the e2e server)."""
    return request.config.stash[_COVALENT][0]


@pytest.fixture(autouse=True)
def _fail_on_network_outside_loopback() -> Iterator[None]:
    """Fail the test if anything in it tried to leave loopback, even if the error was swallowed."""
    _NETWORK_GUARD.take_violations()
    yield
    violations = _NETWORK_GUARD.take_violations()
    if violations:
        pytest.fail("\n".join(violations), pytrace=False)


@pytest.fixture
def network_guard() -> NetworkGuard:
    """The installed guard; `take_violations()` acknowledges refused connects a test provoked."""
    return _NETWORK_GUARD


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto server on 127.0.0.1 for the session, enforcing IAM. os.environ points boto3 at
    it meanwhile, with the keys of a user who holds only the policy `ec2-executor policy`
    prints (each Allow's resources widened to "*", see `harness.iam`): the executor under test
    runs with exactly that policy. The harness's own calls (`client()`, `keys`) are an admin's.
    """
    from ec2_executor.cloud.permissions import policy

    server = MotoServer.start()
    try:
        executor_keys = enforce_iam(server, everywhere(policy()))
        config_dir = tmp_path_factory.mktemp("aws-config")
        with patched_environ(server.environment(config_dir, executor_keys)):
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def aws_env(moto_server: MotoServer) -> dict[str, str]:
    """The AWS_* variables in force (for subprocesses that need them explicitly)."""
    return dict(moto_server.env)


@pytest.fixture
def moto_reset(moto_server: MotoServer) -> MotoServer:
    """An empty moto (reset before the test)."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def loopback_network(moto_reset: MotoServer) -> LoopbackNetwork:
    """VPC 127.0.0.0/16 with subnet 127.0.2.0/24: instances get private IPs 127.0.2.4, .5, ..."""
    return create_loopback_network(moto_reset.client("ec2"))


@pytest.fixture(scope="session")
def _image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv the real bootstrap builds (offline, over this venv's packages), built once."""
    return build_image_venv(tmp_path_factory.mktemp("image"))


@pytest.fixture
def boot_bootstrap_env() -> dict[str, str]:
    """Extra environment for the bootstrap (a test may override it). Offline: the emulated boot
    must never install into this machine (the bootstrap's package-manager and uv steps)."""
    return dict(OFFLINE)


@pytest.fixture
def boot_image(_image_venv: Path, boot_bootstrap_env: dict[str, str]) -> Image:
    """The emulated instances' image: this venv's packages (covalent, numpy, scikit-learn
    preinstalled) and the venv the bootstrap makes, so each boot's real bootstrap takes its fast
    path instead of building a venv again."""
    return Image(
        python_path=current_site_packages(), venv=_image_venv, bootstrap_env=boot_bootstrap_env
    )


@pytest.fixture
def boot_delays() -> Delays:
    """How long the emulated cloud takes to boot (a test may override it, or change it)."""
    return Delays()


@pytest.fixture
def emulated_boot(
    moto_reset: MotoServer, boot_image: Image, boot_delays: Delays, tmp_path: Path
) -> Iterator[EmulatedBoot]:
    """Boots (sshd + bootstrap) every instance moto runs during the test; stops them after.

    Boot errors the test did not `clear_errors()` fail the test at teardown.
    """
    instances = tmp_path / "instances"
    with booting(
        moto_reset.url,
        image=boot_image,
        base_dir=instances,
        delays=boot_delays,
        keys=moto_reset.keys,
    ) as boot:
        yield boot


@pytest.fixture(scope="module")
def template_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's shared template cache, so each shape synthesises once per session."""
    cache = tmp_path_factory.getbasetemp() / "ec2-executor-template-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EC2_EXECUTOR_CACHE_DIR", str(cache))
        yield cache


# --- real guests (tests marked `guest`) ----------------------------------------------------------


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The guests' root filesystem, cached on disk; skips (saying why) where none can boot, but
    fails on CI, which must run them: they are the only real test of the lifetime watchdog."""
    reason = guest_support()
    if reason is not None and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, and the guest tests cannot run here: {reason}")
    if reason is not None:
        pytest.skip(reason)
    return build_guest_image()


@pytest.fixture(scope="session")
def guest_net(guest_image: Path) -> Iterator[GuestNetwork]:
    """The guests' bridge and subnet for the session; the network guard admits the subnet."""
    with guest_network(_NETWORK_GUARD) as network:
        yield network


@pytest.fixture(scope="module")
def guest_subnet(moto_server: MotoServer, guest_net: GuestNetwork) -> LoopbackNetwork:
    """A VPC and subnet in moto whose instances get addresses on the guests' bridge."""
    return create_guest_subnet(moto_server.client("ec2"), guest_net)


@pytest.fixture
def guest_boot(
    moto_server: MotoServer, guest_image: Path, guest_net: GuestNetwork, tmp_path: Path
) -> Iterator[GuestBoot]:
    """Boots every instance moto runs during the test as a real guest; all ended after it."""
    with guest_booting(
        moto_server.url,
        image=guest_image,
        network=guest_net,
        base_dir=tmp_path / "guests",
        keys=moto_server.keys,
    ) as boot:
        yield boot
