"""CloudFormation for one electron: naming, create, wait (events to the log), outputs, delete."""

from __future__ import annotations

import hashlib
import math
import re
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cdk_stacks.shape import StackShape
from cdk_stacks.templates import SynthesisError, template_for
from ec2_executor.blocking import Deadline, in_background, poll, run_blocking
from ec2_executor.cloud.aws import aws_errors, throttled
from ec2_executor.cloud.watcher import Answers, rounds_for
from ec2_executor.errors import (
    AWSError,
    StackCreationError,
    StackDeletionError,
    StackError,
    TemplateError,
)
from ec2_executor.logs import log
from ec2_executor.owner import owner_id

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient


DELETE_TIMEOUT = 20 * 60.0
"""Seconds a stack may take to delete before it is reported as left behind."""
THROTTLED_FIRST, THROTTLED_CEILING = 1.0, 30.0
"""Seconds between two tries of a throttled deletion: the first pause, and the longest."""
STACK_PREFIX = "ec2-executor-"
TAG_DISPATCH = "ec2-executor:dispatch-id"
TAG_NODE = "ec2-executor:node-id"
TAG_VERSION = "ec2-executor:version"
TAG_CREATED = "ec2-executor:created-at"
TAG_INSTANCE_TYPE = "ec2-executor:instance-type"
TAG_OWNER = "ec2-executor:owner"
"""The dispatcher process that created the stack (`owner.owner_id()`)."""
_MAX_NAME = 128
_DIGEST = 10
IN_PROGRESS = ("CREATE_IN_PROGRESS", "ROLLBACK_IN_PROGRESS", "DELETE_IN_PROGRESS")
"""The statuses a stack passes through while an electron waits on it: the watcher lists the
account's stacks in these (`ListStacks`), and describes only the watched stacks not among them."""
_FAILED_CREATE = {
    "CREATE_FAILED",
    "ROLLBACK_IN_PROGRESS",
    "ROLLBACK_FAILED",
    "ROLLBACK_COMPLETE",
    "DELETE_IN_PROGRESS",
    "DELETE_COMPLETE",
    "DELETE_FAILED",
}


def stack_name(dispatch_id: str, node_id: int | str) -> str:
    """A valid, deterministic CloudFormation name: readable slug plus a digest for uniqueness."""
    digest = hashlib.sha256(f"{dispatch_id}\0{node_id}".encode()).hexdigest()[:_DIGEST]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{dispatch_id}-{node_id}").strip("-")
    slug = slug[: _MAX_NAME - len(STACK_PREFIX) - _DIGEST - 1].rstrip("-")
    return f"{STACK_PREFIX}{slug}-{digest}" if slug else f"{STACK_PREFIX}{digest}"


def stack_tags(
    *,
    dispatch_id: str,
    node_id: int | str,
    version: str,
    instance_type: str,
    extra: Mapping[str, str],
    owner: str | None = None,
) -> list[dict[str, str]]:
    ours = {
        TAG_DISPATCH: dispatch_id,
        TAG_NODE: str(node_id),
        TAG_VERSION: version,
        TAG_CREATED: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        TAG_INSTANCE_TYPE: instance_type,
        TAG_OWNER: owner or owner_id(),
    }
    return [{"Key": k, "Value": v} for k, v in {**extra, **ours}.items()]


def request_token() -> str:
    """A `ClientRequestToken` for one CreateStack attempt: every retry of the attempt carries
    it, so CloudFormation takes a retry of a call that went through for that same call."""
    return f"ec2-executor-{uuid.uuid4().hex}"


def stack_template(shape: StackShape) -> str:
    """The template body for `shape` (synthesised once, then cached on disk)."""
    try:
        return template_for(shape)
    except SynthesisError as exc:
        raise TemplateError(str(exc)) from exc


@dataclass(frozen=True, kw_only=True)
class StackOutputs:
    instance_id: str
    private_ip: str
    public_ip: str = ""

    @classmethod
    def from_stack(cls, stack: Mapping[str, Any]) -> StackOutputs:
        values = {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])}
        return cls(
            instance_id=values.get("InstanceId", ""),
            private_ip=values.get("PrivateIp", ""),
            public_ip=values.get("PublicIp") or "",
        )


class Stacks:
    """Thin, blocking CloudFormation calls; the waits live in the async functions below."""

    def __init__(self, cloudformation: CloudFormationClient) -> None:
        self.cf = cloudformation

    def create(
        self,
        name: str,
        *,
        template: str,
        parameters: list[dict[str, str]],
        tags: list[dict[str, str]],
        timeout_minutes: int,
        token: str,
    ) -> str:
        """The new stack's id. `token` (from `request_token`) makes a retry of this call safe."""
        try:
            with aws_errors(f"creating stack {name!r}"):
                return str(
                    self.cf.create_stack(
                        StackName=name,
                        TemplateBody=template,
                        Parameters=parameters,  # type: ignore[arg-type]
                        Tags=tags,  # type: ignore[arg-type]
                        OnFailure="DELETE",
                        TimeoutInMinutes=timeout_minutes,
                        ClientRequestToken=token,
                    )["StackId"]
                )
        except AWSError as exc:
            # A retry of a call that went through, answered by a CloudFormation that did not
            # take it for that same call: the stack is still ours if our token created it.
            if exc.code != "AlreadyExistsException":
                raise
            stack_id = self.created_by(name, token)
            if not stack_id:
                raise
            log.info("%s: CreateStack was retried after it went through; the stack is ours", name)
            return stack_id

    def created_by(self, stack: str, token: str) -> str:
        """The stack's id if the CreateStack call that carried `token` created it, else ''."""
        with aws_errors(f"reading the events of {stack!r}"):
            for page in self.cf.get_paginator("describe_stack_events").paginate(StackName=stack):
                for event in page["StackEvents"]:
                    if _created_it(event, token):
                        return str(event["StackId"])
        return ""

    def describe(self, stack: str) -> Mapping[str, Any] | None:
        """The stack (by name or id), or None when it does not exist."""
        try:
            with aws_errors(f"reading stack {stack!r}"):
                found = self.cf.describe_stacks(StackName=stack)["Stacks"]
        except AWSError as exc:
            if exc.code == "ValidationError" and "does not exist" in str(exc):
                return None
            raise
        return found[0] if found else None

    async def watched(self, stack: str) -> Mapping[str, Any] | None:
        """The stack (by name or id) as the process's next round of stack reads finds it, or
        None when it does not exist; while it is in progress, its summary (no outputs)."""
        return await rounds_for(self.cf, "stacks", self.read_many).get(stack)

    def read_many(self, stacks: frozenset[str]) -> Answers[str, Mapping[str, Any]]:
        """Many stacks (by name or id) in few calls: the account's stacks in progress from
        `ListStacks`, then `DescribeStacks` for each watched stack not among them (it has
        completed, failed or gone since: a change, which happens once per stack)."""
        listed: dict[str, Mapping[str, Any]] = {}
        calls = 0
        with aws_errors("listing the stacks in progress"):
            pages = self.cf.get_paginator("list_stacks").paginate(
                StackStatusFilter=list(IN_PROGRESS)  # type: ignore[arg-type]
            )
            for page in pages:
                calls += 1
                for summary in page["StackSummaries"]:
                    listed[summary["StackId"]] = listed[summary["StackName"]] = summary
        found: dict[str, Mapping[str, Any] | Exception | None] = {}
        for stack in stacks:
            if stack in listed:
                found[stack] = listed[stack]
                continue
            calls += 1
            try:
                found[stack] = self.describe(stack)
            except AWSError as exc:
                found[stack] = exc
        return Answers(found, calls=calls)

    def events(self, stack: str) -> list[Mapping[str, Any]]:
        """The most recent events, oldest first."""
        with aws_errors(f"reading the events of {stack!r}"):
            events = self.cf.describe_stack_events(StackName=stack)["StackEvents"]
        return list(reversed(events))

    def delete(self, stack: str) -> None:
        with aws_errors(f"deleting stack {stack!r}"):
            self.cf.delete_stack(StackName=stack)

    def list_ours(self) -> list[Mapping[str, Any]]:
        """Every live stack this executor created, found by its dispatch tag."""
        stacks: list[Mapping[str, Any]] = []
        with aws_errors("listing stacks"):
            for page in self.cf.get_paginator("describe_stacks").paginate():
                stacks += [s for s in page["Stacks"] if tag_value(s, TAG_DISPATCH) is not None]
        return stacks


def _created_it(event: Mapping[str, Any], token: str) -> bool:
    return (
        event.get("ClientRequestToken") == token
        and event.get("ResourceType") == "AWS::CloudFormation::Stack"
        and event.get("ResourceStatus") == "CREATE_IN_PROGRESS"
    )


def tag_value(stack: Mapping[str, Any], key: str) -> str | None:
    return next((t["Value"] for t in stack.get("Tags", []) if t["Key"] == key), None)


class EventLog:
    """Logs each stack event once, with its time since the stack was asked for.

    Events are read when the stack's status changes (`changed`), not at every look: an event
    read late still shows when it happened, from its own timestamp.
    """

    def __init__(self, name: str, logger: Callable[[str], None] = log.info) -> None:
        self.name, self.logger = name, logger
        self.started = time.monotonic()
        self.started_at = time.time()
        self.seen: set[str] = set()
        self.events: list[Mapping[str, Any]] = []
        self.status = ""
        """The stack's status when its events were last read."""

    def worth_reading(self, status: str, *, under_way: str) -> bool:
        """Whether to read the events now: the stack's status changed since the last look (it
        is remembered), to one other than `under_way`, the status of what is waited for. A
        stack still under way has its events read at its next change, with their own times."""
        changed, self.status = status != self.status, status
        return changed and status != under_way

    def record(self, events: list[Mapping[str, Any]]) -> None:
        for event in events:
            if event["EventId"] in self.seen:
                continue
            self.seen.add(event["EventId"])
            self.events.append(event)
            reason = event.get("ResourceStatusReason") or ""
            self.logger(
                f"{self.name} +{self._elapsed(event):.1f}s "
                f"{event['LogicalResourceId']} {event['ResourceStatus']} {reason}".rstrip()
            )

    def _elapsed(self, event: Mapping[str, Any]) -> float:
        stamp = event.get("Timestamp")
        if isinstance(stamp, datetime):
            return max(0.0, stamp.timestamp() - self.started_at)
        return time.monotonic() - self.started

    def first_failure(self) -> str:
        for event in self.events:
            if event["ResourceStatus"].endswith("_FAILED") and event.get("ResourceStatusReason"):
                return f"{event['LogicalResourceId']}: {event['ResourceStatusReason']}"
        return "no resource reported a reason"


async def creation_progress(
    stacks: Stacks, stack_id: str, name: str, events: EventLog
) -> Mapping[str, Any] | None:
    """The stack once CREATE_COMPLETE, else None; raises `StackCreationError` naming the first
    failing resource once it failed. Logs new events on the way."""
    stack = await stacks.watched(stack_id)
    status = stack["StackStatus"] if stack else "DELETE_COMPLETE"
    if events.worth_reading(status, under_way="CREATE_IN_PROGRESS"):
        # The events after the status: a stack that failed between the two reads still names
        # the resource that failed it.
        events.record(await run_blocking(stacks.events, stack_id))
    if status in _FAILED_CREATE:
        raise StackCreationError(
            f"Stack {name!r} failed to create ({status}): {events.first_failure()}",
            stack_name=name,
        )
    return stack if status == "CREATE_COMPLETE" else None


async def wait_for_creation(
    stacks: Stacks, stack_id: str, name: str, *, deadline: Deadline, events: EventLog
) -> StackOutputs:
    async def check() -> Mapping[str, Any] | None:
        return await creation_progress(stacks, stack_id, name, events)

    stack = await poll(check, deadline=deadline)
    if stack is None:
        raise StackCreationError(
            f"Stack {name!r} was not ready within 'provision_timeout'; raise the option or check "
            f"the stack's events in the CloudFormation console.",
            stack_name=name,
        )
    return StackOutputs.from_stack(stack)


async def delete_and_wait(
    stacks: Stacks, name: str, *, deadline: Deadline, events: EventLog, requested: bool = False
) -> None:
    """Delete the stack (unless `requested` already) and wait until it is gone; raise a
    `StackDeletionError` if it stays.

    A DELETE_FAILED stack is deleted again once: what blocked it (an ENI still detaching, say)
    has often cleared by then. Throttling never ends the wait: a throttled read is asked again.
    """

    async def check() -> str | None:
        status = await _deletion_status(stacks, name, events)
        return status if status in ("DELETE_COMPLETE", "DELETE_FAILED") else None

    status: str | None = None
    try:
        for attempt in range(2):
            if attempt or not requested:
                await _until_accepted(stacks, name)
            status = await poll(check, deadline=deadline, jitter=0.2)
            if status != "DELETE_FAILED":
                break
    except AWSError as exc:
        raise _left_behind(name, str(exc)) from exc
    if status != "DELETE_COMPLETE":
        reason = events.first_failure() if status else "deletion did not finish in time"
        raise _left_behind(name, reason)


async def _deletion_status(stacks: Stacks, name: str, events: EventLog) -> str | None:
    """The stack's status ('DELETE_COMPLETE' once it is gone), or None while AWS throttles."""
    try:
        found = await stacks.watched(name)
        if found and events.worth_reading(found["StackStatus"], under_way="DELETE_IN_PROGRESS"):
            events.record(await run_blocking(stacks.events, name))
    except AWSError as exc:
        if not throttled(exc):
            raise
        log.warning("%s: reading the deletion's progress was throttled; reading again", name)
        return None
    return found["StackStatus"] if found else "DELETE_COMPLETE"


async def _until_accepted(stacks: Stacks, name: str) -> None:
    """Send DeleteStack until CloudFormation has it. Throttling is waited out however long it
    lasts, never given up on after a number of tries: a stack not deleted may still bill."""

    async def send() -> bool | None:
        try:
            await run_blocking(stacks.delete, name)
        except AWSError as exc:
            if not throttled(exc):
                raise
            log.warning("%s: DeleteStack was throttled (%s); sending it again", name, exc)
            return None
        return True

    await poll(
        send,
        deadline=Deadline(math.inf),
        first=THROTTLED_FIRST,
        factor=2.0,
        ceiling=THROTTLED_CEILING,
        jitter=0.5,
    )


async def request_deletion(stacks: Stacks, name: str) -> None:
    """Ask CloudFormation to delete the stack; from then on it deletes it without us."""
    try:
        await _until_accepted(stacks, name)
    except AWSError as exc:
        raise _left_behind(name, str(exc)) from exc


async def delete_stack(
    stacks: Stacks, name: str, *, events: EventLog, wait: bool, done: Callable[[], None]
) -> None:
    """Delete the stack; `done` runs once the wait for its deletion ends, however it ends.

    `wait`: return when the stack is gone (one that stays raises `StackDeletionError`).
    Otherwise return once CloudFormation has the request, which it carries out whatever becomes
    of this process: the wait goes on in the background and logs a stack that stays.
    """

    async def deletion(requested: bool) -> None:
        try:
            await delete_and_wait(
                stacks, name, deadline=Deadline(DELETE_TIMEOUT), events=events, requested=requested
            )
        finally:
            done()

    if wait:
        await deletion(requested=False)
        return
    await request_deletion(stacks, name)
    in_background(_logged(deletion(requested=True)))


async def _logged(deletion: Coroutine[Any, Any, None]) -> None:
    try:
        await deletion
    except StackDeletionError as exc:
        log.error("%s", exc)


def _left_behind(name: str, reason: str) -> StackError:
    return StackDeletionError(
        f"Stack {name!r} could not be deleted and may still bill ({reason}); remove it with "
        f"'ec2-executor cleanup --stack {name}' or in the CloudFormation console.",
        stack_name=name,
    )
