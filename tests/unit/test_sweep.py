"""Which stacks the sweep may delete: only those proven orphaned (pure), and never at import
or construction."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ec2_executor import owner, sweep
from ec2_executor.cli.states import BUSY, GONE, OWNER_GONE
from ec2_executor.cloud.stacks import TAG_OWNER
from ec2_executor.owner import owner_id

OTHER = "0123456789abcdef"


def _stack(name: str, owner: str | None, status: str = "CREATE_COMPLETE") -> dict[str, Any]:
    tags = [{"Key": TAG_OWNER, "Value": owner}] if owner else []
    return {"StackName": name, "StackStatus": status, "Tags": tags}


def test_only_stacks_whose_instance_ended_and_that_are_not_ours_are_orphans() -> None:
    stacks = [
        _stack("theirs-gone", OTHER),
        _stack("untagged-gone", None),  # made before owners were tagged
        _stack("ours-gone", owner_id()),  # this process's electron deletes its own
        _stack("theirs-busy", OTHER),
        _stack("theirs-idle", OTHER),
        _stack("theirs-creating", OTHER, "CREATE_IN_PROGRESS"),
        _stack("theirs-deleting", OTHER, "DELETE_FAILED"),
        _stack("theirs-owner-gone", OTHER),
    ]
    states = {
        "theirs-gone": GONE,
        "untagged-gone": GONE,
        "ours-gone": GONE,
        "theirs-busy": BUSY,
        "theirs-idle": "idle since 2026-12-06T10:00:00Z",
        "theirs-creating": "creating",
        "theirs-deleting": GONE,
        "theirs-owner-gone": OWNER_GONE,
    }
    found = [s["StackName"] for s in sweep.orphans(stacks, states)]
    assert found == ["theirs-gone", "untagged-gone", "theirs-owner-gone"]


def test_the_owner_id_is_random_per_process_and_a_forked_child_gets_its_own() -> None:
    assert len(owner_id()) == 16
    int(owner_id(), 16)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, owner_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64).decode() not in ("", owner_id())


def test_building_an_executor_sweeps_nothing() -> None:
    from ec2_executor.ec2 import EC2Executor

    sweep.forget()
    EC2Executor(region="us-east-1")
    assert not sweep._swept


def _note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes: Any) -> str:
    """A note for a made-up owner: this process's unless `changes` say otherwise."""
    monkeypatch.setenv("EC2_EXECUTOR_CACHE_DIR", str(tmp_path))
    pid = os.getpid()
    note = {**owner._where(), "pid": pid, "started": owner._started(pid), **changes}
    owner.notes_dir().mkdir(parents=True, exist_ok=True)
    (owner.notes_dir() / f"{OTHER}.json").write_text(json.dumps(note))
    return OTHER


def test_an_owner_is_known_gone_only_by_its_note_in_this_boot_and_pid_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert not owner.known_gone(_note(tmp_path, monkeypatch))  # alive (this process)
    assert owner.known_gone(_note(tmp_path, monkeypatch, pid=child.pid))  # ended
    assert owner.known_gone(_note(tmp_path, monkeypatch, started="1"))  # pid reused since
    assert not owner.known_gone(_note(tmp_path, monkeypatch, pid=child.pid, boot="another"))
    assert not owner.known_gone(_note(tmp_path, monkeypatch, pid=child.pid, pid_namespace="x"))
    assert not owner.known_gone("fedcba9876543210")  # no note here: nothing is proven
    assert not owner.known_gone(owner_id())
