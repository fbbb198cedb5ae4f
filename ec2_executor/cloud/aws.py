"""The boundary to AWS: sessions, clients with retries, and botocore errors mapped to ours."""

from __future__ import annotations

import configparser
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.parsers import ResponseParserError
from botocore.retries import standard

from ec2_executor.cloud import pacing
from ec2_executor.cloud.permissions import ACCESS_DENIED, denied_action, denied_message
from ec2_executor.errors import (
    AWSError,
    ConfigurationError,
    CredentialsError,
    PermissionDeniedError,
)
from ec2_executor.options import Options

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_ec2 import EC2Client

# Transient errors are retried by botocore's standard mode, throttling by `_PacedRetries`;
# errors that retrying cannot fix surface at once.
MAX_ATTEMPTS = 8
"""Attempts per call, unless AWS_MAX_ATTEMPTS or the profile's `max_attempts` says otherwise."""
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
    connect_timeout=10,
    read_timeout=60,
)
THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "EC2ThrottledException",
    }
)
"""AWS's answers for "too many calls, slow down" (not CloudFormation's LimitExceededException,
which is the stack quota)."""
THROTTLE_PATIENCE = 300.0
"""Seconds a throttled call of a default client goes on being retried, paced and backed off,
before its error surfaces."""
_REJECTED = {
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "AccessDenied",
    "UnrecognizedClientException",
    "AuthFailure",
}


class AWS:
    """AWS clients for one set of options, shared by every electron that has the same ones.

    Building a session and its clients parses service models for ~0.7 s of CPU under the GIL
    of the Covalent server; built clients are thread-safe, so they are made once per process.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self._key = _cache_key(options)
        with _LOCK:
            session = _SESSIONS.get(self._key) or _session(options)
            if session.get_credentials() is not None:  # never keep "no credentials" around
                _SESSIONS[self._key] = session
            self.session = session

    def client(self, service: str, *, max_attempts: int | None = None) -> Any:
        """A shared client, paced with every other client of the account and region.

        A lower `max_attempts` for callers that retry themselves: their throttled calls, too,
        end after that many attempts rather than after `THROTTLE_PATIENCE`.
        """
        attempts = self._attempts(max_attempts)
        patience = THROTTLE_PATIENCE if max_attempts is None else 0.0
        key = (*self._key, service, str(attempts), str(patience))
        config = CLIENT_CONFIG.merge(Config(retries={"mode": "standard", "max_attempts": attempts}))
        with _LOCK:  # building a client is not thread-safe; using one is
            if key not in _CLIENTS:
                client = self.session.client(  # type: ignore[call-overload]
                    service, region_name=self.options.region, config=config
                )
                _pace(client, pacing.pacer_for(account_key(self.options)), patience=patience)
                _CLIENTS[key] = client
            return _CLIENTS[key]

    def _attempts(self, wanted: int | None) -> int:
        # A Config object overrides botocore's own settings, so the user's are read here.
        configured = self.session._session.get_config_variable("max_attempts")
        attempts = int(configured) if configured else MAX_ATTEMPTS
        return min(attempts, wanted) if wanted else attempts

    @property
    def ec2(self) -> EC2Client:
        client: EC2Client = self.client("ec2")
        return client

    @property
    def cloudformation(self) -> CloudFormationClient:
        client: CloudFormationClient = self.client("cloudformation")
        return client

    def check_credentials(self) -> str:
        """The caller's ARN; a `CredentialsError` that says what is wrong otherwise."""
        with aws_errors("checking the AWS credentials with STS"):
            try:
                return str(self.client("sts").get_caller_identity()["Arn"])
            except (NoCredentialsError, PartialCredentialsError) as exc:
                raise CredentialsError(
                    f"No AWS credentials were found (profile {self.options.profile!r}, "
                    f"'credentials_file' {self.options.credentials_file!r}); run 'aws configure' "
                    f"or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
                ) from exc
            except ClientError as exc:
                if _code(exc) in _REJECTED:
                    raise CredentialsError(
                        f"STS rejected the AWS credentials of profile {self.options.profile!r} "
                        f"({_code(exc)}: {_message(exc)}); refresh them or pick another "
                        f"'profile'."
                    ) from exc
                raise


_LOCK = threading.Lock()
_SESSIONS: dict[tuple[str, ...], boto3.Session] = {}
_CLIENTS: dict[tuple[str, ...], Any] = {}


def forget_session(options: Options) -> None:
    """Drop the cached session and clients for `options`: the next `AWS(options)` reads the
    credentials again (after an ExpiredToken, say)."""
    key = _cache_key(options)
    with _LOCK:
        _SESSIONS.pop(key, None)
        for cached in [k for k in _CLIENTS if k[: len(key)] == key]:
            del _CLIENTS[cached]


def _cache_key(options: Options) -> tuple[str, ...]:
    """What a session depends on: the options that pick credentials, the AWS_* environment
    (endpoint, keys, files) and the credential files' mtimes, so rotated keys are picked up."""
    environment = sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))
    files = [
        os.path.expanduser(options.credentials_file),
        os.environ.get("AWS_CONFIG_FILE", os.path.expanduser("~/.aws/config")),
    ]
    mtimes = [os.stat(f).st_mtime_ns if os.path.exists(f) else 0 for f in files]
    return (
        options.profile,
        options.region,
        options.credentials_file,
        repr(environment),
        repr(mtimes),
    )


def account_key(options: Options) -> tuple[str, ...]:
    """What names an account and region to AWS's rate limits, as far as we can tell without
    asking: the session's key, less the files' mtimes (rotated keys are the same account)."""
    return _cache_key(options)[:-1]


# --- pacing: one pacer per account and region, hooked into each client ----------------------


def _pace(client: Any, pacer: pacing.Pacer, *, patience: float) -> None:
    """Make every attempt of every call of `client` wait for its action's token, and retry
    throttled attempts with `_PacedRetries` instead of botocore's standard handler."""
    events = client.meta.events
    service = client.meta.service_model.service_id.hyphenize()
    events.register(
        f"before-send.{service}",
        functools.partial(_wait_for_token, pacer, service),
        unique_id="ec2-executor-pace",
    )
    # botocore keeps no reference to its handler: unregister it, register a standard handler
    # of our own (with its own quota), and put that behind ours under botocore's id.
    retry_id = f"retry-config-{service}"
    events.unregister(f"needs-retry.{service}", unique_id=retry_id)
    attempts = int(client.meta.config.retries["total_max_attempts"])
    fallback = standard.register_retry_handler(client, max_attempts=attempts)
    events.unregister(f"needs-retry.{service}", unique_id=retry_id)
    retries = _PacedRetries(fallback.needs_retry, pacer, service, attempts, patience)
    events.register(f"needs-retry.{service}", retries, unique_id=retry_id)


def _wait_for_token(pacer: pacing.Pacer, service: str, event_name: str, **_: Any) -> None:
    pacer.wait(service, event_name.rsplit(".", 1)[-1])  # before-send.<service>.<Operation>


class _PacedRetries:
    """botocore's `needs-retry` handler of one client.

    A throttled attempt slows its action's bucket for the whole process and is retried after a
    jittered backoff (the pacer then spaces the retries), for `patience` seconds or at least
    `attempts` tries. It costs nothing from botocore's retry quota: that quota (500 units per
    client, 5 per throttled retry, refilled only by successes) is shared by every electron of
    the process, so a burst of throttling would otherwise leave every other call, of any
    action, without a single retry. Any other error is the standard handler's, quota and all.
    """

    def __init__(
        self,
        standard_retry: Callable[..., float | None],
        pacer: pacing.Pacer,
        service: str,
        attempts: int,
        patience: float,
    ) -> None:
        self.standard_retry, self.pacer, self.service = standard_retry, pacer, service
        self.attempts, self.patience = attempts, patience

    def __call__(self, **kwargs: Any) -> float | None:
        if not pacing.ENABLED or _response_code(kwargs["response"]) not in THROTTLING:
            return self.standard_retry(**kwargs)
        attempt, operation = int(kwargs["attempts"]), kwargs["operation"].name
        self.pacer.throttled(self.service, operation)
        context = kwargs["request_dict"]["context"]  # one per call, kept across its attempts
        first = context.setdefault("ec2_executor_throttled_at", time.monotonic())
        if attempt >= self.attempts and time.monotonic() - first >= self.patience:
            return None
        return pacing.backoff(attempt)


def _response_code(response: tuple[Any, dict[str, Any]] | None) -> str:
    """The error code of one attempt's parsed answer ('' when there is none)."""
    if response is None:
        return ""
    error = response[1].get("Error")
    return str(error.get("Code") or "") if isinstance(error, dict) else ""


def _session(options: Options) -> boto3.Session:
    core = botocore.session.Session()
    credentials_file = os.path.expanduser(options.credentials_file)
    if os.path.isfile(credentials_file):
        core.set_config_variable("credentials_file", credentials_file)
    elif options.credentials_file != Options.credentials_file:
        raise ConfigurationError(
            f"Option 'credentials_file' is {options.credentials_file!r}, but no file is there; "
            f"fix the path or leave it at the default."
        )
    profile = _usable_profile(options.profile, credentials_file)
    try:
        if profile:
            core.set_config_variable("profile", profile)
            core.get_scoped_config()  # raises ProfileNotFound now rather than mid-deploy
        return boto3.Session(botocore_session=core, region_name=options.region)
    except ProfileNotFound as exc:
        raise CredentialsError(
            f"Option 'profile' is {options.profile!r}, but no such AWS profile is configured in "
            f"{credentials_file!r} or ~/.aws/config; fix 'profile' or run "
            f"'aws configure --profile {options.profile}'."
        ) from exc


def _usable_profile(profile: str, credentials_file: str) -> str:
    """'default' that no file defines means "use the environment", as the AWS CLI does."""
    if profile != "default":
        return profile
    parser = configparser.ConfigParser()
    config_file = os.environ.get("AWS_CONFIG_FILE", os.path.expanduser("~/.aws/config"))
    parser.read([credentials_file, config_file])
    return profile if parser.has_section("default") else ""


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", exc))


def error_code(exc: BaseException) -> str:
    """AWS's error code of a mapped error or a raw ClientError; '' for anything else."""
    if isinstance(exc, AWSError):
        return exc.code
    return _code(exc) if isinstance(exc, ClientError) else ""


def throttled(exc: BaseException) -> bool:
    """AWS said "too many calls": asking again later will do."""
    return error_code(exc) in THROTTLING


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Map botocore failures to `AWSError` naming what we were doing; ours pass through."""
    try:
        yield
    except ClientError as exc:
        if _code(exc) in ACCESS_DENIED:
            iam_action = denied_action(_message(exc), exc.operation_name)
            raise PermissionDeniedError(
                denied_message(iam_action, action, f"{_code(exc)}: {_message(exc)}"),
                action=iam_action,
                code=_code(exc),
            ) from exc
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status >= 500:  # AWS's own failure: worth another try, unlike a refusal
            said = _message(exc).rstrip(".")
            raise AWSError(
                f"AWS failed (HTTP {status}) while {action}: {_code(exc)}: {said}; "
                f"try again later.",
                code=_code(exc),
            ) from exc
        raise AWSError(
            f"AWS refused {action}: {_code(exc)}: {_message(exc)}", code=_code(exc)
        ) from exc
    except ResponseParserError as exc:  # not a BotoCoreError: an error page instead of AWS's
        raise AWSError(
            f"The AWS endpoint sent something that is not an AWS response while {action} "
            f"({' '.join(str(exc).split())[:300]}); check AWS_ENDPOINT_URL and any proxy, or "
            f"try again later."
        ) from exc
    except NoRegionError as exc:
        raise ConfigurationError("No AWS region is set; set the 'region' option.") from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise CredentialsError(
            f"No AWS credentials were found while {action}; run 'aws configure' or set "
            f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        ) from exc
    except EndpointConnectionError as exc:
        raise AWSError(
            f"Could not reach AWS while {action}: {exc}; check the network, the 'region' option "
            f"and AWS_ENDPOINT_URL if it is set."
        ) from exc
    except BotoCoreError as exc:
        raise AWSError(f"Could not reach AWS while {action}: {exc}") from exc
