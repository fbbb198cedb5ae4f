"""The `[executors.ec2]` section of Covalent's configuration file."""

from __future__ import annotations

from typing import Any


def config_section() -> dict[str, Any]:
    # Import covalent itself first: it loads this plugin (and writes its defaults into the
    # config) completely; importing `ec2_executor.ec2` first would hand it a half-loaded module.
    import covalent  # noqa: F401
    from covalent._shared_files.config import get_config

    try:
        section = get_config("executors.ec2")
    except KeyError:
        return {}
    return dict(section) if isinstance(section, dict) else {}


def config_file() -> str:
    """The path of Covalent's configuration file, which holds `[executors.ec2]`."""
    import covalent  # noqa: F401
    from covalent._shared_files.config import get_config

    return str(get_config("sdk.config_file"))
