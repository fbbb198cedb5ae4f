"""Key material stays out of botocore's body logs, even at DEBUG, until it is unhidden."""

from __future__ import annotations

import logging
import secrets

import pytest

from ec2_executor import redact

BODY_LOGGERS = ["botocore.endpoint", "botocore.parsers", "botocore.httpchecksum"]


@pytest.fixture
def secret() -> str:
    return secrets.token_urlsafe(32)  # unique: the filter is the process's


@pytest.mark.parametrize("name", BODY_LOGGERS)
def test_a_hidden_secret_is_masked_in_body_logs(
    name: str, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=name)
    redact.hide(secret)
    try:
        logging.getLogger(name).debug("Request body: %s", {"HostKey": secret, "Other": "kept"})
    finally:
        redact.unhide(secret)
    (record,) = [r for r in caplog.records if r.name == name]
    assert secret not in record.getMessage()
    assert redact.MASK in record.getMessage() and "kept" in record.getMessage()


def test_an_unhidden_secret_is_logged_again(secret: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="botocore.endpoint")
    redact.hide(secret)
    redact.unhide(secret)
    logging.getLogger("botocore.endpoint").debug("Response body: %s", secret)
    assert secret in caplog.records[-1].getMessage()


def test_every_hidden_secret_is_masked(secret: str, caplog: pytest.LogCaptureFixture) -> None:
    other = secrets.token_urlsafe(32)
    caplog.set_level(logging.DEBUG, logger="botocore.parsers")
    redact.hide(secret)
    redact.hide(other)
    try:
        logging.getLogger("botocore.parsers").debug("%s and %s", secret, other)
    finally:
        redact.unhide(secret)
        redact.unhide(other)
    assert caplog.records[-1].getMessage() == f"{redact.MASK} and {redact.MASK}"
