"""Test harness: AWS on loopback (a moto server) plus emulated EC2 instance boots.

Import it as ``harness`` (``tests/`` is on ``sys.path``; ``tests/conftest.py`` makes sure of it):

    from harness import EmulatedBoot, parse_user_data, render_user_data

Nothing here talks to anything outside 127.0.0.0/8, and nothing is installed into the system:
every emulated instance lives in its own temporary directory.
"""

from ec2_executor.access import KeyPair  # the product's: the harness makes keys as it does

from .boot import (
    BootedInstance,
    BootError,
    Delays,
    EmulatedBoot,
    Image,
    booting,
    build_image_venv,
    current_site_packages,
)
from .guests import (
    GuestBoot,
    GuestInstance,
    GuestNetwork,
    create_guest_subnet,
    guest_booting,
    guest_network,
    guest_support,
    writable_root,
)
from .moto import (
    AWS_ENV_UNSET,
    LoopbackNetwork,
    MotoServer,
    aws_environment,
    create_loopback_network,
    patched_environ,
    reset_moto,
)
from .net import free_port
from .netguard import NetworkGuard, NetworkGuardError
from .userdata import (
    STAND_IN_BOOTSTRAP,
    BootSpec,
    UserDataError,
    parse_user_data,
    render_user_data,
)

__all__ = [
    "AWS_ENV_UNSET",
    "STAND_IN_BOOTSTRAP",
    "BootError",
    "BootSpec",
    "BootedInstance",
    "Delays",
    "EmulatedBoot",
    "GuestBoot",
    "GuestInstance",
    "GuestNetwork",
    "Image",
    "KeyPair",
    "LoopbackNetwork",
    "MotoServer",
    "NetworkGuard",
    "NetworkGuardError",
    "UserDataError",
    "aws_environment",
    "booting",
    "build_image_venv",
    "create_guest_subnet",
    "create_loopback_network",
    "current_site_packages",
    "free_port",
    "guest_booting",
    "guest_network",
    "guest_support",
    "parse_user_data",
    "patched_environ",
    "render_user_data",
    "reset_moto",
    "writable_root",
]
