"""What a signed AWS request asks for, as a proxy in front of moto sees it."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any


def describe_request(headers: Any, path: str, body: bytes) -> tuple[str, str, dict[str, str]]:
    """(service, action, parameters) of a signed AWS request, query or JSON protocol."""
    scope = str(headers.get("Authorization") or "").split("Credential=")[-1].split("/")
    service = scope[3] if len(scope) > 3 else ""
    target = headers.get("X-Amz-Target")
    if target:  # JSON protocol: "AmazonSSM.GetParameters"
        params = json.loads(body or b"{}")
        return service, str(target).rsplit(".", 1)[-1], {k: str(v) for k, v in params.items()}
    query = dict(urllib.parse.parse_qsl(body.decode(errors="replace")))
    query.update(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))
    return service, query.get("Action", ""), query
