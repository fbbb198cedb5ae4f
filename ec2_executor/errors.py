"""The one exception tree of ec2-executor. botocore, paramiko and synthesis errors are mapped
into it at one boundary each (`aws.py`, `remote.py`, `stack.stack_template`), chained with
`raise ... from`, never swallowed."""

from __future__ import annotations


class EC2ExecutorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(EC2ExecutorError, ValueError):
    """An option has a bad value; raised before any cloud resource is created."""


class CredentialsError(ConfigurationError):
    """No usable AWS credentials: none found, profile unknown, or rejected by STS."""


class TemplateError(EC2ExecutorError):
    """The stack's template could not be synthesised (Node.js or the CDK missing, or too big)."""


class AWSError(EC2ExecutorError):
    """An AWS call failed for a reason that retrying will not fix; `code` is AWS's error code
    ('' when AWS gave none: unreachable, or not an AWS answer)."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class PermissionDeniedError(AWSError):
    """AWS refused an action to these credentials; the message names the IAM action."""

    def __init__(self, message: str, *, action: str, code: str = "AccessDenied") -> None:
        super().__init__(message, code=code)
        self.action = action


class StackError(EC2ExecutorError):
    """A CloudFormation stack could not be created, read or deleted."""

    def __init__(self, message: str, *, stack_name: str) -> None:
        super().__init__(message)
        self.stack_name = stack_name


class StackCreationError(StackError):
    """CloudFormation rolled the stack back; the message names the first failing resource."""


class CapacityError(StackCreationError):
    """No zone (and no market the options allow) had capacity for the instance type."""


class VcpuLimitError(StackCreationError):
    """The launch met the account's regional vCPU quota: no other zone can help."""


class StackDeletionError(StackError):
    """A stack could not be deleted and may still bill; `ec2-executor cleanup` removes it."""


class RemoteError(EC2ExecutorError):
    """The instance could not be reached, prepared or used over SSH."""


class BootstrapError(RemoteError):
    """The instance's bootstrap failed or timed out; the message ends with its log tail."""


class ConnectionLostError(RemoteError):
    """The SSH connection dropped or the instance vanished while the task ran."""


class SpotInterruptionError(ConnectionLostError):
    """EC2 reclaimed the electron's spot instance; the message gives the notice's time and,
    after retries, every attempt with its zone, market and reason."""


class BudgetSpentError(ConnectionLostError):
    """The instance powered itself off when `budget_usd` was spent; the message names the
    budget, the price and the time."""


class TaskError(EC2ExecutorError):
    """The task raised, or its result could not come back; the message names the type."""
