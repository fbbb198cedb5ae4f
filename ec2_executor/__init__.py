"""Run Covalent electrons on throw-away AWS EC2 instances."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ec2_executor.errors import (
    AWSError,
    BootstrapError,
    BudgetSpentError,
    CapacityError,
    ConfigurationError,
    ConnectionLostError,
    CredentialsError,
    EC2ExecutorError,
    PermissionDeniedError,
    RemoteError,
    SpotInterruptionError,
    StackCreationError,
    StackDeletionError,
    TaskError,
)

if TYPE_CHECKING:
    from ec2_executor.ec2 import EC2Executor

__all__ = [
    "AWSError",
    "BootstrapError",
    "BudgetSpentError",
    "CapacityError",
    "ConfigurationError",
    "ConnectionLostError",
    "CredentialsError",
    "EC2Executor",
    "EC2ExecutorError",
    "PermissionDeniedError",
    "RemoteError",
    "SpotInterruptionError",
    "StackCreationError",
    "StackDeletionError",
    "TaskError",
]


def __getattr__(name: str) -> Any:
    # Lazy: Covalent imports `ec2_executor.ec2` while it is itself being imported, so an eager
    # import here would hand it a half-initialised module.
    if name == "EC2Executor":
        import covalent  # noqa: F401  (loads this plugin itself, completely, first)

        from ec2_executor.ec2 import EC2Executor

        return EC2Executor
    raise AttributeError(name)
