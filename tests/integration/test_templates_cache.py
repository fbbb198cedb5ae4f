"""`template_for`: synthesise once per shape, then serve the on-disk cache without loading CDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cdk_stacks import templates
from cdk_stacks.shape import ALL_SHAPES, NetworkMode, StackShape
from cdk_stacks.templates import (
    MAX_INLINE_TEMPLATE_BYTES,
    SynthesisError,
    cache_dir,
    cache_path,
    template_for,
)

EXISTING = StackShape(network=NetworkMode.EXISTING)
CREATED = StackShape(network=NetworkMode.CREATED)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EC2_EXECUTOR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's shared template cache (see test_template_lint), holding every shape."""
    cache = tmp_path_factory.getbasetemp() / "ec2-executor-template-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EC2_EXECUTOR_CACHE_DIR", str(cache))
        for shape in ALL_SHAPES:
            template_for(shape)
        yield cache


class Counter:
    """A stand-in for `synthesize_in_child` that counts its calls (thread-safe)."""

    def __init__(self, hold: float = 0.0) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._hold = hold

    def __call__(self, shape: StackShape) -> str:
        with self._lock:
            self.calls.append(shape.key)
            number = len(self.calls)
        # Keep the cache lock a while so that the other callers miss and queue up behind it
        # (this widens the race; the assertion is on the count, never on time).
        time.sleep(self._hold)
        return json.dumps({"shape": shape.key, "synthesis": number})


@pytest.fixture
def fake_synth(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Counter]:
    def install(hold: float = 0.0) -> Counter:
        counter = Counter(hold)
        monkeypatch.setattr(templates, "synthesize_in_child", counter)
        return counter

    return install


def _subprocess_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "EC2_EXECUTOR_CACHE_DIR": str(cache)}


# --- the real synthesis -------------------------------------------------------------------------


def test_synthesises_once_then_hits_the_cache(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = templates.synthesize_in_child
    calls: list[StackShape] = []

    def spy(shape: StackShape) -> str:
        calls.append(shape)
        return real(shape)

    monkeypatch.setattr(templates, "synthesize_in_child", spy)
    first = template_for(EXISTING)
    path = cache_path(EXISTING)
    assert calls == [EXISTING]
    assert path.parent == cache_dir() == empty_cache / "templates"
    assert path.read_text() == first
    before = path.stat()

    second = template_for(EXISTING)
    after = path.stat()
    assert calls == [EXISTING]
    assert second == first
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    template = json.loads(first)
    assert "network-existing" in template["Description"]
    assert len(first.encode()) <= MAX_INLINE_TEMPLATE_BYTES
    assert not list(path.parent.glob("*.tmp")), "a temporary file was left behind"


def test_cache_hit_does_not_import_aws_cdk(warm_cache: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from cdk_stacks import templates
        from cdk_stacks.shape import NetworkMode, StackShape

        def refuse(shape):
            raise SystemExit(f"cache miss for {shape.key}: synthesised")

        templates.synthesize_in_child = refuse
        body = templates.template_for(StackShape(network=NetworkMode(sys.argv[1])))
        heavy = sorted(
            name for name in sys.modules
            if name.split(".")[0] in ("aws_cdk", "jsii", "constructs", "cdk_nag")
        )
        if heavy:
            raise SystemExit(f"a cache hit imported {heavy}")
        sys.stdout.write(body)
        """
    )
    for shape in ALL_SHAPES:
        done = subprocess.run(
            [sys.executable, "-c", script, shape.network.value],
            capture_output=True,
            text=True,
            env=_subprocess_env(warm_cache),
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == cache_path(shape).read_text()


# --- concurrency, keys and failures (synthesis replaced by a counter) ---------------------------


def test_concurrent_misses_in_threads_synthesise_once(
    empty_cache: Path, fake_synth: Callable[..., Counter]
) -> None:
    counter = fake_synth(hold=0.3)
    workers = 8
    start = threading.Barrier(workers)

    def miss() -> str:
        start.wait(timeout=10)
        return template_for(EXISTING)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(miss) for _ in range(workers)]
        results = [future.result(timeout=30) for future in futures]

    assert counter.calls == [EXISTING.key]
    assert len(set(results)) == 1
    assert results[0] == cache_path(EXISTING).read_text()


def test_concurrent_misses_in_processes_synthesise_once(empty_cache: Path, tmp_path: Path) -> None:
    log = tmp_path / "synthesised.log"
    go = tmp_path / "go"
    script = textwrap.dedent(
        """
        import os, sys, time
        from cdk_stacks import templates
        from cdk_stacks.shape import NetworkMode, StackShape

        log, go = sys.argv[1], sys.argv[2]

        def counted(shape):
            with open(log, "a") as out:  # O_APPEND: one whole line per call
                out.write(f"{os.getpid()}\\n")
            time.sleep(0.5)  # hold the lock while the others miss and queue up
            return f'{{"synthesised_by": {os.getpid()}}}'

        templates.synthesize_in_child = counted
        deadline = time.monotonic() + 30
        while not os.path.exists(go):  # start together
            if time.monotonic() > deadline:
                raise SystemExit("no go")
            time.sleep(0.01)
        sys.stdout.write(templates.template_for(StackShape(network=NetworkMode.EXISTING)))
        """
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(log), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_subprocess_env(empty_cache),
        )
        for _ in range(4)
    ]
    go.touch()
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        outputs.append(out)

    assert len(log.read_text().splitlines()) == 1
    assert len(set(outputs)) == 1
    assert outputs[0] == cache_path(EXISTING).read_text()


def test_cache_key_changes_with_the_shape(
    empty_cache: Path, fake_synth: Callable[..., Counter]
) -> None:
    counter = fake_synth()
    assert cache_path(EXISTING) != cache_path(CREATED)
    assert cache_path(EXISTING).parent == cache_path(CREATED).parent
    assert EXISTING.key in cache_path(EXISTING).name
    assert CREATED.key in cache_path(CREATED).name

    existing, created = template_for(EXISTING), template_for(CREATED)
    assert json.loads(existing)["shape"] == EXISTING.key
    assert json.loads(created)["shape"] == CREATED.key
    assert (template_for(EXISTING), template_for(CREATED)) == (existing, created)
    assert counter.calls == [EXISTING.key, CREATED.key]


@pytest.fixture
def fresh_fingerprint() -> Iterator[None]:
    templates._fingerprint.cache_clear()
    yield
    templates._fingerprint.cache_clear()


@pytest.mark.usefixtures("empty_cache", "fresh_fingerprint")
def test_cache_key_changes_with_the_bootstrap_and_cdk_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The template embeds the bootstrap, and its output depends on aws-cdk-lib."""
    bootstrap = tmp_path / "bootstrap.sh"
    bootstrap.write_text("#!/bin/sh\necho one\n")
    packaged = templates.package_file
    monkeypatch.setattr(
        templates,
        "package_file",
        lambda name: bootstrap if name == "bootstrap.sh" else packaged(name),
    )

    def key() -> Path:
        templates._fingerprint.cache_clear()
        return cache_path(EXISTING)

    original = key()
    bootstrap.write_text("#!/bin/sh\necho two\n")
    changed_bootstrap = key()
    real_version = templates._version
    monkeypatch.setattr(
        templates,
        "_version",
        lambda dist: "0.0.0-other" if dist == "aws-cdk-lib" else real_version(dist),
    )
    changed_cdk = key()
    assert len({original, changed_bootstrap, changed_cdk}) == 3


def test_failed_synthesis_caches_nothing(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(shape: StackShape) -> str:
        raise SynthesisError("node is missing")

    monkeypatch.setattr(templates, "synthesize_in_child", broken)
    with pytest.raises(SynthesisError):
        template_for(EXISTING)
    assert not cache_path(EXISTING).exists()

    counter = Counter()
    monkeypatch.setattr(templates, "synthesize_in_child", counter)
    assert json.loads(template_for(EXISTING))["shape"] == EXISTING.key
    assert counter.calls == [EXISTING.key]
