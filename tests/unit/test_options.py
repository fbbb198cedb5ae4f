"""Options: defaults, precedence, and a clear refusal for each bad value (pure, no AWS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.shared_dirs import NOBODY, shared_temp_dir

from ec2_executor import ConfigurationError
from ec2_executor.options import OPTION_NAMES, Options, build, defaults, resolve

SEED_KEYS = (
    "profile",
    "region",
    "credentials_file",
    "ssh_key_file",
    "instance_type",
    "key_name",
    "volume_size",
    "vpc",
    "subnet",
    "remote_cache",
)


def test_every_seed_key_is_an_option_with_the_seed_default() -> None:
    assert set(SEED_KEYS) <= set(OPTION_NAMES)
    o = Options()
    assert (o.profile, o.region, o.credentials_file) == (
        "default",
        "us-east-1",
        "~/.aws/credentials",
    )
    assert (o.instance_type, o.volume_size, o.remote_cache) == ("t2.micro", 8, "~/.cache/covalent")
    assert (o.vpc, o.subnet) == ("", "")


def test_explicit_beats_config_beats_default() -> None:
    values = resolve(
        {"instance_type": "t3.small", "region": None},
        {"instance_type": "t3.large", "region": "eu-west-1"},
    )
    options = build(values)
    assert options.instance_type == "t3.small"
    assert options.region == "eu-west-1"
    assert options.volume_size == 8


def test_config_strings_are_coerced() -> None:
    options = build({"volume_size": "20", "use_private_ip": "true", "provision_timeout": "60"})
    assert (options.volume_size, options.use_private_ip, options.provision_timeout) == (
        20,
        True,
        60.0,
    )


def test_defaults_are_what_covalent_writes_to_the_config() -> None:
    written = defaults()
    assert set(written) == set(OPTION_NAMES)
    assert written["python_version"] == ""  # resolved per dispatcher at run time
    assert build(written) == Options()


def test_key_name_defaults_to_the_key_file_stem(tmp_path: Path) -> None:
    key = tmp_path / "ec2_key"
    key.write_text("x")
    assert Options(ssh_key_file=str(key)).effective_key_name == "ec2_key"
    assert Options(ssh_key_file=str(key), key_name="other").effective_key_name == "other"


@pytest.mark.parametrize(
    ("values", "named", "fix"),
    [
        ({"instance_type": "not a type"}, "'instance_type'", "t3.micro"),
        ({"volume_size": 0}, "'volume_size'", "1 to 16384"),
        ({"volume_size": 20000}, "'volume_size'", "1 to 16384"),
        ({"volume_size": "lots"}, "'volume_size'", "[executors.ec2]"),
        ({"region": "mars-north"}, "'region'", "us-east-1"),
        ({"ssh_ingress_cidr": "0.0.0.0/33"}, "'ssh_ingress_cidr'", "/32"),
        ({"ssh_ingress_cidr": "10.0.0.1/8"}, "'ssh_ingress_cidr'", "/32"),
        ({"key_name": "mine"}, "'key_name'", "'ssh_key_file'"),
        ({"ssh_key_file": "/nonexistent/key"}, "'ssh_key_file'", "private key"),
        ({"ssh_port": 70000}, "'ssh_port'", "1 to 65535"),
        ({"vpc": "sg-123"}, "'vpc'", "vpc-"),
        ({"python_version": "3"}, "'python_version'", "3."),
        ({"tags": {"aws:x": "y"}}, "'tags'", "aws:"),
        ({"provision_timeout": 0}, "'provision_timeout'", "900"),
        ({"username": 'ec2-user"'}, "'username'", "Linux login name"),
        ({"username": "ec2 user"}, "'username'", "Linux login name"),
        ({"username": ""}, "'username'", "'ec2-user'"),
        ({"tags": {"project": ""}}, "'tags'", "refuses an empty one"),
        ({"tags": {"project": "a\nb"}}, "'tags'", "1 to 255"),
        ({"tags": {"": "x"}}, "'tags'", "1 to 127"),
        ({"tags": {"ec2-executor:node-id": "1"}}, "'tags'", "executor's own"),
        ({"tags": {f"k{n}": "v" for n in range(11)}}, "'tags'", "at most 10"),
        ({"tags": "project=x"}, "'tags'", "mapping"),
        ({"spot": "maybe"}, "'spot'", "'fallback'"),
        ({"keep_warm_minutes": -1}, "'keep_warm_minutes'", "0 to 1440 minutes"),
        ({"keep_warm_minutes": 1441}, "'keep_warm_minutes'", "0 to 1440 minutes"),
        ({"keep_warm_minutes": "soon"}, "'keep_warm_minutes'", "[executors.ec2]"),
        ({"max_concurrent_instances": -1}, "'max_concurrent_instances'", "0 for no cap"),
        ({"max_concurrent_instances": 10_001}, "'max_concurrent_instances'", "1 to 10000"),
        ({"max_concurrent_instances": "many"}, "'max_concurrent_instances'", "[executors.ec2]"),
    ],
)
def test_bad_values_are_refused_naming_the_key_and_the_fix(
    values: dict[str, object], named: str, fix: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        build(values)
    message = str(refused.value)
    assert named in message
    assert fix in message
    for value in values.values():
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            assert repr(value) in message or str(value) in message


# Root reads every file, so as root the check runs in a child that imports as root (the
# checkout may be root's alone) and then becomes `nobody`.
_BUILD_AS_NOBODY = """
import os, pwd, sys
from ec2_executor import ConfigurationError
from ec2_executor.options import build
user = pwd.getpwnam(sys.argv[1])
os.setgroups([])
os.setgid(user.pw_gid)
os.setuid(user.pw_uid)
try:
    build({"ssh_key_file": sys.argv[2]})
except ConfigurationError as refused:
    print(refused)
"""


def key_file_refusal(key: Path) -> str:
    """What `build` says of `ssh_key_file=key`, as a user that is not root ("" if accepted)."""
    if os.getuid() != 0:
        try:
            build({"ssh_key_file": str(key)})
        except ConfigurationError as refused:
            return str(refused)
        return ""
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_AS_NOBODY, NOBODY, str(key)],
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_unreadable_key_file_is_refused() -> None:
    with shared_temp_dir() as shared:  # a key `nobody` can find but not read
        key = shared / "key"
        key.write_text("x")
        key.chmod(0)
        refusal = key_file_refusal(key)
        key.chmod(0o644)
        accepted = key_file_refusal(key)
    assert "not readable by this user" in refusal and repr(str(key)) in refusal
    assert accepted == ""


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("fallback", "fallback"),
        ("FALLBACK", "fallback"),
        ("true", True),
        ("no", False),
        (True, True),
    ],
)
def test_spot_takes_true_false_or_fallback(given: object, expected: object) -> None:
    options = build({"spot": given})
    assert options.spot == expected
    assert options.spot_first is (expected is True or expected == "fallback")


def test_a_username_with_a_quote_would_break_the_cloud_config() -> None:
    """Why `username` is checked: it lands in a double-quoted YAML string of the user data."""
    import yaml

    from cdk_stacks.user_data import cloud_config_template, instance_files

    text = cloud_config_template(instance_files()).replace("${SshUser}", 'a"b')
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text.replace("${", "$_{"))


def test_keep_warm_defaults_to_zero_and_takes_config_strings() -> None:
    assert Options().keep_warm_minutes == 0
    assert defaults()["keep_warm_minutes"] == 0
    assert build({"keep_warm_minutes": "5"}).keep_warm_minutes == 5
