"""A stand-in for the instance metadata service's spot interruption notice, on loopback.

It answers what `owner-watch.sh` asks (IMDSv2): `PUT .../latest/api/token` gives a token, and
`GET .../latest/meta-data/spot/instance-action` with that token gives 404 until a notice is
issued, then `{"action": "terminate", "time": ...}`, as EC2 does. Anything before `/latest` in
the path names the instance (`EC2_EXECUTOR_METADATA=http://127.0.0.1:PORT/<instance id>`), so
one stand-in serves every emulated instance. Notices are files in `notices` (one per instance,
`any` for all), so a stand-in in another process (inside a real guest's network namespace:
`python -m harness.metadata PORT NOTICES`) is told through the file system.

Nothing here is ever sent to 169.254.169.254: the stand-in replaces it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

TOKEN_PATH = "/latest/api/token"
NOTICE_PATH = "/latest/meta-data/spot/instance-action"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_PUT(self) -> None:
        if not self.path.endswith(TOKEN_PATH) or not self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            self._answer(400, b"")
            return
        self._answer(200, self.server.token.encode())

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != self.server.token:
            self._answer(401, b"")
            return
        if not self.path.endswith(NOTICE_PATH):
            self._answer(404, b"")
            return
        instance = self.path[: -len(NOTICE_PATH)].strip("/") or "any"
        self.server.asked.add(instance)
        for name in (instance, "any"):
            with contextlib.suppress(OSError):
                self._answer(200, (self.server.notices / name).read_bytes())
                return
        self._answer(404, b"")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, notices: Path) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.notices = notices
        self.token = uuid.uuid4().hex
        self.asked: set[str] = set()


class MetadataStandIn:
    """The stand-in on a thread of this process."""

    def __init__(self, notices: Path, port: int = 0) -> None:
        notices.mkdir(parents=True, exist_ok=True)
        self.notices = notices
        self._server = _Server(port, notices)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metadata-stand-in", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def asked(self, instance_id: str) -> bool:
        """Whether `instance_id` has asked for its notice yet."""
        return instance_id in self._server.asked

    def issue(self, instance_id: str, *, in_seconds: float) -> str:
        return issue_notice(self.notices, instance_id, in_seconds=in_seconds)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def issue_notice(notices: Path, instance_id: str = "any", *, in_seconds: float) -> str:
    """EC2's notice that the instance is terminated in `in_seconds` (2 minutes on AWS; tests
    give less); returns its time."""
    at = (datetime.now(UTC) + timedelta(seconds=in_seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = json.dumps({"action": "terminate", "time": at}).encode()
    (notices / f".{instance_id}").write_bytes(body)
    (notices / f".{instance_id}").replace(notices / instance_id)
    return at


@contextlib.contextmanager
def metadata_stand_in(notices: Path) -> Iterator[MetadataStandIn]:
    server = MetadataStandIn(notices)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":  # python -m harness.metadata PORT NOTICES (in a guest's namespace)
    _Server(int(sys.argv[1]), Path(sys.argv[2])).serve_forever()
