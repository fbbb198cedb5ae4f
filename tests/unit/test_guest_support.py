"""Where no guest can boot, the guest tests are skipped with one line saying why."""

from __future__ import annotations

import shutil

import pytest
from harness import guest_support


def test_not_root_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    reason = guest_support()
    assert reason is not None and "need root" in reason and "\n" not in reason


def test_a_missing_tool_names_its_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    which = shutil.which
    monkeypatch.setattr(
        "shutil.which", lambda name, *a, **k: None if name == "systemd-nspawn" else which(name)
    )
    reason = guest_support()
    assert reason is not None
    assert "systemd-nspawn" in reason and "systemd-container" in reason
