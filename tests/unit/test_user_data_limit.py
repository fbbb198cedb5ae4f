"""The user-data size guard on a small template: how it measures and whom it blames.

The real template at its worst case is checked in test_electron_stack.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdk_stacks.user_data import USER_DATA_LIMIT, user_data_size
from ec2_executor.electron import check_user_data
from ec2_executor.errors import ConfigurationError, TemplateError
from ec2_executor.options import Options


def _template(sub: str) -> dict[str, Any]:
    return {
        "Resources": {
            "SshAccess": {"Type": "AWS::EC2::SecurityGroup", "Properties": {}},
            "Instance": {
                "Type": "AWS::EC2::Instance",
                "Properties": {"UserData": {"Fn::Base64": {"Fn::Sub": sub}}},
            },
        }
    }


def _parameters(**values: str) -> list[dict[str, str]]:
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


def test_the_size_is_in_bytes_after_substitution() -> None:
    size = user_data_size(
        _template("a ${Minutes} b ${Minutes} ${Key} ${!Literal}"),
        {"Minutes": "120", "Key": "é", "Literal": "never used"},
    )
    assert size.total == len("a 120 b 120 é ${Literal}".encode())
    assert size.by_parameter == {"Minutes": 6, "Key": 2}


def test_a_value_is_not_substituted_again() -> None:
    """CloudFormation substitutes once: a value holding `${Other}` stays as it is."""
    size = user_data_size(_template("${Key}"), {"Key": "${Other}", "Other": "x" * 100})
    assert size.total == len("${Other}")


def test_a_template_without_user_data_is_an_error() -> None:
    with pytest.raises(ValueError, match="no AWS::EC2::Instance"):
        user_data_size({"Resources": {}}, {})


def _filler(size: int) -> str:
    return "#" * size


def test_up_to_the_limit_passes() -> None:
    key = "ssh-ed25519 AAAA"
    sub = _filler(USER_DATA_LIMIT - len(key)) + "${AuthorizedKey}"
    check_user_data(json.dumps(_template(sub)), _parameters(AuthorizedKey=key), Options())


def test_the_users_key_is_named_when_it_is_the_largest_value(tmp_path: Path) -> None:
    key_file = tmp_path / "big_key"
    key_file.write_text("a private key")
    key = "ssh-rsa " + "A" * 3000
    sub = _filler(USER_DATA_LIMIT - 2000) + "${AuthorizedKey}${HostKey}"
    with pytest.raises(ConfigurationError) as refused:
        check_user_data(
            json.dumps(_template(sub)),
            _parameters(AuthorizedKey=key, HostKey="h" * 500),
            Options(ssh_key_file=str(key_file)),
        )
    message = str(refused.value)
    assert f"would be {USER_DATA_LIMIT - 2000 + len(key) + 500} bytes" in message
    assert f"'ssh_key_file' {str(key_file)!r} takes {len(key)} bytes" in message


def test_without_a_key_file_the_executor_is_to_blame() -> None:
    """A fresh key is small: user data over the limit then means our own files outgrew it."""
    sub = _filler(USER_DATA_LIMIT) + "${AuthorizedKey}${HostKey}"
    with pytest.raises(TemplateError, match=r"the largest, HostKey, is 500 bytes.*report"):
        check_user_data(
            json.dumps(_template(sub)),
            _parameters(AuthorizedKey="ssh-ed25519 AAAA", HostKey="h" * 500),
            Options(),
        )
