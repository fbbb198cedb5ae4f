"""The dispatcher process's identity: a random id made once per process.

Host names and process ids collide in containers, so the id is random. Each stack carries it
(`cloud.stacks.TAG_OWNER`): a sweep never touches this process's own stacks, and
`ec2-executor list` tells whose a stack is.
"""

from __future__ import annotations

import secrets

OWNER_ID = secrets.token_hex(8)
"""This process's owner id: 16 hex digits, made at import."""
