"""Validated executor options: explicit argument > `[executors.ec2]` > default, in one place."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ec2_executor.errors import ConfigurationError

_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_PYTHON_VERSION = re.compile(r"^3\.\d+$")
_STACK_TAG_KEY = re.compile(r"^[\w .:/=+@-]{1,127}$")
_STACK_TAG_VALUE = re.compile(r"^[\w .:/=+@-]{1,255}$")
# A Linux login name that is also safe inside the cloud-config's quoted YAML strings.
_USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
RESERVED_TAG_PREFIX = "ec2-executor:"
MAX_EXTRA_TAGS = 10
"""Extra tags the launch template carries to the volume, network interface and spot request
(each is a pair of stack parameters); the stack itself takes up to 50 tags in all."""
SPOT_FALLBACK = "fallback"
_BOOL_WORDS = ("true", "false", "1", "0", "yes", "no")


def dispatcher_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True, kw_only=True)
class Options:
    """Every option of `EC2Executor`, with its default. The seed's keys come first."""

    profile: str = "default"
    """Named AWS profile; 'default' falls back to the environment when no file defines it."""
    region: str = "us-east-1"
    """AWS region for every call and every resource."""
    credentials_file: str = "~/.aws/credentials"
    """AWS shared credentials file."""
    ssh_key_file: str = ""
    """Private key for SSH; empty (the default) generates a fresh key for each electron."""
    key_name: str = ""
    """EC2 key pair to attach; defaults to the stem of `ssh_key_file` when that pair exists."""
    instance_type: str = "t2.micro"
    """EC2 instance type; the image's architecture follows it."""
    volume_size: int = 8
    """Root volume size in GiB (encrypted gp3)."""
    vpc: str = ""
    """Existing VPC id; empty uses the default VPC, or creates one if the account has none."""
    subnet: str = ""
    """Existing subnet id; empty picks a public subnet of the VPC."""
    remote_cache: str = "~/.cache/covalent"
    """Directory on the instance for the task's payload and result."""
    ami: str = ""
    """Image id; empty uses the newest matching baked image, else the latest Amazon Linux 2023
    for the instance's architecture."""
    username: str = "ec2-user"
    """Login user on the image."""
    ssh_port: int = 22
    """Port sshd listens on."""
    ssh_ingress_cidr: str = ""
    """IPv4 range allowed to reach SSH; empty detects this machine's public address as a /32."""
    use_private_ip: bool = False
    """Connect to the private address (from inside the VPC or over a VPN)."""
    create_vpc: bool = False
    """Create a VPC for each electron even when the account has a default VPC."""
    spot: bool | str = False
    """Run on the spot market: True, False, or "fallback" (spot, then on-demand when no zone
    has spot capacity)."""
    instance_profile: str = ""
    """Existing IAM instance profile name for the task's own AWS access."""
    wait_for_deletion: bool = False
    """Hold the electron until its stack is deleted; by default deletion is verified after."""
    max_lifetime_minutes: int = 120
    """The instance powers itself off (and terminates) after this, whatever happens here."""
    provision_timeout: float = 900.0
    """Seconds allowed for the stack, SSH and the bootstrap to be ready."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Extra tags for the stack and everything in it."""
    python_version: str = field(default_factory=dispatcher_python)
    """Python minor version on the instance; must match the dispatcher's for cloudpickle."""
    keep_warm_minutes: int = 0
    """Minutes an instance stays, idle, for the next electron with the same options; 0 deletes
    each electron's stack after it."""
    use_baked_image: bool = True
    """Without `ami`, use the newest image `ec2-executor bake` made that matches."""
    orphan_minutes: int = 10
    """The instance powers itself off (and terminates) after this many minutes without its
    dispatcher's SSH connection: the dispatcher process died, slept or lost the network."""
    max_concurrent_instances: int = 0
    """Instances this process's electrons hold at once in the account and region; the others
    wait for one to end. 0: no cap (the account's vCPU quota still queues them)."""

    def __post_init__(self) -> None:
        for check in _CHECKS:
            check(self)

    @property
    def spot_first(self) -> bool:
        """Whether the first attempt asks for spot capacity."""
        return self.spot is True or self.spot == SPOT_FALLBACK

    @property
    def key_file(self) -> Path | None:
        return Path(os.path.expanduser(self.ssh_key_file)) if self.ssh_key_file else None

    @property
    def effective_key_name(self) -> str:
        """`key_name`, or the seed's default: the key file's name without its extension."""
        if self.key_name or self.key_file is None:
            return self.key_name
        return self.key_file.stem

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tags"] = dict(self.tags)
        return data


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Options))
BASE_OPTION_NAMES = ("log_stdout", "log_stderr", "cache_dir", "time_limit", "retries")
"""Covalent's own executor options (`BaseExecutor.__init__`), taken by every executor."""

_REPORTED: set[str] = set()


class UnknownOptionWarning(UserWarning):
    """An option EC2Executor does not know was given; it is ignored."""


def report_unknown(names: Iterable[str], *, where: str) -> None:
    """Warn once per process about each unknown option, naming the closest known one.

    Not an error: Covalent passes the whole `[executors.ec2]` section as keywords, and old
    configurations (the Terraform plugin's `conda_env`, `poll_freq`, ...) must keep working.
    """
    for name, hint in unknown_options(names).items():
        if name in _REPORTED:
            continue
        _REPORTED.add(name)
        warnings.warn(
            f"EC2Executor ignores the unknown option {name!r} ({where}); {hint}",
            UnknownOptionWarning,
            stacklevel=3,
        )


def unknown_options(names: Iterable[str]) -> dict[str, str]:
    """Each name that is no option, with a hint: the closest known option, if one is close."""
    known = OPTION_NAMES + BASE_OPTION_NAMES
    hints = {}
    for name in (n for n in names if n not in known):
        close = difflib.get_close_matches(name, known, n=1)
        hints[name] = f"did you mean {close[0]!r}?" if close else "see the README's option table."
    return hints


def defaults() -> dict[str, Any]:
    """The defaults, as Covalent writes them into `[executors.ec2]`."""
    result = Options().as_dict()
    result["python_version"] = ""  # resolved per dispatcher, not frozen into the config file
    return result


def resolve(explicit: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Explicit argument (not None) > config section > default, for every option."""
    values: dict[str, Any] = {}
    for name in OPTION_NAMES:
        chosen = next((src[name] for src in (explicit, config) if src.get(name) is not None), None)
        if chosen is not None:
            values[name] = chosen
    return values


def build(values: Mapping[str, Any]) -> Options:
    """Options from plain values (e.g. an executor's attributes); unknown keys are ignored."""
    known = {name: values[name] for name in OPTION_NAMES if name in values}
    if not known.get("python_version"):
        known.pop("python_version", None)
    known = {name: _coerce(name, value) for name, value in known.items()}
    return Options(**known)


def _coerce(name: str, value: Any) -> Any:
    """Config files give strings; turn them into the field's type or say what is wrong."""
    kind = {f.name: f.type for f in fields(Options)}[name]
    if kind == "bool | str":  # spot: a boolean or the word "fallback"
        if isinstance(value, str) and value.lower() == SPOT_FALLBACK:
            return SPOT_FALLBACK
        if isinstance(value, str) and value.lower() not in _BOOL_WORDS:
            return value  # refused by its check, which names the choices
        kind = "bool"
    try:
        if kind == "int" and not isinstance(value, bool):
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool" and isinstance(value, str):
            if value.lower() not in _BOOL_WORDS:
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"Option '{name}' must be {kind}, got {value!r}; fix it in the EC2Executor "
            f"arguments or the [executors.ec2] section."
        ) from exc
    return value


# --- checks: each refuses one kind of bad value, naming the key, the value and the fix -----


def _check_instance_type(o: Options) -> None:
    if not _INSTANCE_TYPE.match(o.instance_type):
        raise ConfigurationError(
            f"Option 'instance_type' is {o.instance_type!r}, which is not an EC2 instance "
            f"type; use a name like 't3.micro' or 'm7g.large'."
        )


def _check_region(o: Options) -> None:
    if not _REGION.match(o.region):
        raise ConfigurationError(
            f"Option 'region' is {o.region!r}, which is not an AWS region; "
            f"use a name like 'us-east-1'."
        )


BOUNDS: dict[str, tuple[int, int, str]] = {
    "volume_size": (1, 16384, "GiB"),
    "ssh_port": (1, 65535, ""),
    "max_lifetime_minutes": (5, 7 * 24 * 60, "minutes"),
    "keep_warm_minutes": (0, 24 * 60, "minutes"),
    "orphan_minutes": (2, 24 * 60, "minutes"),
}
"""Whole-number options: (low, high, unit). Within their stack parameters' bounds (tested)."""
MAX_CONCURRENT = 10_000
"""The highest `max_concurrent_instances`: far above any account's vCPU quota."""
PARAMETER_OF_OPTION = {
    "volume_size": "VolumeSize",
    "ssh_port": "SshPort",
    "max_lifetime_minutes": "MaxLifetimeMinutes",
    "keep_warm_minutes": "IdleMinutes",
    "orphan_minutes": "OrphanMinutes",
}


def _check_numbers(o: Options) -> None:
    for name, (low, high, unit) in BOUNDS.items():
        value = getattr(o, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigurationError(
                f"Option '{name}' is {value!r}; use a whole number from {low} to {high} "
                f"{unit}".rstrip()
                + "."
            )
    cap = o.max_concurrent_instances
    if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= MAX_CONCURRENT:
        raise ConfigurationError(
            f"Option 'max_concurrent_instances' is {cap!r}; use a whole number from 1 to "
            f"{MAX_CONCURRENT}, or 0 for no cap."
        )
    if not o.provision_timeout > 0:
        raise ConfigurationError(
            f"Option 'provision_timeout' is {o.provision_timeout!r}; use a number of seconds "
            f"above 0 (the default is 900)."
        )


def _check_cidr(o: Options) -> None:
    if not o.ssh_ingress_cidr:
        return
    try:
        ipaddress.IPv4Network(o.ssh_ingress_cidr, strict=True)
    except ValueError as exc:
        raise ConfigurationError(
            f"Option 'ssh_ingress_cidr' is {o.ssh_ingress_cidr!r}, which is not an IPv4 CIDR; "
            f"use the address that reaches the instance, like '203.0.113.7/32' ({exc})."
        ) from exc


def _check_keys(o: Options) -> None:
    if o.key_name and not o.ssh_key_file:
        raise ConfigurationError(
            f"Option 'key_name' is {o.key_name!r} but 'ssh_key_file' is empty; set "
            f"'ssh_key_file' to that key pair's private key, or drop 'key_name' to use a fresh "
            f"key for each electron."
        )
    path = o.key_file
    if path is None:
        return
    if not path.is_file():
        raise ConfigurationError(
            f"Option 'ssh_key_file' is {o.ssh_key_file!r}, but no file is there; give the path "
            f"of the private key of the EC2 key pair, or leave it empty for a fresh key."
        )
    if not os.access(path, os.R_OK):
        raise ConfigurationError(
            f"Option 'ssh_key_file' is {o.ssh_key_file!r}, but it is not readable by this user; "
            f"fix its permissions (chmod 600)."
        )


def _check_python(o: Options) -> None:
    if not _PYTHON_VERSION.match(o.python_version):
        raise ConfigurationError(
            f"Option 'python_version' is {o.python_version!r}; use a minor version like "
            f"'{dispatcher_python()}' (it must match the dispatcher's for cloudpickle)."
        )


def _check_ids(o: Options) -> None:
    for name, prefix in (("vpc", "vpc-"), ("subnet", "subnet-"), ("ami", "ami-")):
        value = getattr(o, name)
        if value and not value.startswith(prefix):
            raise ConfigurationError(
                f"Option '{name}' is {value!r}; use an id that starts with '{prefix}', or leave "
                f"it empty."
            )


def _check_spot(o: Options) -> None:
    if not isinstance(o.spot, bool) and o.spot != SPOT_FALLBACK:
        raise ConfigurationError(
            f"Option 'spot' is {o.spot!r}; use True (spot only), False (on-demand) or "
            f"'fallback' (spot first, on-demand when no zone has spot capacity)."
        )


def _check_username(o: Options) -> None:
    if not isinstance(o.username, str) or not _USERNAME.match(o.username):
        raise ConfigurationError(
            f"Option 'username' is {o.username!r}, which is not a Linux login name; use up to "
            f"32 lowercase letters, digits, '_' or '-', starting with a letter or '_', like "
            f"'ec2-user' or 'ubuntu'."
        )


def _check_tags(o: Options) -> None:
    if not isinstance(o.tags, Mapping):
        raise ConfigurationError(
            f"Option 'tags' is {o.tags!r}; use a mapping of tag keys to values, like "
            f"{{'project': 'climate'}}."
        )
    if len(o.tags) > MAX_EXTRA_TAGS:
        raise ConfigurationError(
            f"Option 'tags' has {len(o.tags)} tags; use at most {MAX_EXTRA_TAGS} (the stack, "
            f"its instance, volume and network interface carry them all)."
        )
    for key, value in o.tags.items():
        if not isinstance(key, str) or not _STACK_TAG_KEY.match(key) or key.startswith("aws:"):
            raise ConfigurationError(
                f"Option 'tags' has the key {key!r}; use 1 to 127 letters, digits, spaces or "
                f"'_.:/=+-@', not starting with 'aws:'."
            )
        if key.startswith(RESERVED_TAG_PREFIX):
            raise ConfigurationError(
                f"Option 'tags' has the key {key!r}; keys starting with "
                f"{RESERVED_TAG_PREFIX!r} are the executor's own, pick another key."
            )
        if not isinstance(value, str) or not _STACK_TAG_VALUE.match(value):
            raise ConfigurationError(
                f"Option 'tags' has {key!r}={value!r}; a tag value is a string of 1 to 255 "
                f"letters, digits, spaces or '_.:/=+-@' (CloudFormation refuses an empty one)."
            )


_CHECKS = (
    _check_instance_type,
    _check_region,
    _check_numbers,
    _check_cidr,
    _check_keys,
    _check_python,
    _check_ids,
    _check_spot,
    _check_username,
    _check_tags,
)
