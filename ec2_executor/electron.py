"""One electron as a pipeline of typed steps. Holds no Covalent code.

    Options ──plan──> Plan ──stack_parameters──> StackParameters ──launch──> Launched
            ──new_host──> Host ──run_task (connects the host unless launch did)──> TaskOutcome
    teardown: Electron.destroy(launched, host)

`plan` checks everything it can before anything is created; `stack_parameters` is pure;
`launch` creates the stack and returns once its instance answers SSH or the stack is complete
(Covalent's setup), while the stack goes on completing in `Launched.completion`; `run_task` is
Covalent's run. Until then, a capacity failure (the launch refused, or the instance lost after
it had its address) moves the electron to the next zone (`capacity.first_that_fits`); after
it, a stack that fails before the task's result is in fails the electron. Each step returns
what the next one needs; `Electron` holds the electron's identity and the in-flight
`CreateStack`, which teardown must wait for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import cloudpickle

from cdk_stacks.parameters import StackParameters, tag_parameters
from cdk_stacks.user_data import USER_DATA_LIMIT, user_data_size
from ec2_executor import owner, redact, spot
from ec2_executor.access import ClientIdentity, KeyPair
from ec2_executor.blocking import Deadline, poll, run_blocking, submit_blocking
from ec2_executor.cloud import capacity, lookups
from ec2_executor.cloud.aws import AWS, account_key, error_code
from ec2_executor.cloud.instances import LIVE_STATES, Instance, Instances, instance_seen
from ec2_executor.cloud.lookups import Plan
from ec2_executor.cloud.permissions import ACCESS_DENIED
from ec2_executor.cloud.slots import Slots, slots_for
from ec2_executor.cloud.stacks import (
    DELETE_TIMEOUT,
    TAG_RATE,
    EventLog,
    StackOutputs,
    Stacks,
    creation_progress,
    delete_and_wait,
    delete_stack,
    request_token,
    stack_name,
    stack_tags,
    stack_template,
    wait_for_creation,
)
from ec2_executor.cost import budget as budgets
from ec2_executor.cost import prices, record
from ec2_executor.cost.meter import Meter
from ec2_executor.errors import (
    BudgetSpentError,
    ConfigurationError,
    ConnectionLostError,
    EC2ExecutorError,
    RemoteError,
    SpotInterruptionError,
    StackCreationError,
    StackDeletionError,
    TemplateError,
    VcpuLimitError,
)
from ec2_executor.logs import log
from ec2_executor.options import Options
from ec2_executor.phases import Phases
from ec2_executor.remote import (
    DEFAULT_KEEPALIVE,
    RUN_TASK,
    Endpoint,
    Keepalive,
    RemoteHost,
    TaskRun,
    run_probe,
    shell_path,
)

T = TypeVar("T")

LOOK_DEADLINE = 20.0
"""How long one look at the instance may retry (throttling, expired credentials) before the
task goes on unjudged; the watcher looks again a few seconds later."""
LOOK_EVERY = 5.0
"""Seconds between two looks at a launching instance while its SSH does not answer."""


@dataclass(frozen=True)
class Pace:
    """How eagerly an electron goes for its instance. The defaults are the product's; the
    benchmarks pass others to measure what each choice is worth."""

    connect_before_complete: bool = True
    """Connect once the instance has an address, rather than at CREATE_COMPLETE."""
    probe_timeout: float = 2.0
    """TCP connect timeout of an SSH probe: a booting instance drops SYNs rather than refusing."""
    probe_ceiling: float = 1.0
    """The longest pause between SSH probes: a probe costs little, a late one costs a second."""


@dataclass(frozen=True)
class TaskOutcome:
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    traceback: str = ""
    error: str = ""
    """What went wrong on the instance, with the exception's type, or empty."""


@dataclass(frozen=True)
class Launched:
    """What setup hands to run: the stack's outputs and how to log in, under one deadline."""

    outputs: StackOutputs
    identity: ClientIdentity
    deadline: Deadline
    completion: asyncio.Future[StackOutputs] | None = None
    """The stack's wait for CREATE_COMPLETE, which goes on while the task starts; None once
    the stack completed before it was handed over."""
    host: Host | None = None
    """The connection `launch` opened once the instance answered SSH (None on a warm
    instance, whose host the lease holds)."""

    def raise_if_stack_failed(self, host: Host) -> None:
        """Once the stack has failed: close the host's connection (ending a command that waits
        on it) and raise the stack's `StackCreationError`; a no-op before."""
        failure = _failure(self.completion)
        if failure is not None:
            host.close()
            raise failure


@dataclass(eq=False)
class Host:
    """The instance as the run sees it: its SSH connection, and the task's command while it
    runs. Whoever stops the task (`stop`) is handed this, so it can end the command."""

    remote: RemoteHost
    task_dir: str
    """The task's own directory on the instance (removed once its result is fetched)."""
    command: asyncio.Future[TaskRun] | None = None
    reusable: bool = False
    """The task's process ended and the connection is sound: the instance may serve again."""

    def close(self) -> None:
        """Close the connection, which ends a command that is waiting on it."""
        self.remote.close()


@dataclass(frozen=True)
class ExistingStack:
    """A stack whose instance the electron runs on instead of creating its own."""

    name: str
    host_key: KeyPair
    ends_at: float
    """`time.monotonic()` when the instance's lifetime watchdog ends it."""
    rate: prices.Rate | None = None
    """What the instance costs per hour, for the electrons that use it."""
    budget: budgets.Budget | None = None


class Electron:
    """One electron's identity, and what teardown needs: the stack's name and the in-flight
    `CreateStack`. `on` an existing stack, the stack and its host key are that stack's."""

    def __init__(
        self,
        options: Options,
        task_metadata: dict[str, Any],
        *,
        on: ExistingStack | None = None,
        pace: Pace | None = None,
        keepalive: Keepalive = DEFAULT_KEEPALIVE,
    ) -> None:
        self.options = options
        self.pace = pace or Pace()
        self.keepalive = keepalive
        self.dispatch_id = str(task_metadata["dispatch_id"])
        self.node_id = task_metadata["node_id"]
        self.task_name = stack_name(self.dispatch_id, self.node_id)
        """This electron's own name (its task directory), even on another electron's stack."""
        self.name = on.name if on else self.task_name
        """The stack the electron runs on."""
        self.phases = Phases(self.task_name)
        self.events = EventLog(self.name)
        self.host_key = on.host_key if on else KeyPair.generate(comment="ec2-executor-host")
        redact.hide(self.host_key.private_base64())  # until the stack is gone
        self.ends_at = on.ends_at if on else time.monotonic() + options.max_lifetime_minutes * 60
        """When the instance's lifetime watchdog ends it, at the latest."""
        self.placed: capacity.Attempt | None = None
        """Where the stack's instance was launched (zone and market); None on an existing one."""
        self.notice: spot.Notice | None = None
        """The spot interruption notice the instance relayed, once one came."""
        self.meter = Meter()
        """The instance's cost while this electron uses it (on a warm one, from now)."""
        self.budget = on.budget if on else None
        """The checked `budget_usd` the instance's lifetime was set from, if any."""
        if on is not None:
            self.meter.start(on.rate)
        self._create_call: concurrent.futures.Future[str] | None = None
        self._holds_slot = False
        if on is not None:  # teardown deletes that stack by name if it is not kept
            self._create_call = concurrent.futures.Future()
            self._create_call.set_result(on.name)

    @functools.cached_property
    def aws(self) -> AWS:
        """The electron's one gateway to AWS, made on first use (its clients are shared by the
        process)."""
        return AWS(self.options)

    @functools.cached_property
    def slots(self) -> Slots:
        """The process's instance slots for the account and region (the cap, the queue)."""
        return slots_for(account_key(self.options))

    async def take_slot(self) -> None:
        """Wait for a slot under the process's cap; nothing is created before."""
        await self.slots.take(self.name)
        self._holds_slot = True

    async def retake_slot(self, refused: VcpuLimitError) -> None:
        """After the launch met the vCPU quota (its stack removed): wait for another electron
        of the process to end, or raise at once when none holds an instance."""
        self._holds_slot = False
        await self.slots.retake(self.name, on_quota=lambda: _quota_error(self, refused))
        self._holds_slot = True

    def give_back_slot(self) -> None:
        """The electron's instance is gone (or no longer its own): its slot goes to the next."""
        if self._holds_slot:
            self._holds_slot = False
            self.slots.give_back()

    def forget_stack(self) -> None:
        """The stack was deleted already (a refused launch): teardown has nothing to delete."""
        self._create_call = None

    def job_handle(self) -> dict[str, Any]:
        """All a fresh executor needs to cancel this electron (Covalent rebuilds it to cancel)."""
        return {"stack_name": self.name, "region": self.options.region}

    @property
    def stacks(self) -> Stacks:
        return Stacks(self.aws.cloudformation)

    async def create_stack(self, template: str, parameters: StackParameters) -> str:
        """Send `CreateStack`; the call runs on even if this coroutine is cancelled, and
        teardown waits for it, so no stack can appear after its deletion."""
        owner.leave_note()  # so a later process here can prove this one gone
        tags = stack_tags(
            dispatch_id=self.dispatch_id,
            node_id=self.node_id,
            version=importlib.metadata.version("ec2-executor"),
            instance_type=self.options.instance_type,
            extra=self.options.tags,
        )
        # The launch template copies the stack's tags to what the launch creates.
        parameters = StackParameters(
            **{**parameters, **tag_parameters([(t["Key"], t["Value"]) for t in tags])}
        )
        hourly = self.meter.rate.usd_per_hour if self.meter.rate else None
        if hourly is not None:  # for `ec2-executor list`
            tags = [*tags, {"Key": TAG_RATE, "Value": f"{hourly:.6f}"}]
        values = parameters.to_cloudformation(declared=_declared(template))
        check_user_data(template, values, self.options)
        self._create_call = submit_blocking(
            self.stacks.create,
            self.name,
            template=template,
            parameters=values,
            tags=tags,
            timeout_minutes=max(5, math.ceil(self.options.provision_timeout / 60)),
            token=request_token(),  # one per attempt: a capacity failover's is a new stack
            role_arn=self.options.cloudformation_role,
        )
        # Shielded: cancelling a wrapped future cancels the call itself if it has not started.
        return await asyncio.shield(asyncio.wrap_future(self._create_call))

    async def destroy(self, launched: Launched | None, host: Host | None) -> None:
        """Delete whatever setup created, however far it got; say so loudly if it stays."""
        for opened in (host, launched.host if launched else None):
            if opened is not None:
                opened.close()
        if launched is not None and launched.completion is not None:
            launched.completion.cancel()
            _failure(launched.completion)  # retrieved: reported already, or moot by now
        if self._create_call is None:
            redact.unhide(self.host_key.private_base64())
            self.give_back_slot()
            return  # create_stack was never sent
        with contextlib.suppress(EC2ExecutorError):
            # Let an in-flight create_stack land first, or the stack could appear after the
            # delete. Delete by name even when the call failed: a timed-out request may still
            # have created the stack, and deleting a missing stack is a no-op.
            await asyncio.wrap_future(self._create_call)
        if _refused_outright(self._create_call):
            redact.unhide(self.host_key.private_base64())
            self.give_back_slot()
            return  # CloudFormation answered "no": there is no stack to delete or report
        with self.phases.phase("delete stack"):
            try:
                await delete_stack(
                    self.stacks,
                    self.name,
                    events=self.events,
                    wait=self.options.wait_for_deletion,
                    done=self._deleted,
                )
            except StackDeletionError:
                self.give_back_slot()  # reported, with the stack's name: the queue goes on
                raise
        log.info("%s: done (%s; %s)", self.name, self.phases.summary(), self.meter.summary())

    def _deleted(self) -> None:
        """The wait for the stack's deletion ended: the instance's charge ends with it."""
        redact.unhide(self.host_key.private_base64())
        self.give_back_slot()
        background = self.meter.ended is None and not self.options.wait_for_deletion
        self.record_charge()
        if background:
            log.info("%s: deletion verified; %s", self.name, self.meter.summary())

    def record_charge(self) -> None:
        """Stop the meter and add the electron's charge to the local record (once)."""
        if self.meter.started is None or self.meter.ended is not None:
            return
        startup = record.startup_of(self.phases.seconds)
        record.add(
            self.meter.charge(
                kind=record.ELECTRON, stack=self.name, task=self.task_name, startup_seconds=startup
            )
        )

    def budget_spent(self, instance_id: str) -> BudgetSpentError | None:
        """The error to fail with when the budget's lifetime has passed, else None."""
        budget = self.budget
        if budget is None or not budget.limited or time.monotonic() < self.ends_at:
            return None
        return BudgetSpentError(
            f"Stack {self.name!r}: the budget of {budget} was spent: it buys {budget.minutes} "
            f"min, and instance {instance_id} powered itself off at "
            f"{time.strftime('%H:%M:%S UTC', time.gmtime())}, {self.meter.seconds:.0f} s after "
            f"its launch. Raise 'budget_usd' for a longer task."
        )


ON_DEMAND_QUOTA = '"Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"'
SPOT_QUOTA = '"All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"'
"""The Service Quotas names of the vCPU quotas standard instance types count against."""


def _quota_error(electron: Electron, refused: VcpuLimitError) -> VcpuLimitError:
    options = electron.options
    spot = options.spot
    quota = (
        SPOT_QUOTA if spot is True else ON_DEMAND_QUOTA + (f" (spot: {SPOT_QUOTA})" if spot else "")
    )
    return VcpuLimitError(
        f"Stack {electron.name!r}: the launch of {options.instance_type!r} met the account's "
        f"vCPU quota in {options.region}, and no electron of this process holds an instance "
        f"that could free it: other instances use it ({refused}). Raise the quota in the "
        f"Service Quotas console (Amazon Elastic Compute Cloud (Amazon EC2), {quota}, or the "
        f"quota of the instance type's family), or end the instances that use it.",
        stack_name=electron.name,
    )


def _failure(completion: asyncio.Future[StackOutputs] | None) -> BaseException | None:
    if completion is None or not completion.done() or completion.cancelled():
        return None
    return completion.exception()


# --- setup: plan, parameters, stack --------------------------------------------------------


def stack_parameters(options: Options, plan: Plan, host_key: KeyPair) -> StackParameters:
    """The stack's parameter values for this electron (pure)."""
    network = plan.network
    existing = {"VpcId": network.vpc_id, "SubnetId": network.subnet_id} if network.vpc_id else {}
    return StackParameters(
        InstanceType=options.instance_type,
        AuthorizedKey=plan.identity.authorized_key,
        HostKey=host_key.private_base64(),
        SshIngressCidr=network.ingress_cidr,
        PythonVersion=plan.versions.python,
        CovalentVersion=plan.versions.covalent,
        CloudpickleVersion=plan.versions.cloudpickle,
        LatestAmi=plan.image.latest_ami_parameter,
        ImageId=plan.image.image_id,
        RootDeviceName=plan.image.root_device,
        KeyName=plan.key_name,
        VolumeSize=options.volume_size,
        SshPort=options.ssh_port,
        SshUser=options.username,
        MaxLifetimeMinutes=options.max_lifetime_minutes,
        LifetimeLimit="max_lifetime_minutes",
        UseSpot=options.spot_first,  # each capacity attempt sets its own market
        IdleMinutes=options.keep_warm_minutes,
        OrphanMinutes=options.orphan_minutes,
        InstanceProfile=options.instance_profile,
        ExpectPublicIp=network.public_ip,
        **existing,
    )


def check_user_data(template: str, parameters: list[dict[str, str]], options: Options) -> None:
    """Refuse user data over EC2's limit before the stack exists: CloudFormation would take
    the stack and fail only at the instance's launch, minutes later."""
    values = {p["ParameterKey"]: p["ParameterValue"] for p in parameters}
    size = user_data_size(json.loads(template), values)
    if size.total <= USER_DATA_LIMIT:
        return
    name, largest = max(size.by_parameter.items(), key=lambda item: item[1], default=("", 0))
    over = (
        f"The instance's user data would be {size.total} bytes, over EC2's limit of "
        f"{USER_DATA_LIMIT} (before base64)"
    )
    if name == "AuthorizedKey" and options.ssh_key_file:
        raise ConfigurationError(
            f"{over}: the public key of 'ssh_key_file' {options.ssh_key_file!r} takes "
            f"{largest} bytes of it; use a smaller key, such as ed25519, or leave "
            f"'ssh_key_file' empty for a fresh key per electron."
        )
    # No option added much: the instance's own files outgrew the limit.
    raise TemplateError(
        f"{over}, though no stack parameter is large (the largest, {name or 'none'}, is "
        f"{largest} bytes): the instance's own files outgrew it; please report this bug."
    )


async def launch(
    electron: Electron,
    rerun: Callable[[list[capacity.Placement]], list[capacity.Attempt]] | None = None,
) -> Launched:
    """Plan, create the electron's stack, and return once its instance answers SSH or the stack
    is complete; a zone without capacity, found before that, moves the electron to the next
    zone. `rerun` orders the launch attempts of a rerun after a spot reclaim
    (`spot.rerun_order`)."""
    options, phases = electron.options, electron.phases
    with phases.phase("plan"):
        plan = await run_blocking(lookups.plan, electron.aws, options, spread_key=electron.name)
    log.info("%s: image: %s", electron.name, plan.image.why)
    for warning in plan.warnings:
        log.warning("%s: %s", electron.name, warning)
    placements = list(plan.network.placements)
    tried = rerun(placements) if rerun else capacity.attempts(placements, options.spot)
    parameters = stack_parameters(options, plan, electron.host_key)
    with phases.phase("template"):  # and the rates, looked up meanwhile (both cached)
        template, rates = await asyncio.gather(
            run_blocking(stack_template, plan.network.shape),
            run_blocking(market_rates, electron.aws, options, plan, tried),
        )
    if options.budget_usd:  # before anything is created
        parameters = with_budget(electron, parameters, rates)

    async def attempt(where: capacity.Attempt, deadline: Deadline) -> Launched:
        electron.placed = where
        placed = capacity.placed(parameters, where)
        electron.meter.start(rates[where.spot])  # a refused attempt launched nothing
        launched = await _create_and_wait(electron, template, placed, plan.identity, deadline)
        return await _answering(electron, launched)

    async def clear() -> None:  # a refused stack goes, so its name is free for the next try
        with phases.phase("delete stack"):
            await delete_and_wait(
                electron.stacks,
                electron.name,
                deadline=Deadline(DELETE_TIMEOUT),
                events=electron.events,
            )

    with phases.phase("queue"):
        await electron.take_slot()
    while True:  # each attempt's 'provision_timeout' starts after the time in the queue
        try:
            launched = await capacity.first_that_fits(
                tried,
                attempt,
                clear=clear,
                name=electron.name,
                instance_type=options.instance_type,
                provision_timeout=options.provision_timeout,
            )
        except VcpuLimitError as refused:
            await clear()
            electron.forget_stack()
            with phases.phase("queue"):
                await electron.retake_slot(refused)
            continue
        log.info("%s: price %s", electron.name, electron.meter.rate)
        return launched


def market_rates(
    aws: AWS, options: Options, plan: Plan, tried: list[capacity.Attempt]
) -> dict[bool, prices.Rate]:
    """The instance's hourly rate on each market the attempts may use (by `spot`)."""
    zones = {a.placement.zone for a in tried}
    zone = zones.pop() if len(zones) == 1 else ""  # a spot price is per zone: only when one
    return {
        spot: prices.rate(
            aws,
            options.instance_type,
            spot=spot,
            zone=zone,
            volume_gib=options.volume_size,
            public_ip=plan.network.public_ip,
        )
        for spot in {a.spot for a in tried}
    }


def with_budget(
    electron: Electron, parameters: StackParameters, rates: dict[bool, prices.Rate]
) -> StackParameters:
    """The lifetime `budget_usd` buys at the dearest market the attempts may use, or a
    `ConfigurationError` when it cannot pay for the instance's start."""
    options = electron.options
    dearest = max(rates.values(), key=lambda r: r.usd_per_hour or float("inf"))
    budget = budgets.check(options.budget_usd, dearest, options.max_lifetime_minutes)
    electron.budget = budget
    log.info("%s: budget %s: the instance lives %d min", electron.name, budget, budget.minutes)
    if not budget.limited:
        return parameters
    electron.ends_at = min(electron.ends_at, time.monotonic() + budget.minutes * 60)
    return StackParameters(
        **{**parameters, "MaxLifetimeMinutes": budget.minutes, "LifetimeLimit": "budget_usd"}
    )


async def _answering(electron: Electron, launched: Launched) -> Launched:
    """`launched` with its host connected, while the stack is still in progress. A stack that
    fails first (an instance that EC2 terminated for lack of capacity, say) raises its
    `StackCreationError`, with nothing of this attempt left running here. A complete stack's
    instance is running and can no longer fail for capacity: `run_task` connects it."""
    if launched.completion is None:
        return launched
    host = new_host(electron, launched)
    try:
        await _connect(electron, launched, host, check=_lost_for_capacity(electron, launched))
    except BaseException:
        host.close()
        if launched.completion is not None:
            launched.completion.cancel()
            _failure(launched.completion)  # retrieved: the error raised here says it
        raise
    return dataclasses.replace(launched, host=host)


async def _create_and_wait(
    electron: Electron,
    template: str,
    parameters: StackParameters,
    identity: ClientIdentity,
    deadline: Deadline,
) -> Launched:
    electron.events = EventLog(electron.name)  # a failure is this attempt's, not an earlier one's
    with electron.phases.phase("create stack"):
        stack_id = await electron.create_stack(template, parameters)
    with electron.phases.phase("wait for stack"):
        if electron.pace.connect_before_complete:
            outputs, completion = await wait_for_instance(electron, stack_id, deadline)
            return Launched(outputs, identity, deadline, completion)
        outputs = await wait_for_creation(
            electron.stacks, stack_id, electron.name, deadline=deadline, events=electron.events
        )
        return Launched(outputs, identity, deadline)


async def wait_for_instance(
    electron: Electron, stack_id: str, deadline: Deadline
) -> tuple[StackOutputs, asyncio.Future[StackOutputs] | None]:
    """The instance's id and addresses as soon as CloudFormation has launched it, and the wait
    for CREATE_COMPLETE, which goes on (None when the stack had completed already)."""
    stacks, name, events = electron.stacks, electron.name, electron.events
    instances = Instances(electron.aws.ec2)
    need_public = not electron.options.use_private_ip
    completed = False

    async def check() -> StackOutputs | None:
        nonlocal completed
        stack = await creation_progress(stacks, stack_id, name, events)
        if stack is not None:
            completed = True
            return StackOutputs.from_stack(stack)
        found = await instances.launched_by(stack_id)  # read with every other electron's
        return _addressed(found, need_public=need_public)

    outputs = await poll(check, deadline=deadline, ceiling=2.0)
    if outputs is None:
        raise StackCreationError(
            f"Stack {name!r} launched no instance within 'provision_timeout'; raise the option "
            f"or check the stack's events in the CloudFormation console.",
            stack_name=name,
        )
    if completed:
        return outputs, None
    completion = asyncio.ensure_future(
        wait_for_creation(stacks, stack_id, name, deadline=deadline, events=events)
    )
    return outputs, completion


def _addressed(instance: Instance | None, *, need_public: bool) -> StackOutputs | None:
    """The instance's addresses, as the stack's outputs will give them; None until it has the
    address the executor connects to."""
    if instance is None or not instance.private_ip or (need_public and not instance.public_ip):
        return None
    return StackOutputs(
        instance_id=instance.instance_id,
        private_ip=instance.private_ip,
        public_ip=instance.public_ip,
    )


# --- run: connect, task, watch ---------------------------------------------------------------


def endpoint(options: Options, outputs: StackOutputs, stack: str) -> Endpoint:
    """Where to reach sshd: the private or the public address, as the options say."""
    private = options.use_private_ip
    host, kind = (outputs.private_ip, "private") if private else (outputs.public_ip, "public")
    if not host:
        raise RemoteError(
            f"Stack {stack!r} reports no {kind} address for {outputs.instance_id}; "
            f"set use_private_ip=True or use a public subnet."
        )
    return Endpoint(
        host=host,
        port=options.ssh_port,
        user=options.username,
        name=f"instance {outputs.instance_id} of stack {stack!r} ({host})",
    )


def new_host(electron: Electron, launched: Launched) -> Host:
    """The electron's one SSH connection to its instance, pinned to its host key: the one
    `launch` opened, else a new one, which opens in `run_task`."""
    if launched.host is not None:
        return launched.host
    remote = RemoteHost(
        endpoint(electron.options, launched.outputs, electron.name),
        launched.identity,
        electron.host_key.public_key(),
        connect_timeout=electron.pace.probe_timeout,
        keepalive=electron.keepalive,
    )
    return Host(remote=remote, task_dir=task_dir(electron))


def _lost_for_capacity(electron: Electron, launched: Launched) -> Callable[[], Awaitable[None]]:
    """A look at the launching instance, at most every `LOOK_EVERY` seconds, that raises a
    `StackCreationError` once EC2 has terminated it for lack of capacity (its state reason),
    without waiting for CloudFormation to say so."""
    instances, instance_id = Instances(electron.aws.ec2), launched.outputs.instance_id
    next_look = time.monotonic() + LOOK_EVERY

    async def check() -> None:
        nonlocal next_look
        if time.monotonic() < next_look:
            return
        next_look = time.monotonic() + LOOK_EVERY
        try:
            found = await instances.watched(instance_id)  # read with every other electron's
        except EC2ExecutorError as exc:  # no answer is no verdict: look again later
            log.debug("%s: could not look at %s: %s", electron.name, instance_id, exc)
            return
        if found is None or found.live or capacity.refusal(found.state_message) is None:
            return
        raise StackCreationError(
            f"Stack {electron.name!r}: instance {instance_id} is {found.state} before it "
            f"answered SSH: {found.state_message}",
            stack_name=electron.name,
        )

    return check


async def _connect(
    electron: Electron,
    launched: Launched,
    host: Host,
    *,
    check: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Open the host's connection once the instance answers with its pinned key; `check` runs
    before each try (and may raise)."""
    remote, where = host.remote, host.remote.endpoint

    async def attempt() -> bool | None:
        launched.raise_if_stack_failed(host)
        if check is not None:
            await check()
        return await run_blocking(remote.try_connect) or None

    with electron.phases.phase("wait for SSH"):
        ceiling = electron.pace.probe_ceiling
        if await poll(attempt, deadline=launched.deadline, first=0.2, ceiling=ceiling) is None:
            raise ConnectionLostError(
                f"SSH on {where.host}:{where.port} did not answer within "
                f"'provision_timeout'; check that 'ssh_ingress_cidr' covers this machine."
            )


async def run_task(
    electron: Electron,
    launched: Launched,
    host: Host,
    task: tuple[Any, list[Any], dict[str, Any]],
) -> TaskOutcome:
    """Run the task on the instance (connecting first unless the host is connected already);
    one command waits for the bootstrap, then runs it."""
    if not host.remote.is_connected:
        await _connect(electron, launched, host)
    with electron.phases.phase("upload, run, fetch"):
        host.command = asyncio.ensure_future(
            run_blocking(
                host.remote.run_task,
                cloudpickle.dumps(task),
                remote_dir=host.task_dir,
                bootstrap_timeout=launched.deadline.remaining,
                on_line=functools.partial(_heard, electron),
            )
        )
        done = await _unless_the_stack_fails(launched, host)
        envelope = cloudpickle.loads(done.envelope)
        if envelope["error"] and done.notice and done.notice.sigterm_at:
            # It failed once the notice's SIGTERM came: interrupted, not a failure of its own.
            host.reusable = False
            raise SpotInterruptionError(spot.interrupted_task_text(host.remote.where, done.notice))
        # The task's process ended and its result came back whole; one that raised is a failed
        # electron, and a failed electron's instance is not lent again.
        host.reusable = not envelope["error"]
    # The command reports how long it waited for the bootstrap: its own phase.
    electron.phases.split("upload, run, fetch", "bootstrap", done.bootstrap_wait)
    return TaskOutcome(
        result=envelope["result"],
        stdout=envelope["stdout"],
        stderr=envelope["stderr"],
        traceback=envelope["traceback"],
        error=envelope["error"],
    )


def _heard(electron: Electron, line: str) -> None:
    """A line the task's command said while it ran: a spot notice is logged at once (it may be
    the last word from the instance)."""
    notice = spot.notice_in(line)
    if notice is not None and electron.notice is None:
        electron.notice = notice
        log.warning(
            "%s: spot interruption notice: EC2 will %s the instance at %s (noticed at %s); "
            "the task gets SIGTERM 30 s before",
            electron.name,
            notice.action,
            notice.at,
            notice.seen,
        )


async def _unless_the_stack_fails(launched: Launched, host: Host) -> TaskRun:
    """The command's result; a stack that fails meanwhile (it may still be completing) fails
    the electron at once, and closing the connection ends the command."""
    running = host.command
    assert running is not None
    completion = launched.completion
    while not running.done():
        if completion is None or completion.done():
            launched.raise_if_stack_failed(host)
            break
        waits: set[asyncio.Future[Any]] = {running, completion}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    return await running


async def instance_gone(electron: Electron, outputs: StackOutputs) -> ConnectionLostError | None:
    """The error to fail with once the instance no longer runs, else None (for `watch`)."""
    seen = await instance_seen(
        electron.options, outputs.instance_id, deadline=LOOK_DEADLINE, label=electron.name
    )
    if seen is None:  # no definite answer: only a definite one fails a task
        log.warning("%s: the instance's state is unknown; the task goes on", electron.name)
        return None
    state = seen.state
    if state in LIVE_STATES:
        return None
    spent = electron.budget_spent(outputs.instance_id)
    if spent is not None:
        return spent
    if seen.state_reason == spot.RECLAIMED or electron.notice is not None:
        where = f"{outputs.instance_id} of stack {electron.name!r}"
        return SpotInterruptionError(
            spot.reclaimed_text(where, electron.notice, seen.state_reason or state)
        )
    return ConnectionLostError(
        f"Instance {outputs.instance_id} of stack {electron.name!r} is {state}: it went away "
        f"before the task ended (a spot interruption, 'max_lifetime_minutes' reached, or "
        f"stopped by hand?)."
    )


KILL_TIMEOUT = 30.0
"""Seconds the instance has to confirm that a cancelled task's processes are gone."""


async def kill_task(host: Host) -> bool:
    """Kill the task's processes on the instance and wait for its command to end; True when
    the kill is confirmed and the connection is still sound (the instance may serve again)."""
    running = host.command
    if running is None or not host.remote.is_connected:
        return False
    command = f'exec bash "{RUN_TASK}" --kill {shell_path(host.task_dir)}'
    with contextlib.suppress(TimeoutError, EC2ExecutorError):
        status, out = await run_probe(host.remote, command, KILL_TIMEOUT)
        if status == 0 and b"killed" in out:
            await asyncio.wait({running}, timeout=KILL_TIMEOUT)
            return running.done() and host.remote.is_connected
    return False


def task_dir(electron: Electron) -> str:
    """The task's own directory on the instance (removed once its result is fetched)."""
    return f"{electron.options.remote_cache.rstrip('/')}/{electron.task_name}"


# --- teardown helpers ------------------------------------------------------------------------

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
