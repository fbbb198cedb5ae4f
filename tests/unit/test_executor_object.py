"""The executor object itself: cheap to build, plain JSON attributes, the public surface."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import ec2_executor
from ec2_executor import ConfigurationError, options
from ec2_executor import ec2 as ec2_module
from ec2_executor.ec2 import EC2Executor
from ec2_executor.options import OPTION_NAMES, UnknownOptionWarning


def test_public_surface_is_pinned() -> None:
    assert sorted(ec2_executor.__all__) == [
        "AWSError",
        "BootstrapError",
        "CapacityError",
        "ConfigurationError",
        "ConnectionLostError",
        "CredentialsError",
        "EC2Executor",
        "EC2ExecutorError",
        "PermissionDeniedError",
        "RemoteError",
        "SpotInterruptionError",
        "StackCreationError",
        "StackDeletionError",
        "TaskError",
    ]
    assert ec2_executor.EC2Executor is EC2Executor


def test_attributes_survive_covalents_json_round_trip(tmp_path: Path) -> None:
    key = tmp_path / "ec2_key"
    key.write_text("not parsed until setup")
    built = EC2Executor(instance_type="t3.small", ssh_key_file=str(key), tags={"team": "x"})
    shipped = json.loads(json.dumps(built.to_dict()))
    rebuilt = EC2Executor().from_dict(shipped)
    assert {n: getattr(rebuilt, n) for n in OPTION_NAMES} == {
        n: getattr(built, n) for n in OPTION_NAMES
    }
    assert rebuilt.instance_type == "t3.small" and rebuilt.tags == {"team": "x"}
    assert shipped["short_name"] == "ec2"


def test_bad_values_are_refused_when_the_executor_is_built() -> None:
    with pytest.raises(ConfigurationError, match="'volume_size' is 0"):
        EC2Executor(volume_size=0)


def test_construction_touches_neither_aws_nor_cdk() -> None:
    """Built on the client and again on the server for every task: it must stay cheap."""
    probe = (
        "import sys, covalent as ct\n"
        "import botocore.endpoint as e\n"
        "calls = []\n"
        "e.Endpoint.make_request = lambda *a, **k: calls.append(a)\n"
        "ct.executor.EC2Executor(instance_type='t3.micro')\n"
        "assert not calls, calls\n"
        "assert 'aws_cdk' not in sys.modules and 'jsii' not in sys.modules\n"
        "print('cheap')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.stdout.strip().endswith("cheap"), done.stderr


def test_covalent_resolves_the_plugin_by_short_name() -> None:
    from covalent.executor import _executor_manager

    assert _executor_manager.executor_plugins_map["ec2"] is EC2Executor
    executor = _executor_manager.get_executor("ec2")
    assert isinstance(executor, EC2Executor)


def test_an_unknown_option_is_reported_once_with_the_closest_known_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(options, "_REPORTED", set())
    monkeypatch.setattr(ec2_module, "config_section", dict)  # the arguments alone
    with pytest.warns(UnknownOptionWarning) as caught:
        first = EC2Executor(instance_tpye="t3.large", conda_env="py311")  # type: ignore[call-arg]
        EC2Executor(instance_tpye="t3.large")  # type: ignore[call-arg]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages  # once per option, not once per executor
    assert "'instance_tpye'" in messages[0] and "did you mean 'instance_type'?" in messages[0]
    assert "'conda_env'" in messages[1] and "README" in messages[1]
    assert first.instance_type == "t2.micro"  # ignored, not refused
    assert "instance_tpye" not in first.__dict__


def test_unknown_keys_of_the_config_section_are_reported_not_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Covalent builds the executor from the whole section: old keys must not break it."""
    monkeypatch.setattr(options, "_REPORTED", set())
    monkeypatch.setattr(
        ec2_module, "config_section", lambda: {"poll_freq": 5, "region": "eu-west-1"}
    )
    with pytest.warns(UnknownOptionWarning, match=r"'poll_freq' \(in \[executors.ec2\]\)"):
        built = EC2Executor(poll_freq=5, region="eu-west-1")  # type: ignore[call-arg]
    assert built.region == "eu-west-1"


def test_covalents_own_options_are_known_and_kept() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownOptionWarning)
        built = EC2Executor(log_stdout="out.log", retries=2)  # type: ignore[call-arg]
    assert (built.log_stdout, built.retries) == ("out.log", 2)


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        EC2Executor("default", "us-east-1")  # type: ignore[misc]


def test_every_option_is_a_constructor_argument() -> None:
    """An option missing from the signature would vanish into `**kwargs` unread."""
    import inspect

    parameters = inspect.signature(EC2Executor.__init__).parameters
    assert set(OPTION_NAMES) <= set(parameters), set(OPTION_NAMES) - set(parameters)
