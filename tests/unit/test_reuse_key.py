"""The reuse key: every option classified, and the key changes with exactly the keyed ones."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any

import pytest

from ec2_executor.options import OPTION_NAMES, Options
from ec2_executor.warm.reuse import IN_KEY, NOT_IN_KEY, reuse_key


def test_every_option_is_classified_once() -> None:
    """A new field of Options fails here until it is put in IN_KEY or NOT_IN_KEY."""
    assert IN_KEY.isdisjoint(NOT_IN_KEY)
    assert set(OPTION_NAMES) == IN_KEY | NOT_IN_KEY, (
        f"unclassified: {sorted(set(OPTION_NAMES) - IN_KEY - NOT_IN_KEY)}; "
        f"unknown: {sorted((IN_KEY | NOT_IN_KEY) - set(OPTION_NAMES))}"
    )


_CHANGED: dict[str, Any] = {
    "profile": "other",
    "region": "eu-west-1",
    "credentials_file": "/elsewhere",
    "instance_type": "t3.large",
    "volume_size": 20,
    "vpc": "vpc-1",
    "subnet": "subnet-1",
    "ami": "ami-1",
    "use_baked_image": False,
    "username": "ubuntu",
    "ssh_port": 2222,
    "ssh_ingress_cidr": "10.0.0.0/8",
    "use_private_ip": True,
    "create_vpc": True,
    "spot": True,
    "instance_profile": "role",
    "max_lifetime_minutes": 60,
    "tags": {"team": "x"},
    "python_version": "3.99",
    "keep_warm_minutes": 7,
    "orphan_minutes": 30,
    "remote_cache": "/tmp/elsewhere",
    "wait_for_deletion": True,
    "provision_timeout": 60.0,
    "max_concurrent_instances": 4,
}


@pytest.mark.parametrize("name", sorted(set(OPTION_NAMES) - {"ssh_key_file", "key_name"}))
def test_the_key_changes_with_keyed_options_only(name: str) -> None:
    base = Options(keep_warm_minutes=5)
    changed = dataclasses.replace(base, **{name: _CHANGED[name]})
    assert (reuse_key(changed) != reuse_key(base)) == (name in IN_KEY)


def test_the_key_follows_the_key_file(tmp_path: Any) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("x")
    b.write_text("y")
    assert reuse_key(Options(ssh_key_file=str(a))) != reuse_key(Options(ssh_key_file=str(b)))
    assert reuse_key(Options(ssh_key_file=str(a))) != reuse_key(
        Options(ssh_key_file=str(a), key_name="other")
    )


def test_the_key_ignores_tag_order() -> None:
    one = Options(tags={"a": "1", "b": "2"})
    other = Options(tags={"b": "2", "a": "1"})
    assert reuse_key(one) == reuse_key(other)


def test_equal_options_built_apart_share_a_key() -> None:
    """A fresh executor per task (as Covalent builds them) must find the warm instance."""
    one = Options(keep_warm_minutes=5, instance_type="t3.large", tags={"team": "x"})
    other = Options(keep_warm_minutes=5, instance_type="t3.large", tags={"team": "x"})
    assert one is not other and reuse_key(one) == reuse_key(other)


def test_another_package_version_never_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance runs this version's scripts: another version must not reuse it."""
    options = Options(keep_warm_minutes=5)
    before = reuse_key(options)
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        return "99.0.0" if name == "ec2-executor" else real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert reuse_key(options) != before
