"""One electron's life: plan, template, stack, host, task, teardown. Holds no Covalent code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib.metadata
import json
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import cloudpickle

from cdk_stacks.parameters import StackParameters
from cdk_stacks.templates import template_for
from ec2_executor import capacity, provision, redact, watch
from ec2_executor.access import ClientIdentity, KeyPair, client_identity
from ec2_executor.aws import AWS, error_code
from ec2_executor.blocking import Deadline, poll, run_blocking, submit_blocking
from ec2_executor.errors import (
    ConnectionLostError,
    EC2ExecutorError,
    RemoteError,
    StackDeletionError,
)
from ec2_executor.logs import log
from ec2_executor.network import NetworkPlan, plan_network
from ec2_executor.options import Options
from ec2_executor.permissions import ACCESS_DENIED
from ec2_executor.phases import Phases
from ec2_executor.remote import Endpoint, RemoteHost, TaskRun
from ec2_executor.stack import (
    EventLog,
    StackOutputs,
    Stacks,
    delete_and_wait,
    request_deletion,
    stack_name,
    stack_tags,
    wait_for_creation,
)

DELETE_TIMEOUT = 20 * 60.0
WATCH_INTERVAL = 10.0
WATCH_ANSWER_DEADLINE = 120.0


def version(dist: str) -> str:
    return importlib.metadata.version(dist)


@dataclass(frozen=True)
class TaskOutcome:
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    traceback: str = ""
    cancelled: bool = False


class Electron:
    """The cloud resources and connection of one electron, created and removed in order."""

    def __init__(self, options: Options, task_metadata: dict[str, Any]) -> None:
        self.options = options
        self.dispatch_id = str(task_metadata["dispatch_id"])
        self.node_id = task_metadata["node_id"]
        self.name = stack_name(self.dispatch_id, self.node_id)
        self.phases = Phases(self.name)
        self.events = EventLog(self.name)
        self.deadline = Deadline(options.provision_timeout)
        self.host_key = KeyPair.generate(comment="ec2-executor-host")
        redact.hide(self.host_key.private_base64())  # until the stack is gone
        self.outputs: StackOutputs | None = None
        self.remote: RemoteHost | None = None
        self._aws: AWS | None = None
        self._identity: ClientIdentity | None = None
        self._create_call: concurrent.futures.Future[str] | None = None
        self._stack_id = ""

    def job_handle(self) -> dict[str, Any]:
        """All a fresh executor needs to cancel this electron (Covalent rebuilds it to cancel)."""
        return {"stack_name": self.name, "region": self.options.region}

    @property
    def aws(self) -> AWS:
        if self._aws is None:
            self._aws = AWS(self.options)
        return self._aws

    @property
    def stacks(self) -> Stacks:
        return Stacks(self.aws.cloudformation)

    # --- setup ----------------------------------------------------------------------------

    async def provision(self) -> None:
        with self.phases.phase("plan"):
            plan, parameters = await run_blocking(self._plan)
        with self.phases.phase("template"):
            template = await run_blocking(template_for, plan.shape)
        self.outputs = await capacity.first_that_fits(
            capacity.attempts(plan.placements, self.options.spot),
            lambda attempt: self._launch(template, capacity.placed(parameters, attempt)),
            clear=self._clear_refused,
            name=self.name,
            instance_type=self.options.instance_type,
        )

    async def _launch(self, template: str, parameters: StackParameters) -> StackOutputs:
        self.events = EventLog(self.name)  # a failure is this attempt's, not an earlier one's
        with self.phases.phase("create stack"):
            self._create_call = submit_blocking(
                self.stacks.create,
                self.name,
                template=template,
                parameters=parameters.to_cloudformation(declared=_declared(template)),
                tags=[{"Key": k, "Value": v} for k, v in parameters.Tags],
                timeout_minutes=max(5, math.ceil(self.options.provision_timeout / 60)),
            )
            self._stack_id = await asyncio.wrap_future(self._create_call)
        with self.phases.phase("wait for stack"):
            return await wait_for_creation(
                self.stacks,
                self._stack_id,
                self.name,
                deadline=self.deadline,
                events=self.events,
            )

    async def _clear_refused(self) -> None:
        """Remove a stack whose launch was refused, so its name is free for the next try."""
        with self.phases.phase("delete stack"):
            await delete_and_wait(
                self.stacks, self.name, deadline=self.deadline, events=self.events
            )

    def _plan(self) -> tuple[NetworkPlan, StackParameters]:
        """Every check that can refuse the options, before anything is created."""
        options, ec2 = self.options, self.aws.ec2
        self._identity = client_identity(options.key_file)
        self.aws.check_credentials()
        arch = provision.architecture(ec2, options)
        image = provision.image(ec2, options, arch)
        key_name = provision.key_pair_name(ec2, options)
        plan = plan_network(ec2, options, spread_key=self.name)
        tags = stack_tags(
            dispatch_id=self.dispatch_id,
            node_id=self.node_id,
            version=version("ec2-executor"),
            instance_type=options.instance_type,
            extra=options.tags,
        )
        return plan, StackParameters(
            InstanceType=options.instance_type,
            AuthorizedKey=self._identity.authorized_key,
            HostKey=self.host_key.private_base64(),
            SshIngressCidr=plan.ingress_cidr,
            PythonVersion=options.python_version,
            CovalentVersion=version("covalent"),
            CloudpickleVersion=version("cloudpickle"),
            LatestAmi=image.latest_ami_parameter,
            ImageId=image.image_id,
            RootDeviceName=image.root_device,
            KeyName=key_name,
            VolumeSize=options.volume_size,
            SshPort=options.ssh_port,
            SshUser=options.username,
            MaxLifetimeMinutes=options.max_lifetime_minutes,
            InstanceProfile=options.instance_profile,
            ExpectPublicIp=plan.public_ip,
            VpcId=plan.vpc_id,
            SubnetId=plan.subnet_id,
            Tags=tuple((tag["Key"], tag["Value"]) for tag in tags),
        )

    # --- run ------------------------------------------------------------------------------

    async def run_task(
        self,
        task: tuple[Any, list[Any], dict[str, Any]],
        *,
        cancel_requested: Callable[[], Awaitable[bool]],
    ) -> TaskOutcome:
        remote = await self._connect()
        # One command waits for the bootstrap, then runs the task; it reports how long the
        # wait took, and the phases split that off as "bootstrap".
        with self.phases.phase("upload, run, fetch"):
            payload = cloudpickle.dumps(task)
            running = asyncio.ensure_future(
                run_blocking(
                    remote.run_task,
                    payload,
                    remote_dir=f"{self.options.remote_cache.rstrip('/')}/{self.name}",
                    bootstrap_timeout=self.deadline.remaining,
                )
            )
            stopped = await self._watch(running, cancel_requested)
            if stopped is not None:
                return stopped
            done = running.result()
            envelope = cloudpickle.loads(done.envelope)
        self.phases.split("upload, run, fetch", "bootstrap", done.bootstrap_wait)
        return TaskOutcome(
            result=envelope["result"],
            stdout=envelope["stdout"],
            stderr=envelope["stderr"],
            traceback=envelope["traceback"],
        )

    async def _connect(self) -> RemoteHost:
        assert self.outputs is not None and self._identity is not None
        private = self.options.use_private_ip
        host, kind = (
            (self.outputs.private_ip, "private") if private else (self.outputs.public_ip, "public")
        )
        if not host:
            raise RemoteError(
                f"Stack {self.name!r} reports no {kind} address for {self.outputs.instance_id}; "
                f"set use_private_ip=True or use a public subnet."
            )
        endpoint = Endpoint(host=host, port=self.options.ssh_port, user=self.options.username)
        self.remote = RemoteHost(endpoint, self._identity, self.host_key.public_key())
        remote = self.remote

        async def attempt() -> bool | None:
            try:
                await run_blocking(remote.connect)
                return True
            except (OSError, EOFError) as exc:  # not up yet; RemoteError means "never"
                log.debug("%s: SSH not up yet: %s", self.name, exc)
                return None

        with self.phases.phase("wait for SSH"):
            if await poll(attempt, deadline=self.deadline, first=0.2, ceiling=3.0) is None:
                raise ConnectionLostError(
                    f"SSH on {host}:{self.options.ssh_port} did not answer within "
                    f"'provision_timeout'; check that 'ssh_ingress_cidr' covers this machine."
                )
        return remote

    async def _watch(
        self, running: asyncio.Future[TaskRun], cancel_requested: Callable[[], Awaitable[bool]]
    ) -> TaskOutcome | None:
        """Wait for the task; stop early if it is cancelled or its instance goes away.

        Returns None when the task finished (its result is in `running`), an outcome when it
        was cancelled; raises `ConnectionLostError` naming the instance when it went away.
        """
        while True:
            done, _ = await asyncio.wait({running}, timeout=WATCH_INTERVAL)
            lost = done and isinstance(running.exception(), ConnectionLostError)
            if done and not lost:
                return None
            if await cancel_requested():
                self.close_connection()
                return TaskOutcome(cancelled=True)
            look = asyncio.ensure_future(self._instance_state())
            if not done:  # a look may retry for a while: the task's end must not wait for it
                either: set[asyncio.Future[Any]] = {running, look}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if not look.done():
                    look.cancel()
                    continue
            state = await look
            if state is None:
                log.warning("%s: the instance's state is unknown; the task goes on", self.name)
            elif state not in ("pending", "running"):
                self.close_connection()
                raise self._instance_gone(state) from running.exception() if done else None
            if lost:
                return None  # the instance lives: the connection error itself is the story

    def _instance_gone(self, state: str) -> ConnectionLostError:
        instance = self.outputs.instance_id if self.outputs else "?"
        return ConnectionLostError(
            f"Instance {instance} of stack {self.name!r} is {state}: it went away while the task "
            f"ran (a spot interruption, 'max_lifetime_minutes' reached, or stopped by hand?)."
        )

    async def _instance_state(self) -> str | None:
        assert self.outputs is not None
        return await watch.instance_state(
            self.options, self.outputs.instance_id, deadline=WATCH_ANSWER_DEADLINE, label=self.name
        )

    # --- teardown -------------------------------------------------------------------------

    def close_connection(self) -> None:
        if self.remote is not None:
            self.remote.close()

    async def destroy(self) -> None:
        """Delete whatever setup created, however far it got; say so loudly if it stays."""
        self.close_connection()
        if self._create_call is None:
            redact.unhide(self.host_key.private_base64())
            return  # create_stack was never sent
        with contextlib.suppress(EC2ExecutorError):
            # Let an in-flight create_stack land first, or the stack could appear after the
            # delete. Delete by name even when the call failed: a timed-out request may still
            # have created the stack, and deleting a missing stack is a no-op.
            await asyncio.wrap_future(self._create_call)
        if _refused_outright(self._create_call):
            redact.unhide(self.host_key.private_base64())
            return  # CloudFormation answered "no": there is no stack to delete or report
        stacks = self.stacks

        async def deletion(requested: bool = False) -> None:
            try:
                await delete_and_wait(
                    stacks,
                    self.name,
                    deadline=Deadline(DELETE_TIMEOUT),
                    events=self.events,
                    requested=requested,
                )
            finally:
                redact.unhide(self.host_key.private_base64())

        with self.phases.phase("delete stack"):
            if self.options.wait_for_deletion:
                await deletion()
            else:
                # Once CloudFormation has the request it deletes the stack whatever becomes of
                # this process; the electron need not wait the minute that takes. The wait
                # goes on in the background and reports a stack that stays.
                await request_deletion(stacks, self.name)
                _in_background(_report_failure(deletion(requested=True)))
        log.info("%s: done (%s)", self.name, self.phases.summary())


_BACKGROUND: set[asyncio.Task[None]] = set()


def _in_background(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(_BACKGROUND.discard)


async def _report_failure(deletion: Coroutine[Any, Any, None]) -> None:
    try:
        await deletion
    except StackDeletionError as exc:
        log.error("%s", exc)


# CreateStack errors after which no stack exists (unlike a timeout, or AlreadyExists).
_NOT_CREATED = ACCESS_DENIED | {
    "ValidationError",
    "LimitExceededException",
    "InsufficientCapabilitiesException",
}


def _refused_outright(create_call: concurrent.futures.Future[str]) -> bool:
    failure = create_call.exception()
    return failure is not None and error_code(failure) in _NOT_CREATED


def _declared(template: str) -> frozenset[str]:
    return frozenset(json.loads(template).get("Parameters", {}))


async def cleanup_from_handle(options: Options, job_handle: dict[str, Any]) -> None:
    """Delete the stack named in a job handle (for cancel, from a freshly built executor)."""
    region = job_handle.get("region") or options.region
    aws = AWS(dataclasses.replace(options, region=region))
    name = str(job_handle["stack_name"])
    await delete_and_wait(
        Stacks(aws.cloudformation),
        name,
        deadline=Deadline(DELETE_TIMEOUT),
        events=EventLog(name),
    )
