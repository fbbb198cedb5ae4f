"""The module Covalent loads for `executor="ec2"`: `EC2Executor` and its config defaults.

Covalent names the executor after this module ("ec2", config section `[executors.ec2]`) and
accepts only a plugin class defined here. The class orchestrates; the details live one call
down in `electron.py` (the cloud side) and `remote.py` (the SSH side).
"""

from __future__ import annotations

import sys
from typing import Any

from covalent._shared_files.exceptions import TaskCancelledError, TaskRuntimeError
from covalent.executor.base import AsyncBaseExecutor

from ec2_executor import electron as pipeline
from ec2_executor import options as opts
from ec2_executor import warm
from ec2_executor.config import config_section
from ec2_executor.electron import Electron, Launched, TaskOutcome, cleanup_from_handle
from ec2_executor.errors import EC2ExecutorError

EXECUTOR_PLUGIN_NAME = "EC2Executor"
_EXECUTOR_PLUGIN_DEFAULTS = opts.defaults()


class EC2Executor(AsyncBaseExecutor):
    """Run an electron on a fresh EC2 instance that is created for it and deleted after it.

    Every option of the seed's table is accepted, plus our own; see `options.Options` for each
    one's meaning and default. An option not given here is read from `[executors.ec2]`.
    """

    def __init__(
        self,
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
        spot: bool | None = None,
        instance_profile: str | None = None,
        wait_for_deletion: bool | None = None,
        max_lifetime_minutes: int | None = None,
        provision_timeout: float | None = None,
        tags: dict[str, str] | None = None,
        python_version: str | None = None,
        keep_warm_minutes: int | None = None,
        use_baked_image: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        explicit = {k: v for k, v in locals().items() if k in opts.OPTION_NAMES}
        values = opts.resolve(explicit, config_section())
        # Refuse bad values here, on the client, before anything is sent. Plain attributes:
        # Covalent ships them to the server as JSON (to_dict/from_dict).
        self.__dict__.update(opts.build(values).as_dict())

    def _options(self) -> opts.Options:
        return opts.build(self.__dict__)

    async def setup(self, task_metadata: dict[str, Any]) -> None:
        self._electron = Electron(self._options(), task_metadata)
        launched = await warm.take(self._electron)  # None unless keep_warm_minutes
        await self._set_job_handle(self._electron.job_handle())
        if launched is not None:
            self._launched = launched
            return
        try:
            self._launched = await pipeline.launch(self._electron)
        except EC2ExecutorError as exc:
            # A cancel deletes the stack under a creation in progress; that is no failure.
            if await self._cancel_requested():
                raise TaskCancelledError(f"{self._electron.name} was cancelled.") from exc
            raise

    async def run(
        self, function: Any, args: list[Any], kwargs: dict[str, Any], task_metadata: dict[str, Any]
    ) -> Any:
        if await self._cancel_requested():
            raise TaskCancelledError("The task was cancelled before it started.")
        launched: Launched = self._launched
        with warm.running(self._electron):
            outcome = await pipeline.run_task(
                self._electron,
                launched,
                (function, args, kwargs),
                cancel_requested=self._cancel_requested,
            )
        return self._report(outcome)

    def _report(self, outcome: TaskOutcome) -> Any:
        self.task_stdout.write(outcome.stdout)
        self.task_stderr.write(outcome.stderr)
        if outcome.cancelled:
            raise TaskCancelledError(f"The task on {self._electron.name} was cancelled.")
        if outcome.traceback:
            self.task_stderr.write(outcome.traceback)
            raise TaskRuntimeError(outcome.traceback)
        return outcome.result

    async def teardown(self, task_metadata: dict[str, Any]) -> None:
        electron: Electron | None = self.__dict__.get("_electron")
        if electron is None:
            return  # setup failed before it could name a stack: nothing was created
        try:
            if not await warm.keep(electron, self.__dict__.get("_launched")):
                await electron.destroy()
        finally:
            del self._electron
            self.__dict__.pop("_launched", None)

    async def cancel(self, task_metadata: dict[str, Any], job_handle: Any) -> bool:
        """Delete the electron's stack (which terminates the instance and its process); on a
        warm-capable instance, kill the task's process instead and keep the instance."""
        if not job_handle:
            return False
        if await warm.cancel(str(job_handle.get("stack_name", ""))):
            return True
        await cleanup_from_handle(self._options(), job_handle)
        return True

    # --- Covalent's server channel: absent when the executor is driven directly -----------

    async def _set_job_handle(self, handle: dict[str, Any]) -> None:
        if self.__dict__.get("_send_queue") is not None:
            await self.set_job_handle(handle)

    async def _cancel_requested(self) -> bool:
        if self.__dict__.get("_send_queue") is None:
            return False
        return bool(await self.get_cancel_requested())


def _register_if_missed() -> None:
    """Covalent registers plugins as it is imported. When this module was imported first, it
    saw this module half-loaded (no class yet) and skipped it: register it now."""
    manager = getattr(sys.modules.get("covalent.executor"), "_executor_manager", None)
    if manager is None:
        return  # covalent is importing this module itself and registers it when it is done
    if manager.executor_plugins_map.get("ec2") is not EC2Executor:
        manager._populate_executor_map_from_module(sys.modules[__name__])


_register_if_missed()
