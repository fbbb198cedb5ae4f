"""A cloud that takes its time: an HTTP proxy in front of the moto server.

moto creates a stack and its instance within the CreateStack call. CloudFormation does not: the
instance exists (with an id and addresses) seconds into the stack's creation, and the stack
reports CREATE_COMPLETE only later. The proxy replays that timeline on moto's answers, from
the moment each CreateStack came through:

- before `instance_after`, DescribeStackResource on the instance says it does not exist yet;
- before `complete_after`, DescribeStacks reports CREATE_IN_PROGRESS, without outputs;
- from `fail_after` (when set), the stack reports ROLLBACK_IN_PROGRESS and its events a
  CREATE_FAILED instance with `FAIL_REASON`;
- an action named in `refuse` is answered with that AWS error code, and never reaches moto.

Everything else passes through untouched, so the executor, pointed at the proxy through
`AWS_ENDPOINT_URL`, cannot tell. Pair it with `EmulatedBoot(boot_delay=..., install_delay=...)`
for the instance's boot to SSH and the bootstrap's installs on a stock image; `AwsSeconds`
holds the published figures for all of them, to scale by one factor.
"""

from __future__ import annotations

import dataclasses
import http.client
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

INSTANCE = "Instance"
FAIL_REASON = "Instance i-timed failed to stabilize (injected by the timed cloud)"


@dataclass(frozen=True)
class Timeline:
    """Seconds after CreateStack; scaled-down versions of what AWS takes."""

    instance_after: float = 1.0
    complete_after: float = 15.0
    fail_after: float | None = None


@dataclass(frozen=True)
class AwsSeconds:
    """What AWS takes for the default shape, in seconds from CreateStack, as BENCHMARKS.md's
    paper estimate ("On real AWS, on paper") gives it; `scaled` shrinks them all alike."""

    instance_after: float = 5.0
    """CloudFormation names the launched instance (RunInstances, pending)."""
    boot: float = 20.0
    """sshd answers (pending to running, then the boot to SSH)."""
    complete_after: float = 40.0
    """CREATE_COMPLETE (CloudFormation's stabilisation adds ~13 s after the instance runs)."""
    install: float = 50.0
    """The bootstrap's installs on a stock image (dnf python3.11, venv, covalent with uv:
    30-70 s); none on a baked image."""

    def scaled(self, factor: float) -> AwsSeconds:
        return AwsSeconds(**{k: v * factor for k, v in dataclasses.asdict(self).items()})

    def timeline(self) -> Timeline:
        return Timeline(instance_after=self.instance_after, complete_after=self.complete_after)


@dataclass
class _Stack:
    name: str
    created: float
    reported_complete_at: float | None = None


@dataclass
class TimedCloud:
    moto_url: str
    timeline: Timeline = field(default_factory=Timeline)
    refuse: dict[str, str] = field(default_factory=dict)
    _stacks: dict[str, _Stack] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> TimedCloud:
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                cloud._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> TimedCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def created_at(self, stack_name: str) -> float | None:
        """When CreateStack for the stack came through (monotonic), or None."""
        with self._lock:
            stack = self._stacks.get(stack_name)
            return stack.created if stack else None

    def completed_at(self, stack_name: str) -> float | None:
        """When the proxy first reported the stack CREATE_COMPLETE (monotonic), or None."""
        with self._lock:
            stack = self._stacks.get(stack_name)
            return stack.reported_complete_at if stack else None

    # -- the proxy ------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        params = dict(urllib.parse.parse_qsl(body.decode(errors="replace")))
        action = params.get("Action", "")
        if action in self.refuse:
            return _send(request, 400, _error(self.refuse[action], f"{action} refused (test)"))
        stack = self._known(params.get("StackName", ""))
        asks_instance = action == "DescribeStackResource" and params.get("LogicalResourceId")
        if stack and asks_instance == INSTANCE and self._age(stack) < self.timeline.instance_after:
            return _send(request, 400, _not_there_yet(stack.name))
        status, headers, answer = self._forward(request, body)
        if action == "CreateStack" and status == 200:
            self._record(params["StackName"], answer)
        elif stack and status == 200 and action == "DescribeStacks":
            answer = self._stack_status(stack, answer)
        elif stack and status == 200 and action == "DescribeStackEvents" and self._failed(stack):
            answer = answer.replace(b"<StackEvents>", b"<StackEvents>" + _failed_event(stack), 1)
        _send(request, status, answer, headers)

    def _forward(
        self, request: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        target = urllib.parse.urlsplit(self.moto_url)
        connection = http.client.HTTPConnection(target.hostname or "", target.port, timeout=60)
        try:
            # The Host header goes through as sent: it is signed, and a moto server that
            # enforces IAM checks the signature.
            headers = dict(request.headers.items())
            connection.request("POST", request.path, body=body, headers=headers)
            response = connection.getresponse()
            kept = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
            return response.status, kept, response.read()
        finally:
            connection.close()

    def _record(self, name: str, answer: bytes) -> None:
        found = re.search(rb"<StackId>([^<]+)</StackId>", answer)
        stack = _Stack(name=name, created=time.monotonic())
        with self._lock:
            self._stacks[name] = stack
            if found:
                self._stacks[found[1].decode()] = stack

    def _known(self, name_or_id: str) -> _Stack | None:
        with self._lock:
            return self._stacks.get(name_or_id)

    def _age(self, stack: _Stack) -> float:
        return time.monotonic() - stack.created

    def _failed(self, stack: _Stack) -> bool:
        fail_after = self.timeline.fail_after
        return fail_after is not None and self._age(stack) >= fail_after

    def _stack_status(self, stack: _Stack, answer: bytes) -> bytes:
        if b"<StackStatus>CREATE_COMPLETE</StackStatus>" not in answer:
            return answer  # deleting or deleted: moto's own story from here
        if self._failed(stack):
            shown = b"ROLLBACK_IN_PROGRESS"
        elif self._age(stack) < self.timeline.complete_after:
            shown = b"CREATE_IN_PROGRESS"
        else:
            with self._lock:
                stack.reported_complete_at = stack.reported_complete_at or time.monotonic()
            return answer
        answer = re.sub(rb"<Outputs>.*?</Outputs>(?=\s*<)", b"", answer, flags=re.S)
        return answer.replace(
            b"<StackStatus>CREATE_COMPLETE</StackStatus>",
            b"<StackStatus>" + shown + b"</StackStatus>",
        )


def _not_there_yet(stack_name: str) -> bytes:
    return _error("ValidationError", f"Resource {INSTANCE} does not exist for stack {stack_name}")


def _error(code: str, message: str) -> bytes:
    return (
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
        f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId>"
        "</ErrorResponse>"
    ).encode()


def _failed_event(stack: _Stack) -> bytes:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return (
        f"<member><StackName>{stack.name}</StackName><EventId>{uuid.uuid4()}</EventId>"
        f"<LogicalResourceId>{INSTANCE}</LogicalResourceId>"
        f"<PhysicalResourceId>i-timed</PhysicalResourceId>"
        f"<ResourceType>AWS::EC2::Instance</ResourceType><Timestamp>{stamp}</Timestamp>"
        f"<ResourceStatus>CREATE_FAILED</ResourceStatus>"
        f"<ResourceStatusReason>{FAIL_REASON}</ResourceStatusReason></member>"
    ).encode()


def _send(
    request: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    request.send_response(status)
    for key, value in headers or [("Content-Type", "text/xml")]:
        request.send_header(key, value)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)
