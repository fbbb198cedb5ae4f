"""One electron's life: plan, template, stack, host, task, teardown. Holds no Covalent code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib.metadata
import json
import math
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import cloudpickle

from cdk_stacks.parameters import StackParameters
from cdk_stacks.templates import template_for
from ec2_executor import provision, redact
from ec2_executor.access import ClientIdentity, KeyPair, client_identity
from ec2_executor.aws import AWS
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
from ec2_executor.phases import Phases
from ec2_executor.remote import DEFAULT_KEEPALIVE, Endpoint, Keepalive, RemoteHost
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


def version(dist: str) -> str:
    return importlib.metadata.version(dist)


@dataclass(frozen=True)
class TaskOutcome:
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    traceback: str = ""
    error: str = ""
    """What went wrong on the instance, with the exception's type, or empty."""


class Electron:
    """The cloud resources and connection of one electron, created and removed in order."""

    def __init__(
        self,
        options: Options,
        task_metadata: dict[str, Any],
        *,
        keepalive: Keepalive = DEFAULT_KEEPALIVE,
    ) -> None:
        self.options = options
        self.keepalive = keepalive
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
        with self.phases.phase("create stack"):
            self._create_call = submit_blocking(
                self.stacks.create,
                self.name,
                template=template,
                parameters=parameters.to_cloudformation(declared=_declared(template)),
                tags=stack_tags(
                    dispatch_id=self.dispatch_id,
                    node_id=self.node_id,
                    version=version("ec2-executor"),
                    instance_type=self.options.instance_type,
                    extra=self.options.tags,
                ),
                timeout_minutes=max(5, math.ceil(self.options.provision_timeout / 60)),
            )
            self._stack_id = await asyncio.wrap_future(self._create_call)
        with self.phases.phase("wait for stack"):
            self.outputs = await wait_for_creation(
                self.stacks,
                self._stack_id,
                self.name,
                deadline=self.deadline,
                events=self.events,
            )

    def _plan(self) -> tuple[NetworkPlan, StackParameters]:
        """Every check that can refuse the options, before anything is created."""
        options, ec2 = self.options, self.aws.ec2
        self._identity = client_identity(options.key_file)
        self.aws.check_credentials()
        arch = provision.architecture(ec2, options)
        image = provision.image(ec2, options, arch)
        key_name = provision.key_pair_name(ec2, options)
        plan = plan_network(ec2, options)
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
            UseSpot=options.spot,
            InstanceProfile=options.instance_profile,
            ExpectPublicIp=plan.public_ip,
            VpcId=plan.vpc_id,
            SubnetId=plan.subnet_id,
        )

    # --- run ------------------------------------------------------------------------------

    async def run_task(self, task: tuple[Any, list[Any], dict[str, Any]]) -> TaskOutcome:
        remote = await self._connect()
        # One command waits for the bootstrap, then runs the task; it reports how long the
        # wait took, and the phases split that off as "bootstrap".
        with self.phases.phase("upload, run, fetch"):
            payload = cloudpickle.dumps(task)
            done = await run_blocking(
                remote.run_task,
                payload,
                remote_dir=f"{self.options.remote_cache.rstrip('/')}/{self.name}",
                bootstrap_timeout=self.deadline.remaining,
            )
            envelope = cloudpickle.loads(done.envelope)
        self.phases.split("upload, run, fetch", "bootstrap", done.bootstrap_wait)
        return TaskOutcome(
            result=envelope["result"],
            stdout=envelope["stdout"],
            stderr=envelope["stderr"],
            traceback=envelope["traceback"],
            error=envelope["error"],
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
        endpoint = Endpoint(
            host=host,
            port=self.options.ssh_port,
            user=self.options.username,
            name=f"instance {self.outputs.instance_id} of stack {self.name!r} ({host})",
        )
        self.remote = RemoteHost(
            endpoint, self._identity, self.host_key.public_key(), keepalive=self.keepalive
        )
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

    async def instance_gone(self) -> ConnectionLostError | None:
        """The error to fail with when the instance is no longer running (None: it runs, or is
        not known yet)."""
        if self.outputs is None:
            return None
        state = await run_blocking(self._instance_state)
        return None if state in ("pending", "running") else self._instance_gone(state)

    def _instance_gone(self, state: str) -> ConnectionLostError:
        instance = self.outputs.instance_id if self.outputs else "?"
        return ConnectionLostError(
            f"Instance {instance} of stack {self.name!r} is {state}: it went away before the task "
            f"ended (a spot interruption, 'max_lifetime_minutes' reached, or stopped by hand?)."
        )

    def _instance_state(self) -> str:
        assert self.outputs is not None
        found = self.aws.ec2.describe_instances(InstanceIds=[self.outputs.instance_id])
        instances = [i for r in found["Reservations"] for i in r["Instances"]]
        return str(instances[0]["State"]["Name"]) if instances else "gone"

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
