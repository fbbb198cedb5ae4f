"""AWS refusals moto does not make on its own, injected without touching the executor.

- `FaultProxy`: an HTTP proxy on loopback in front of the moto server. Every request goes
  through to moto except the actions a test chose, which get the error AWS would send (the
  service's own error format), so botocore parses a real error response.
- `capacity_refused`: moto's CloudFormation creates instances in-process, out of a proxy's
  reach. It patches moto's instance launch to raise EC2's capacity error in chosen zones (or
  the account's spot or vCPU quota everywhere), and moto's stack creation to turn that error
  into what CloudFormation shows: the instance CREATE_FAILED with EC2's text quoted as
  CloudFormation quotes it (`aws_texts`, each text with its source), the stack
  ROLLBACK_COMPLETE.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import aws_texts
from .aws_request import describe_request

_QUERY_XMLNS = {
    "cloudformation": "http://cloudformation.amazonaws.com/doc/2010-05-15/",
    "sts": "https://sts.amazonaws.com/doc/2011-06-15/",
    "iam": "https://iam.amazonaws.com/doc/2010-05-08/",
}
_DRY_RUN_MESSAGE = "Request would have succeeded, but DryRun flag is set."
# Not forwarded. The Host header is: it is signed, and moto, enforcing IAM, checks signatures.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class Fault:
    """Answer `service`:`action` with `code` (HTTP `status`), `times` times (None: always)."""

    service: str
    action: str
    code: str
    message: str = ""
    status: int = 400
    times: int | None = None
    when: Callable[[dict[str, str]], bool] = field(default=lambda _params: True)

    def matches(self, service: str, action: str, params: dict[str, str]) -> bool:
        return (
            self.service == service
            and self.action == action
            and (self.times is None or self.times > 0)
            and self.when(params)
        )


def access_denied(service: str, action: str, **kw: Any) -> Fault:
    """The refusal AWS sends for a missing permission, worded as AWS words it."""
    code = {"ec2": "UnauthorizedOperation", "ssm": "AccessDeniedException"}.get(
        service, "AccessDenied"
    )
    message = (
        f"User: arn:aws:iam::123456789012:user/scientist is not authorized to perform: "
        f"{service}:{action} because no identity-based policy allows the {service}:{action} "
        f"action"
    )
    return Fault(service, action, code, message, status=403 if service != "ec2" else 400, **kw)


class FaultProxy:
    """Forwards to `upstream` (the moto server), answering matching requests with a fault."""

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, str, str]] = []
        """(service, action, answer) per request; answer is 'moto' or the fault's code."""
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def answered(self, service: str, action: str) -> list[str]:
        """The answers given to `service`:`action` so far, in order."""
        with self._lock:
            return [a for s, act, a in self.calls if (s, act) == (service, action)]

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _decide(self, service: str, action: str, params: dict[str, str]) -> Fault | None:
        with self._lock:
            fault = next((f for f in self.faults if f.matches(service, action, params)), None)
            if fault is not None and fault.times is not None:
                fault.times -= 1
            if fault is None and service == "ec2" and params.get("DryRun") == "true":
                # AWS answers every permitted dry run so; moto ignores DryRun on some actions
                # (CreateVpc creates a VPC), so the proxy answers them all as AWS does.
                fault = Fault("ec2", action, "DryRunOperation", _DRY_RUN_MESSAGE, status=412)
            self.calls.append((service, action, fault.code if fault else "moto"))
            return fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                service, action, params = describe_request(self.headers, self.path, body)
                fault = proxy._decide(service, action, params)
                if fault is not None:
                    status, headers, payload = _error_response(service, fault)
                else:
                    status, headers, payload = proxy._forward(self, body)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def _forward(
        self, request: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(request.command, request.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            return response.status, kept, payload
        finally:
            connection.close()


def _error_response(service: str, fault: Fault) -> tuple[int, list[tuple[str, str]], bytes]:
    if service == "ec2":
        body = (
            f"<Response><Errors><Error><Code>{fault.code}</Code><Message>{fault.message}"
            f"</Message></Error></Errors><RequestID>fault-1</RequestID></Response>"
        )
        return fault.status, [("Content-Type", "text/xml")], body.encode()
    if service in _QUERY_XMLNS:
        body = (
            f'<ErrorResponse xmlns="{_QUERY_XMLNS[service]}"><Error><Type>Sender</Type>'
            f"<Code>{fault.code}</Code><Message>{fault.message}</Message></Error>"
            f"<RequestId>fault-1</RequestId></ErrorResponse>"
        )
        return fault.status, [("Content-Type", "text/xml")], body.encode()
    payload = json.dumps({"__type": fault.code, "message": fault.message}).encode()
    return (
        fault.status,
        [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", fault.code)],
        payload,
    )


@contextlib.contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()


# --- capacity, inside moto -------------------------------------------------------------------


class _LaunchRefused(Exception):
    def __init__(self, logical_id: str, reason: str) -> None:
        super().__init__(reason)
        self.logical_id, self.reason = logical_id, reason


@dataclass
class CapacityPlan:
    """Which launches moto refuses, and a record of every launch it was asked for."""

    zones: set[str] = field(default_factory=set)
    """Zones with no capacity at all."""
    spot_zones: set[str] = field(default_factory=set)
    """Zones with no spot capacity."""
    spot_quota: bool = False
    """The account is at its spot quota: every spot launch is refused, in every zone."""
    vcpu_limit: int | None = None
    """The account's regional vCPU quota is reached: every launch is refused."""
    launches: list[tuple[str, bool, str]] = field(default_factory=list)
    """(zone, spot, 'refused' or 'launched') for every instance moto's CloudFormation made."""


def _refusal(plan: CapacityPlan, instance_type: str, zone: str, spot: bool) -> str | None:
    """CloudFormation's CREATE_FAILED reason for the launch, as AWS words it; None: launched."""
    text: aws_texts.Ec2Text | None = None
    if plan.vcpu_limit is not None:
        text = aws_texts.vcpu_limit(plan.vcpu_limit)
    elif spot and plan.spot_quota:
        text = aws_texts.SPOT_QUOTA
    elif zone in plan.zones:
        text = aws_texts.insufficient_capacity(instance_type, zone, "us-east-1b, us-east-1c")
    elif spot and zone in plan.spot_zones:
        text = aws_texts.NO_SPOT_CAPACITY
    return aws_texts.create_failed(text) if text else None


@contextlib.contextmanager
def capacity_refused(plan: CapacityPlan) -> Iterator[CapacityPlan]:
    """Patch moto (in this process, where the moto server runs) to refuse launches per `plan`."""
    from moto.cloudformation import models as cfn_models
    from moto.cloudformation import parsing as cfn_parsing
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import Instance

    original_create = Instance.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]
    original_resources = cfn_models.Stack.create_resources

    def create_instance(
        cls: Any,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kw: Any,
    ) -> Any:
        properties = cloudformation_json["Properties"]
        backend = ec2_backends[account_id][region_name]
        zone = backend.get_subnet(properties["SubnetId"]).availability_zone
        spot = _spot_requested(backend, properties.get("LaunchTemplate") or {})
        reason = _refusal(plan, properties.get("InstanceType", "m1.small"), zone, spot)
        if reason is not None:
            plan.launches.append((zone, spot, "refused"))
            raise _LaunchRefused(resource_name, reason)
        plan.launches.append((zone, spot, "launched"))
        return original_create(
            cls, resource_name, cloudformation_json, account_id, region_name, **kw
        )

    def create_resources(stack: Any) -> None:
        try:
            original_resources(stack)
        except _LaunchRefused as refused:
            stack.events.append(
                cfn_models.Event(
                    stack_id=stack.stack_id,
                    stack_name=stack.name,
                    # moto names it "<stack>-<logical id>-<suffix>"
                    logical_resource_id=refused.logical_id.removeprefix(f"{stack.name}-").rsplit(
                        "-", 1
                    )[0],
                    physical_resource_id="",
                    resource_type="AWS::EC2::Instance",
                    resource_status="CREATE_FAILED",
                    resource_status_reason=refused.reason,
                    resource_properties=None,
                )
            )
            # A rolled-back stack has no outputs (moto would resolve them, launching again).
            stack.output_map = cfn_parsing.OutputMap(
                stack.resource_map, {"Outputs": {}}, stack.stack_id
            )
            stack.status = "ROLLBACK_COMPLETE"
            stack._add_stack_event("ROLLBACK_COMPLETE")

    Instance.create_from_cloudformation_json = classmethod(create_instance)  # type: ignore[method-assign,assignment]
    cfn_models.Stack.create_resources = create_resources  # type: ignore[method-assign]
    try:
        yield plan
    finally:
        Instance.create_from_cloudformation_json = classmethod(original_create)  # type: ignore[method-assign,assignment]
        cfn_models.Stack.create_resources = original_resources  # type: ignore[method-assign]


def _spot_requested(backend: Any, launch_template: dict[str, Any]) -> bool:
    template_id = launch_template.get("LaunchTemplateId")
    if not template_id:
        return False
    data = backend.get_launch_template(template_id).latest_version().data
    market = data.get("InstanceMarketOptions") or {}
    return str(market.get("MarketType", "")).lower() == "spot"


def terminate_for_capacity(instance_id: str, account_id: str = "123456789012") -> None:
    """Terminate a launching instance in moto (in this process) as EC2 does when it finds no
    room for it after all: state terminated, with EC2's capacity state reason."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    from .moto import REGION

    instance = ec2_backends[account_id][REGION].get_instance(instance_id)
    instance.terminate()
    text = aws_texts.INSUFFICIENT_CAPACITY_STATE.text
    instance.state_reason = StateReason(text, text.split(":", 1)[0])
