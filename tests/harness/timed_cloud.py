"""A cloud that takes its time: an HTTP proxy in front of the moto server.

moto creates a stack and its instance within the CreateStack call. CloudFormation does not: the
instance exists (with an id and addresses) seconds into the stack's creation, and the stack
reports CREATE_COMPLETE only later. The proxy replays that timeline on moto's answers, from
the moment each CreateStack came through:

- before `instance_after`, DescribeStackResource on the instance says it does not exist yet;
  from then until the stack completes it names the instance, CREATE_IN_PROGRESS (moto's
  instance is CREATE_COMPLETE from the start; CloudFormation's is in progress until it has
  stabilised, just before the stack completes), and CREATE_FAILED once the stack fails;
- before `instance_after`, DescribeInstances leaves out the stack's instance (found by its
  `aws:cloudformation:stack-*` tags), which CloudFormation has not launched yet;
- before `complete_after`, DescribeStacks reports CREATE_IN_PROGRESS, without outputs;
- from `fail_after` (when set), the stack reports ROLLBACK_IN_PROGRESS and its events a
  CREATE_FAILED instance with `FAIL_REASON`; `fail(stack, reason)` does the same to one stack
  from the moment it is called, with `reason` (such as `aws_texts.did_not_stabilize`: the
  instance launched, then EC2 terminated it for lack of capacity);
- an action named in `refuse` is answered with that AWS error code, and never reaches moto.

It can also limit calls as AWS does (`limits`, off by default): a token bucket per action,
EC2's published ones and CloudFormation's at a configurable rate, and AWS's own throttling
answers past them. `throttle_first` throttles the first calls of an action outright, and
`throttle_applied` lets them reach moto and answers "throttled" all the same (a call that went
through, its answer lost). A CreateStack repeated with the `ClientRequestToken` of one that went
through gets that one's answer, as from CloudFormation (unless `idempotent_create` is off: moto
then says AlreadyExistsException), and the stack's creation events carry the token.

`ListStacks` answers with the statuses the timeline gives (moto's stacks are complete at once).
With `vcpu_quota` set, a CreateStack whose instance would take the running instances' vCPUs past
it is taken and fails, as on AWS: it never reaches moto; the stack reports CREATE_IN_PROGRESS
until `instance_after`, then its Instance CREATE_FAILED with EC2's vCPU message as
CloudFormation wraps it, and it is gone (OnFailure=DELETE), DELETE_COMPLETE by its id.

Everything else passes through untouched, so the executor, pointed at the proxy through
`AWS_ENDPOINT_URL`, cannot tell. Pair it with `EmulatedBoot(delays=Delays(boot=..., install=...))`
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
import xml.sax.saxutils
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from .aws_request import describe_request

INSTANCE = "Instance"
FAIL_REASON = "Instance i-timed failed to stabilize (injected by the timed cloud)"
CLOUDFORMATION_XMLNS = "http://cloudformation.amazonaws.com/doc/2010-05-15/"


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


# EC2's published request buckets (per second, burst), per account, region and action.
EC2_NON_MUTATING = (20.0, 100.0)
EC2_UNFILTERED = (10.0, 50.0)
"""DescribeInstances without instance ids, filters or paging."""
EC2_MUTATING = (5.0, 50.0)
EC2_ACTIONS = {
    "RunInstances": (2.0, 5.0),
    "StartInstances": (2.0, 5.0),
    "TerminateInstances": (5.0, 100.0),
    "CreateTags": (10.0, 100.0),
}


@dataclass(frozen=True)
class RateLimits:
    """AWS's request buckets: EC2's published ones, CloudFormation's (unpublished; its users
    see throttling at 5 to 10 calls per second) at `cloudformation_per_second` per action."""

    cloudformation_per_second: float = 5.0
    cloudformation_burst: float = 10.0

    def bucket(self, service: str, action: str, params: dict[str, str]) -> tuple[str, float, float]:
        """(bucket, per second, burst) of a call; a burst of 0 means no limit."""
        if service == "cloudformation":
            return action, self.cloudformation_per_second, self.cloudformation_burst
        if service != "ec2":
            return action, 0.0, 0.0  # STS, SSM: far below their limits in any test
        if action == "DescribeInstances" and not _filtered(params):
            return f"{action} (unfiltered)", *EC2_UNFILTERED
        if action in EC2_ACTIONS:
            return (action, *EC2_ACTIONS[action])
        reads = action.startswith(("Describe", "Get", "List", "Search"))
        return (action, *(EC2_NON_MUTATING if reads else EC2_MUTATING))


def _filtered(params: dict[str, str]) -> bool:
    return any(k.startswith(("InstanceId.", "Filter.", "MaxResults")) for k in params)


@dataclass
class _Bucket:
    per_second: float
    burst: float
    tokens: float
    updated: float

    def admit(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(frozen=True)
class Call:
    """One request the proxy answered: `answer` is 'moto' (moto's answer), 'idempotent' (a
    repeated CreateStack's first answer), 'vcpu-limit' (a CreateStack taken, whose launch the
    vCPU quota fails), 'refused stack' (a read of such a stack) or the error code it gave."""

    service: str
    action: str
    at: float
    """When the request arrived (`time.monotonic()`), as the buckets saw it."""
    answer: str


THROTTLED = ("Throttling", "RequestLimitExceeded")
VCPUS = {"t2.nano": 1, "t2.micro": 1, "t2.small": 1, "t3.nano": 2, "t3.micro": 2, "t3.small": 2}
"""vCPUs of the instance types tests use; any other type counts as 2."""
VCPU_LIMIT_REASON = (
    'Resource handler returned message: "You have requested more vCPU capacity than your '
    "current vCPU limit of {limit} allows for the instance bucket that the specified instance "
    "type belongs to. Please visit http://aws.amazon.com/contact-us/ec2-request to request an "
    'adjustment to this limit. (Service: Ec2, Status Code: 400, Request ID: {request})" '
    "(RequestToken: {token}, HandlerErrorCode: GeneralServiceException)"
)
"""CloudFormation's CREATE_FAILED reason for a launch past the vCPU quota, as AWS words it."""


@dataclass
class _Stack:
    name: str
    created: float
    reported_complete_at: float | None = None
    token: str = ""
    stack_id: str = ""
    vcpus: int = 0
    deleted: bool = False
    refused: str = ""
    """The launch's CREATE_FAILED reason when the vCPU quota refused it (never in moto)."""
    failure: str = ""
    """The CREATE_FAILED reason `fail` gave this stack ('' while it has not failed)."""


@dataclass
class TimedCloud:
    moto_url: str
    timeline: Timeline = field(default_factory=Timeline)
    refuse: dict[str, str] = field(default_factory=dict)
    limits: RateLimits | None = None
    throttle_first: dict[str, int] = field(default_factory=dict)
    throttle_applied: dict[str, int] = field(default_factory=dict)
    idempotent_create: bool = True
    vcpu_quota: int | None = None
    calls: list[Call] = field(default_factory=list)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _created: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    _stacks: dict[str, _Stack] = field(default_factory=dict)
    _reserved: int = 0
    peak_vcpus: int = 0
    """The most vCPUs the stacks not deleted held at once."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _request: threading.local = field(default_factory=threading.local)
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

    def fail(self, stack_name: str, reason: str) -> None:
        """From now on, the stack last created under `stack_name` fails with `reason` (a stack
        created later under the name does not)."""
        with self._lock:
            self._stacks[stack_name].failure = reason

    def throttled(self, action: str | None = None) -> list[Call]:
        """The calls (of `action`, or all) answered with a throttling error."""
        with self._lock:
            calls = list(self.calls)
        return [c for c in calls if c.answer in THROTTLED and action in (None, c.action)]

    def answers(self, action: str) -> list[str]:
        """The answers given to `action` so far, in order."""
        with self._lock:
            return [c.answer for c in self.calls if c.action == action]

    # -- the proxy ------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        self._request.arrived = time.monotonic()  # what the buckets saw, not moto's delay
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        service, action, params = describe_request(request.headers, request.path, body)
        if action in self.refuse:
            self._log(service, action, self.refuse[action])
            return _send(request, 400, _error(self.refuse[action], f"{action} refused (test)"))
        over_limit = not self._admit(service, action, params)
        if over_limit or self._count_down(self.throttle_first, action):
            return self._throttle(request, service, action)
        repeated = self._repeated_create(params) if action == "CreateStack" else None
        if repeated is not None:  # CloudFormation's idempotent answer to a known token
            self._log(service, action, "idempotent")
            return _send(request, 200, repeated)
        stack = self._known(params.get("StackName", ""))
        if action == "CreateStack":
            return self._create(request, service, params, body)
        reads = action in ("DescribeStacks", "DescribeStackEvents")
        if reads and stack is not None and self._answers_refused(stack, params):
            self._log(service, action, "refused stack")
            return _send(request, 200, self._refused_answer(stack, action))
        asks_instance = action == "DescribeStackResource" and params.get("LogicalResourceId")
        if stack and asks_instance == INSTANCE and self._age(stack) < self.timeline.instance_after:
            self._log(service, action, "ValidationError")
            return _send(request, 400, _not_there_yet(stack.name))
        status, headers, answer = self._forward(request, body)
        if action == "DeleteStack" and status == 200 and stack:
            with self._lock:
                stack.deleted = True
        elif action == "ListStacks" and status == 200:
            answer = self._list_stacks(params, answer)
        elif action == "DescribeInstances" and status == 200:
            answer = self._launched_only(answer)
        elif stack and status == 200 and action == "DescribeStacks":
            answer = self._stack_status(stack, answer)
        elif stack and status == 200 and action == "DescribeStackEvents":
            answer = self._stack_events(stack, answer)
        elif (
            stack
            and status == 200
            and action in ("DescribeStackResource", "DescribeStackResources")
        ):
            answer = self._resource_status(stack, answer)
        if self._count_down(self.throttle_applied, action):
            return self._throttle(request, service, action)  # applied, and answered "throttled"
        self._log(service, action, _code(status, answer))
        _send(request, status, answer, headers)

    def _admit(self, service: str, action: str, params: dict[str, str]) -> bool:
        """Take a token from the call's bucket, as AWS would; False: it has none left."""
        if self.limits is None:
            return True
        key, per_second, burst = self.limits.bucket(service, action, params)
        if burst <= 0.0:
            return True
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(
                f"{service}:{key}", _Bucket(per_second, burst, tokens=burst, updated=now)
            )
            return bucket.admit(now)

    def _count_down(self, counts: dict[str, int], action: str) -> bool:
        with self._lock:
            if counts.get(action, 0) <= 0:
                return False
            counts[action] -= 1
            return True

    def _throttle(self, request: BaseHTTPRequestHandler, service: str, action: str) -> None:
        """AWS's own throttling answer: EC2's RequestLimitExceeded (HTTP 503, EC2's error
        shape), or the query services' Throttling (HTTP 400)."""
        if service == "ec2":
            self._log(service, action, "RequestLimitExceeded")
            body = (
                "<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
                "<Message>Request limit exceeded.</Message></Error></Errors>"
                f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
            )
            return _send(request, 503, body.encode())
        self._log(service, action, "Throttling")
        _send(request, 400, _error("Throttling", "Rate exceeded", xmlns=CLOUDFORMATION_XMLNS))

    def _log(self, service: str, action: str, answer: str) -> None:
        with self._lock:
            arrived = getattr(self._request, "arrived", time.monotonic())
            self.calls.append(Call(service, action, arrived, answer))

    def _repeated_create(self, params: dict[str, str]) -> bytes | None:
        token = params.get("ClientRequestToken", "")
        with self._lock:
            known = self._created.get(token) if token and self.idempotent_create else None
        return known[1] if known and known[0] == params.get("StackName") else None

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

    def _create(
        self, request: BaseHTTPRequestHandler, service: str, params: dict[str, str], body: bytes
    ) -> None:
        """CreateStack: to moto, or refused within the stack for the vCPU quota."""
        need = VCPUS.get(_parameter(params, "InstanceType"), 2)
        with self._lock:
            over = self.vcpu_quota is not None and (
                self._vcpus_in_use() + self._reserved + need > self.vcpu_quota
            )
            self._reserved += 0 if over else need
        headers: list[tuple[str, str]] | None = None
        if over:
            status, answer, said = 200, self._refuse_launch(params), "vcpu-limit"
        else:
            try:
                status, headers, answer = self._forward(request, body)
            finally:
                with self._lock:
                    self._reserved -= need
            said = _code(status, answer)
            if status == 200:
                self._record(params, answer, vcpus=need)
        if self._count_down(self.throttle_applied, "CreateStack"):
            return self._throttle(request, service, "CreateStack")  # taken, answered "throttled"
        self._log(service, "CreateStack", said)
        _send(request, status, answer, headers)

    def _vcpus_in_use(self) -> int:
        """vCPUs of the instances of the stacks not deleted (under the lock)."""
        stacks = {id(s): s for s in self._stacks.values()}.values()
        return sum(s.vcpus for s in stacks if not s.deleted and not s.refused)

    def vcpus_in_use(self) -> int:
        with self._lock:
            return self._vcpus_in_use()

    def _refuse_launch(self, params: dict[str, str]) -> bytes:
        """A stack that CloudFormation takes, and whose instance EC2 refuses for the quota."""
        name = params["StackName"]
        stack_id = f"arn:aws:cloudformation:us-east-1:123456789012:stack/{name}/{uuid.uuid4()}"
        reason = VCPU_LIMIT_REASON.format(
            limit=self.vcpu_quota, request=uuid.uuid4(), token=uuid.uuid4()
        )
        answer = (
            f'<CreateStackResponse xmlns="{CLOUDFORMATION_XMLNS}"><CreateStackResult>'
            f"<StackId>{stack_id}</StackId></CreateStackResult><ResponseMetadata>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata></CreateStackResponse>"
        ).encode()
        self._record(params, answer, refused=reason)
        return answer

    def refused_launches(self) -> int:
        """CreateStack calls the vCPU quota refused."""
        return self.answers("CreateStack").count("vcpu-limit")

    def _record(
        self, params: dict[str, str], answer: bytes, *, vcpus: int = 0, refused: str = ""
    ) -> None:
        name, token = params["StackName"], params.get("ClientRequestToken", "")
        found = re.search(rb"<StackId>([^<]+)</StackId>", answer)
        stack_id = found[1].decode() if found else ""
        stack = _Stack(
            name=name,
            created=time.monotonic(),
            token=token,
            stack_id=stack_id,
            vcpus=vcpus,
            refused=refused,
        )
        with self._lock:
            self._stacks[name] = stack
            if stack_id:
                self._stacks[stack_id] = stack
            if token:
                self._created[token] = (name, answer)
            self.peak_vcpus = max(self.peak_vcpus, self._vcpus_in_use())

    def _refused_gone(self, stack: _Stack) -> bool:
        return stack.deleted or self._age(stack) >= self.timeline.instance_after

    def _answers_refused(self, stack: _Stack, params: dict[str, str]) -> bool:
        """Whether the proxy answers this read of a refused stack itself: by its id always, by
        its name until it is gone (then moto says it does not exist)."""
        if not stack.refused:
            return False
        return params.get("StackName") == stack.stack_id or not self._refused_gone(stack)

    def _refused_answer(self, stack: _Stack, action: str) -> bytes:
        gone = self._refused_gone(stack)
        if action == "DescribeStacks":
            status = "DELETE_COMPLETE" if gone else "CREATE_IN_PROGRESS"
            member = _stack_member(stack, status)
            return _query_answer("DescribeStacks", f"<Stacks>{member}</Stacks>")
        started = _event(stack, stack.name, "AWS::CloudFormation::Stack", "CREATE_IN_PROGRESS")
        events = [started]
        if gone:
            events += [
                _event(stack, INSTANCE, "AWS::EC2::Instance", "CREATE_FAILED", stack.refused),
                _event(stack, stack.name, "AWS::CloudFormation::Stack", "DELETE_COMPLETE"),
            ]
        members = "".join(reversed(events))  # most recent first, as AWS lists them
        return _query_answer("DescribeStackEvents", f"<StackEvents>{members}</StackEvents>")

    def _list_stacks(self, params: dict[str, str], answer: bytes) -> bytes:
        """moto's summaries, with the statuses of the proxy's stacks as the timeline has them."""
        wanted = {v for k, v in params.items() if k.startswith("StackStatusFilter.member.")}
        with self._lock:
            known = {id(s): s for s in self._stacks.values()}.values()
            shown = {s.stack_id: self._shown_status(s) for s in known if not s.deleted}
        members = [
            m
            for m in re.findall(rb"<member>.*?</member>", answer, flags=re.S)
            if _stack_id_of(m) not in shown
        ]
        members += [
            _stack_member(stack, status).encode()
            for stack in known
            if (status := shown.get(stack.stack_id)) and (not wanted or status in wanted)
        ]
        summaries = b"<StackSummaries>" + b"".join(members) + b"</StackSummaries>"
        answer = answer.replace(b"<StackSummaries/>", b"<StackSummaries></StackSummaries>")
        return re.sub(
            rb"<StackSummaries>.*?</StackSummaries>", lambda _: summaries, answer, flags=re.S
        )

    def _shown_status(self, stack: _Stack) -> str:
        if stack.refused:
            return "DELETE_COMPLETE" if self._refused_gone(stack) else "CREATE_IN_PROGRESS"
        if self._failed(stack):
            return "ROLLBACK_IN_PROGRESS"
        if self._age(stack) < self.timeline.complete_after:
            return "CREATE_IN_PROGRESS"
        return "CREATE_COMPLETE"

    def _known(self, name_or_id: str) -> _Stack | None:
        with self._lock:
            return self._stacks.get(name_or_id)

    def _age(self, stack: _Stack) -> float:
        return time.monotonic() - stack.created

    def _failed(self, stack: _Stack) -> bool:
        fail_after = self.timeline.fail_after
        return bool(stack.failure) or (fail_after is not None and self._age(stack) >= fail_after)

    def _stack_events(self, stack: _Stack, answer: bytes) -> bytes:
        if self._failed(stack):
            answer = answer.replace(b"<StackEvents>", b"<StackEvents>" + _failed_event(stack), 1)
        if not stack.token:
            return answer
        # Every event of the creation carries the token of the CreateStack that started it.
        carried = f"<ClientRequestToken>{stack.token}</ClientRequestToken>".encode()

        def tag(member: re.Match[bytes]) -> bytes:
            if b"<ResourceStatus>CREATE_" not in member[0]:
                return member[0]
            return member[0].replace(b"<member>", b"<member>" + carried, 1)

        return re.sub(rb"<member>.*?</member>", tag, answer, flags=re.S)

    def _launched_only(self, answer: bytes) -> bytes:
        """EC2's answer without the instances of stacks younger than `instance_after`."""
        if b"aws:cloudformation:stack-" not in answer:
            return answer
        root = ElementTree.fromstring(answer)
        hidden = False
        for reservations in [e for e in root if _local(e.tag) == "reservationSet"]:
            for reservation in list(reservations):
                for instances in [e for e in reservation if _local(e.tag) == "instancesSet"]:
                    for instance in list(instances):
                        if self._not_launched_yet(instance):
                            instances.remove(instance)
                            hidden = True
                    if not len(instances):
                        reservations.remove(reservation)
        if not hidden:
            return answer
        ElementTree.register_namespace("", root.tag[1:].split("}")[0])  # as EC2 writes it
        written: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
        return written

    def _not_launched_yet(self, instance: ElementTree.Element) -> bool:
        tags = [
            {_local(e.tag): e.text or "" for e in item}
            for tag_set in instance
            if _local(tag_set.tag) == "tagSet"
            for item in tag_set
        ]
        values = {t.get("key", ""): t.get("value", "") for t in tags}
        name = values.get("aws:cloudformation:stack-id") or values.get(
            "aws:cloudformation:stack-name", ""
        )
        stack = self._known(name) if name else None
        return stack is not None and self._age(stack) < self.timeline.instance_after

    def _resource_status(self, stack: _Stack, answer: bytes) -> bytes:
        """The instance's status as CloudFormation reports it while the stack is creating."""
        if self._failed(stack):
            shown = b"CREATE_FAILED"
        elif self._age(stack) < self.timeline.complete_after:
            shown = b"CREATE_IN_PROGRESS"
        else:
            return answer

        def status(member: re.Match[bytes]) -> bytes:
            if f"<LogicalResourceId>{INSTANCE}</LogicalResourceId>".encode() not in member[0]:
                return member[0]
            return re.sub(
                rb"<ResourceStatus>CREATE_COMPLETE</ResourceStatus>",
                b"<ResourceStatus>" + shown + b"</ResourceStatus>",
                member[0],
            )

        pattern = rb"<(StackResourceDetail|member)>.*?</\1>"
        return re.sub(pattern, status, answer, flags=re.S)

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


def _code(status: int, answer: bytes) -> str:
    """'moto' for moto's success, else the error code it answered with."""
    found = re.search(rb"<Code>([^<]+)</Code>", answer) if status >= 300 else None
    return found[1].decode() if found else "moto"


def _parameter(params: dict[str, str], key: str) -> str:
    """A stack parameter's value from a CreateStack's query parameters ('' if not given)."""
    for name, value in params.items():
        if (
            name.startswith("Parameters.member.")
            and name.endswith(".ParameterKey")
            and value == key
        ):
            return params.get(name.replace(".ParameterKey", ".ParameterValue"), "")
    return ""


def _stack_id_of(member: bytes) -> str:
    found = re.search(rb"<StackId>([^<]+)</StackId>", member)
    return found[1].decode() if found else ""


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _stack_member(stack: _Stack, status: str) -> str:
    return (
        f"<member><StackId>{stack.stack_id}</StackId><StackName>{stack.name}</StackName>"
        f"<CreationTime>{_stamp()}</CreationTime><StackStatus>{status}</StackStatus></member>"
    )


def _event(stack: _Stack, resource: str, kind: str, status: str, reason: str = "") -> str:
    token = f"<ClientRequestToken>{stack.token}</ClientRequestToken>" if stack.token else ""
    said = f"<ResourceStatusReason>{escape(reason)}</ResourceStatusReason>" if reason else ""
    return (
        f"<member>{token}<StackId>{stack.stack_id}</StackId><StackName>{stack.name}</StackName>"
        f"<EventId>{uuid.uuid4()}</EventId><LogicalResourceId>{resource}</LogicalResourceId>"
        f"<ResourceType>{kind}</ResourceType><Timestamp>{_stamp()}</Timestamp>"
        f"<ResourceStatus>{status}</ResourceStatus>{said}</member>"
    )


def _query_answer(action: str, result: str) -> bytes:
    return (
        f'<{action}Response xmlns="{CLOUDFORMATION_XMLNS}"><{action}Result>{result}'
        f"</{action}Result><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId>"
        f"</ResponseMetadata></{action}Response>"
    ).encode()


def _not_there_yet(stack_name: str) -> bytes:
    return _error("ValidationError", f"Resource {INSTANCE} does not exist for stack {stack_name}")


def _error(code: str, message: str, *, xmlns: str = "") -> bytes:
    opening = f'<ErrorResponse xmlns="{xmlns}">' if xmlns else "<ErrorResponse>"
    return (
        f"{opening}<Error><Type>Sender</Type><Code>{code}</Code>"
        f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId>"
        "</ErrorResponse>"
    ).encode()


def _failed_event(stack: _Stack) -> bytes:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    reason = xml.sax.saxutils.escape(stack.failure or FAIL_REASON)
    return (
        f"<member><StackName>{stack.name}</StackName><EventId>{uuid.uuid4()}</EventId>"
        f"<LogicalResourceId>{INSTANCE}</LogicalResourceId>"
        f"<PhysicalResourceId>i-timed</PhysicalResourceId>"
        f"<ResourceType>AWS::EC2::Instance</ResourceType><Timestamp>{stamp}</Timestamp>"
        f"<ResourceStatus>CREATE_FAILED</ResourceStatus>"
        f"<ResourceStatusReason>{reason}</ResourceStatusReason></member>"
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


def _local(tag: str) -> str:
    """An XML element's name without its namespace."""
    return tag.rsplit("}", 1)[-1]
