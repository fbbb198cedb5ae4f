"""The package's logger: a child of Covalent's own, so an electron's phases show in the
Covalent server's log at its `log_level` (no covalent import needed to name it)."""

from __future__ import annotations

import logging

COVALENT_LOGGER = "covalent._shared_files.logger"

log = logging.getLogger(f"{COVALENT_LOGGER}.ec2_executor")
