"""The module Covalent loads for `executor="ec2"`: `EC2Executor` and its config defaults.

Covalent names the executor after this module ("ec2", config section `[executors.ec2]`) and
accepts only a plugin class defined here. The class orchestrates; the details live one call
down in `electron.py` (the cloud side) and `remote.py` (the SSH side).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from covalent._shared_files.exceptions import TaskCancelledError, TaskRuntimeError
from covalent._shared_files.util_classes import RESULT_STATUS
from covalent.executor.base import AsyncBaseExecutor
from covalent.executor.schemas import TaskUpdate

from ec2_executor import electron as pipeline
from ec2_executor import helper_nodes, spot, sweep, warm
from ec2_executor import options as opts
from ec2_executor.blocking import run_blocking
from ec2_executor.cloud.aws import account_key
from ec2_executor.cloud.slots import slots_for
from ec2_executor.cloud.stacks import stack_name
from ec2_executor.config import config_section
from ec2_executor.electron import Electron, Host, Launched, TaskOutcome, cleanup_from_handle
from ec2_executor.errors import ConnectionLostError, SpotInterruptionError, TaskError
from ec2_executor.logs import log
from ec2_executor.remote import DEFAULT_KEEPALIVE, Keepalive
from ec2_executor.watch import CancelRequested, watched

T = TypeVar("T")

EXECUTOR_PLUGIN_NAME = "EC2Executor"
_EXECUTOR_PLUGIN_DEFAULTS = opts.defaults()


class EC2Executor(AsyncBaseExecutor):
    """Run an electron on a fresh EC2 instance that is created for it and deleted after it.

    Every option of the seed's table is accepted, plus our own; see `options.Options` for each
    one's meaning and default. An option not given here is read from `[executors.ec2]`.
    """

    keepalive: Keepalive = DEFAULT_KEEPALIVE
    """The SSH connection's keepalive: a class attribute, not an option (tests shorten it)."""

    # One electron's values, from setup to teardown (not options: never sent to the server).
    _helper: Callable[..., Any] | None = None
    """Covalent's own helper node, which runs here (None: the user's function)."""
    _lease: warm.Lease
    _electron: Electron
    _launched: Launched
    _host: Host

    def __init__(
        self,
        *,
        profile: str | None = None,
        region: str | None = None,
        credentials_file: str | None = None,
        ssh_key_file: str | None = None,
        instance_type: str | None = None,
        key_name: str | None = None,
        volume_size: int | None = None,
        vpc: str | None = None,
        subnet: str | None = None,
        remote_cache: str | None = None,
        ami: str | None = None,
        username: str | None = None,
        ssh_port: int | None = None,
        ssh_ingress_cidr: str | None = None,
        use_private_ip: bool | None = None,
        create_vpc: bool | None = None,
        spot: bool | str | None = None,
        instance_profile: str | None = None,
        cloudformation_role: str | None = None,
        wait_for_deletion: bool | None = None,
        max_lifetime_minutes: int | None = None,
        provision_timeout: float | None = None,
        tags: dict[str, str] | None = None,
        python_version: str | None = None,
        keep_warm_minutes: int | None = None,
        use_baked_image: bool | None = None,
        orphan_minutes: int | None = None,
        spot_retries: int | None = None,
        budget_usd: float | None = None,
        max_concurrent_instances: int | None = None,
        **kwargs: Any,
    ) -> None:
        explicit = {k: v for k, v in locals().items() if k in opts.OPTION_NAMES}
        section = config_section()
        # The section first: on the server, Covalent passes it as these keywords too.
        opts.report_unknown(section, where="in [executors.ec2]")
        opts.report_unknown(kwargs, where="given as an argument")
        super().__init__(**{k: v for k, v in kwargs.items() if k in opts.BASE_OPTION_NAMES})
        values = opts.resolve(explicit, section)
        # Refuse bad values here, on the client, before anything is sent. Plain attributes:
        # Covalent ships them to the server as JSON (to_dict/from_dict).
        self.__dict__.update(opts.build(values).as_dict())

    def _options(self) -> opts.Options:
        return opts.build(self.__dict__)

    async def execute(
        self,
        function: Any,
        args: list[Any],
        kwargs: dict[str, Any],
        dispatch_id: str,
        results_dir: str,
        node_id: int = -1,
    ) -> Any:
        # Covalent's own helper nodes (item access, collections) run here, without an instance.
        self._helper = helper_nodes.helper_function(function)
        return await super().execute(function, args, kwargs, dispatch_id, results_dir, node_id)

    async def setup(self, task_metadata: dict[str, Any]) -> None:
        if self._helper is not None:
            return
        options = self._options()
        # Before the first await: every electron of a fan-out declares its cap before any of
        # them takes a slot, so that the smallest wins whichever starts first.
        slots_for(account_key(options)).limit(options.max_concurrent_instances)
        if await self._cancel_requested():
            raise TaskCancelledError("The task was cancelled before it started.")
        sweep.sweep_once(options)  # what dead dispatchers left; in the background, once
        label = stack_name(str(task_metadata["dispatch_id"]), task_metadata["node_id"])
        self._lease = lease = await warm.acquire(options, label)
        self._electron = Electron(options, task_metadata, on=lease.stack, keepalive=self.keepalive)
        await self._set_job_handle(self._electron.job_handle())
        launched = lease.launched  # on the leased warm instance, or on a stack of its own:
        if launched is None:
            launch = pipeline.launch(self._electron)
            with _costed(self._electron):
                launched = await self._watched(launch, _not_yet, on_stop=_nothing_to_stop)
        self._launched = launched

    async def run(
        self, function: Any, args: list[Any], kwargs: dict[str, Any], task_metadata: dict[str, Any]
    ) -> Any:
        if self._helper is not None:
            return await self._run_helper(self._helper, args, kwargs)
        if await self._cancel_requested():
            raise TaskCancelledError("The task was cancelled before it started.")
        runs: list[spot.Run] = []
        while True:
            try:
                outcome = await self._run_once((function, args, kwargs))
                break
            except SpotInterruptionError as exc:
                market = self._reclaimed(runs, exc)
            await self._rerun(task_metadata, runs, market)
        with _costed(self._electron):
            return self._report(outcome)

    async def _run_once(self, task: tuple[Any, list[Any], dict[str, Any]]) -> TaskOutcome:
        """One run of the task on the electron's instance, watched."""
        electron, launched, lease = self._electron, self._launched, self._lease
        self._host = host = lease.host(electron) or pipeline.new_host(electron, launched)
        with _costed(electron), lease.running(electron.name):
            try:
                return await self._watched(
                    pipeline.run_task(electron, launched, host, task),
                    functools.partial(pipeline.instance_gone, electron, launched.outputs),
                    on_stop=functools.partial(lease.stop, host),
                )
            except ConnectionLostError as exc:  # the budget's power-off drops the connection
                spent = electron.budget_spent(launched.outputs.instance_id)
                if spent is None:
                    raise
                raise spent from exc

    def _reclaimed(self, runs: list[spot.Run], error: SpotInterruptionError) -> bool:
        """Log the reclaimed run and say on which market the next one goes; raise the final
        error, listing every run, when no rerun is left."""
        electron, options = self._electron, self._electron.options
        where = electron.placed
        runs.append(
            spot.Run(
                zone=where.placement.zone if where else "",
                spot=where.spot if where else options.spot_first,
                reason=spot.run_reason(electron.notice),
                meter=electron.meter,
            )
        )
        reruns = options.reruns_on_reclaim
        market = spot.next_market(options.spot, reruns, runs)
        if market is None:
            raise SpotInterruptionError(
                spot.final_text(electron.name, reruns, runs, str(error))
            ) from error
        log.warning(
            "%s: run %d in %s; the task runs again from the start on a new %s instance "
            "(rerun %d of 'spot_retries' %d): %s",
            electron.name,
            len(runs),
            runs[-1],
            "spot" if market else "on-demand",
            len(runs),
            reruns,
            error,
        )
        return market

    async def _rerun(
        self, task_metadata: dict[str, Any], runs: list[spot.Run], market: bool
    ) -> None:
        """Delete the reclaimed run's stack (waiting: its name is needed again, and nothing of
        it may stay), then launch a new one on `market` (spot: True); a cancel meanwhile ends
        the electron. A failed launch's error lists the runs before it, with their cost."""
        old = self._electron
        old.options = dataclasses.replace(old.options, wait_for_deletion=True)
        await old.destroy(self.__dict__.pop("_launched", None), self.__dict__.pop("_host", None))
        self._lease.instance = None  # a reclaimed warm instance went with its stack
        self._electron = electron = Electron(
            self._options(), task_metadata, keepalive=self.keepalive
        )
        if await self._cancelled():
            raise TaskCancelledError(f"{electron.name} was cancelled before its rerun.")
        await self._set_job_handle(electron.job_handle())
        order = functools.partial(spot.rerun_order, spot=market, runs=runs)
        launch = pipeline.launch(electron, order)
        with _costed(electron, earlier=runs):
            self._launched = await self._watched(launch, _not_yet, on_stop=_nothing_to_stop)
        log.info("%s: the rerun runs in %s", electron.name, electron.placed or "its stack")

    async def _watched(
        self,
        work: Coroutine[Any, Any, T],
        instance_gone: Callable[[], Awaitable[ConnectionLostError | None]],
        *,
        on_stop: Callable[[Exception], Awaitable[None]],
    ) -> T:
        """`work`, ended early by a cancel (TaskCancelledError) or by its instance going away."""
        try:
            return await watched(
                work,
                cancel_requested=self._cancelled,
                instance_gone=instance_gone,
                on_stop=on_stop,
            )
        except CancelRequested as exc:
            raise TaskCancelledError(f"{self._electron.name} was cancelled.") from exc

    def _report(self, outcome: TaskOutcome) -> Any:
        self.task_stdout.write(outcome.stdout)
        self.task_stderr.write(outcome.stderr)
        if not outcome.error:
            return outcome.result
        self.task_stderr.write(outcome.traceback)
        # As on Covalent's own executors: the node FAILED with the task's streams, the remote
        # traceback last in its stderr. Covalent keeps the streams only for TaskRuntimeError.
        raise TaskRuntimeError(f"{outcome.error} (on {self._electron.name}).") from TaskError(
            outcome.error
        )

    async def _run_helper(
        self, helper: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return await run_blocking(helper_nodes.run_here, helper, args, kwargs)
        except Exception as exc:
            self.task_stderr.write(traceback.format_exc())
            raise TaskError(
                f"Covalent's helper node {helper.__name__!r} raised {type(exc).__name__}: {exc}"
            ) from exc

    async def teardown(self, task_metadata: dict[str, Any]) -> None:
        self.__dict__.pop("_helper", None)
        electron: Electron | None = self.__dict__.pop("_electron", None)
        if electron is None:
            return  # setup failed before it could name a stack: nothing was created
        launched = self.__dict__.pop("_launched", None)
        host = self.__dict__.pop("_host", None) or self._lease.host(electron)
        if not await self._lease.release(electron, launched, host):
            await electron.destroy(launched, host)
        else:  # kept warm: no longer an electron's instance
            electron.give_back_slot()

    async def cancel(self, task_metadata: dict[str, Any], job_handle: Any) -> bool:
        """Delete the electron's stack (which terminates the instance and its process); on a
        warm-capable instance, kill the task's process instead and keep the instance."""
        if not job_handle:
            return False
        if await warm.cancel(str(job_handle.get("stack_name", ""))):
            return True
        await cleanup_from_handle(self._options(), job_handle)
        return True

    async def receive(self, task_group_metadata: dict[str, Any], data: Any) -> list[TaskUpdate]:
        """What Covalent asks of a task it cancelled before it started (`data` is None then):
        report each as cancelled. Nothing was created for it, so nothing is deleted."""
        if data is not None:
            raise NotImplementedError(
                f"EC2Executor runs tasks through run(); receive() got {data!r} for "
                f"{task_group_metadata}."
            )
        return [
            TaskUpdate(
                dispatch_id=task_group_metadata["dispatch_id"],
                node_id=node_id,
                status=RESULT_STATUS.CANCELLED,
                assets={},
            )
            for node_id in task_group_metadata["node_ids"]
        ]

    # --- Covalent's server channel: absent when the executor is driven directly -----------

    async def _set_job_handle(self, handle: dict[str, Any]) -> None:
        if getattr(self, "_send_queue", None) is not None:
            await self.set_job_handle(handle)

    async def _cancelled(self) -> bool:
        """Cancelled through this process's `cancel` (a warm task) or Covalent's flag."""
        return self._lease.cancelled.is_set() or await self._cancel_requested()

    async def _cancel_requested(self) -> bool:
        if getattr(self, "_send_queue", None) is None:
            return False
        try:
            return bool(await self.get_cancel_requested())
        except (TimeoutError, RuntimeError) as exc:
            # The server's channel did not answer (it is asked every few seconds): a cancel
            # still deletes the stack, which ends the task; asking again is enough.
            log.warning("Covalent did not say whether the task was cancelled: %r", exc)
            return False


@contextlib.contextmanager
def _costed(electron: Electron, *, earlier: Sequence[spot.Run] = ()) -> Iterator[None]:
    """A failed electron's error ends with what its instance has cost so far, and the runs a
    spot reclaim ended before it."""
    try:
        yield
    except Exception as exc:
        if exc.args and isinstance(exc.args[0], str):
            said = electron.meter.summary()
            if earlier:
                said += f"; before it, {spot.listed(earlier)}"
            exc.args = (f"{exc.args[0]} [{said}]", *exc.args[1:])
        raise


async def _not_yet() -> ConnectionLostError | None:
    """No instance to look at while the stack is being created."""
    return None


async def _nothing_to_stop(reason: Exception) -> None:
    """Setup's work ends when its coroutine is cancelled; teardown deletes what it made."""


def _register_if_missed() -> None:
    """Covalent registers plugins as it is imported. When this module was imported first, it
    saw this module half-loaded (no class yet) and skipped it: register it now."""
    manager = getattr(sys.modules.get("covalent.executor"), "_executor_manager", None)
    if manager is None:
        return  # covalent is importing this module itself and registers it when it is done
    if manager.executor_plugins_map.get("ec2") is not EC2Executor:
        manager._populate_executor_map_from_module(sys.modules[__name__])


_register_if_missed()
