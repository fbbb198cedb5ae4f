"""Keeps key material out of logs, even at DEBUG, where botocore logs request parameters and
response bodies (the host key travels to CloudFormation as a NoEcho parameter)."""

from __future__ import annotations

import logging

MASK = "****"
# The loggers that print request and response bodies.
_BODY_LOGGERS = ("botocore.endpoint", "botocore.parsers", "botocore.httpchecksum")


class _SecretFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            redacted = message
            for secret in self.secrets:
                redacted = redacted.replace(secret, MASK)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


_FILTER = _SecretFilter()
for _name in _BODY_LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)


def hide(secret: str) -> None:
    """From now on, mask `secret` in every record of the body-logging loggers."""
    _FILTER.secrets.add(secret)


def unhide(secret: str) -> None:
    _FILTER.secrets.discard(secret)
