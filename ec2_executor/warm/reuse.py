"""The reuse key: which electrons may share a warm instance.

Two electrons share an instance only when every option that shapes the stack, the instance or
the way in (credentials, network, image, login) is equal, and the package is the same version.
Each option is classified exactly once below; a test fails when a new option is neither.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json

from ec2_executor.options import Options

IN_KEY: frozenset[str] = frozenset(
    {
        "profile",
        "region",
        "credentials_file",
        "ssh_key_file",
        "key_name",
        "instance_type",
        "volume_size",
        "vpc",
        "subnet",
        "ami",
        "use_baked_image",  # picks the image
        "username",
        "ssh_port",
        "ssh_ingress_cidr",
        "use_private_ip",
        "create_vpc",
        "spot",
        "instance_profile",
        "max_lifetime_minutes",
        "tags",
        "python_version",
        "keep_warm_minutes",  # the instance's own idle power-off is a stack parameter
        "orphan_minutes",  # so is its power-off once its dispatcher is gone
    }
)
"""Options that change the stack, the instance or how it is reached."""

NOT_IN_KEY: frozenset[str] = frozenset(
    {
        "remote_cache",  # each task gets its own directory under it
        "wait_for_deletion",  # how teardown waits, not what it deletes
        "provision_timeout",  # how long creation may take, not what is created
        "max_concurrent_instances",  # how many electrons launch at once, not what they launch
    }
)
"""Options that only change how one electron is handled."""


def reuse_key(options: Options) -> str:
    """A digest of every keyed option and the package version (equal keys: shareable)."""
    keyed = {name: getattr(options, name) for name in sorted(IN_KEY)}
    keyed["tags"] = dict(sorted(options.tags.items()))
    keyed["ec2-executor"] = importlib.metadata.version("ec2-executor")
    text = json.dumps(keyed, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]
