"""EC2's capacity refusals as AWS words them, each with where the text was seen, and the way
CloudFormation quotes them in an instance's CREATE_FAILED reason.

The unit tests match these texts; the harness's injected capacity failures (`faults.py`,
`timed_cloud.py`) send them, so the end-to-end failover tests prove the real matching.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ec2Text:
    """One of EC2's messages. `kind`: "zone" (this zone has no room: try another), "spot"
    (spot refused in every zone: only on-demand helps), "vcpu" (the regional vCPU quota: no
    zone helps) or "other"."""

    kind: str
    text: str
    source: str
    """An AWS document, or a public issue that quotes a real event."""
    status: int = 500
    """The HTTP status EC2 answered with, which CloudFormation repeats."""


def insufficient_capacity(instance_type: str, zone: str, others: str) -> Ec2Text:
    return Ec2Text(
        "zone",
        f"We currently do not have sufficient {instance_type} capacity in the Availability Zone "
        f"you requested ({zone}). Our system will be working on provisioning additional "
        f"capacity. You can currently get {instance_type} capacity by not specifying an "
        f"Availability Zone in your request or choosing {others}.",
        "https://github.com/red-hat-storage/ocs-ci/issues/9263 (m6i.xlarge, us-east-2a); "
        "https://github.com/commonwarexyz/monorepo/issues/2859 (t4g.xlarge, eu-north-1a)",
    )


def unsupported_zone(instance_type: str, zone: str, others: str) -> Ec2Text:
    return Ec2Text(
        "zone",
        f"Your requested instance type ({instance_type}) is not supported in your requested "
        f"Availability Zone ({zone}). Please retry your request by not specifying an "
        f"Availability Zone or choosing {others}.",
        "https://github.com/ned1313/Getting-Started-Terraform/issues/44 (t3.micro, us-east-1e); "
        "https://github.com/skyplane-project/skyplane/issues/172 (m5.8xlarge, us-east-1e)",
        status=400,
    )


NO_SPOT_CAPACITY = Ec2Text(
    "zone",
    "There is no Spot capacity available that matches your request.",
    "https://repost.aws/knowledge-center/ec2-spot-instance-insufficient-capacity",
)
SPOT_QUOTA = Ec2Text(
    "spot",
    "Max spot instance count exceeded",
    "https://github.com/meadowdata/meadowrun/issues/84 (RunInstances); "
    "https://github.com/aws/aws-parallelcluster/issues/340",
    status=400,
)


def vcpu_limit(limit: int) -> Ec2Text:
    return Ec2Text(
        "vcpu",
        f"You have requested more vCPU capacity than your current vCPU limit of {limit} allows "
        f"for the instance bucket that the specified instance type belongs to. Please visit "
        f"http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.",
        "https://github.com/scrapoxy/scrapoxy/issues/202 (limit 32); "
        "https://github.com/aws/amazon-cloudwatch-agent-test/pull/256 (limit 1247)",
        status=400,
    )


INSUFFICIENT_CAPACITY_STATE = Ec2Text(
    "zone",
    "Server.InsufficientInstanceCapacity: There was insufficient capacity available to satisfy "
    "the launch request.",
    "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html (an "
    "instance's state reason when it terminates during launch for lack of capacity)",
)
"""The state reason of an instance that was launched, had its addresses, and then went from
pending to terminated: EC2 found no room for it after all."""

NOT_CAPACITY = [
    Ec2Text(
        "other",
        "The image id '[ami-0123456789abcdef0]' does not exist",
        "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html "
        "(InvalidAMIID.NotFound)",
        status=400,
    ),
    Ec2Text(
        "other",
        "Server.InternalError: An internal error caused the instance to terminate during launch.",
        "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html",
    ),
    Ec2Text(  # an interruption, not a launch EC2 found no room for
        "other",
        "Server.SpotInstanceTermination: The instance was terminated because the number of Spot "
        "requests with a maximum price equal to or higher than the Spot price exceeded available "
        "capacity or because of an increase in the Spot price.",
        "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html",
    ),
]

HANDLER_FORMAT_SOURCE = (
    "https://docs.aws.amazon.com/cloudformation-cli/latest/userguide/"
    "resource-type-test-contract-errors.html (HandlerErrorCode); issue 22 of this project "
    "quotes the CREATE_FAILED reason's shape"
)


def create_failed(ec2: Ec2Text, *, request_id: str = "0c6a2d8e-5b1f-4d3c-9a61-2f7e8d1c4b50") -> str:
    """An instance's CREATE_FAILED reason as CloudFormation writes it for EC2's refusal: EC2's
    text and HTTP status, with no EC2 error code (`HANDLER_FORMAT_SOURCE`)."""
    code = "GeneralServiceException" if ec2.status >= 500 else "InvalidRequest"
    return (
        f'Resource handler returned message: "{ec2.text} (Service: Ec2, Status Code: '
        f'{ec2.status}, Request ID: {request_id})" (RequestToken: '
        f"5f1c2e0a-7d7b-4a0e-b1f1-8c3d2a9e6f47, HandlerErrorCode: {code})"
    )


def did_not_stabilize(instance_id: str, state_reason: Ec2Text) -> str:
    """The CREATE_FAILED reason of an instance that launched and then terminated, with EC2's
    state reason (CloudFormation's NotStabilized, `HANDLER_FORMAT_SOURCE`)."""
    return (
        f'Resource handler returned message: "Instance {instance_id} failed to stabilize. '
        f'Current state: shutting-down. Reason: {state_reason.text}" (RequestToken: '
        f"5f1c2e0a-7d7b-4a0e-b1f1-8c3d2a9e6f47, HandlerErrorCode: NotStabilized)"
    )


def every_text() -> list[Ec2Text]:
    """Each kind of text once, for tests that match them all."""
    return [
        insufficient_capacity("t3.micro", "us-east-1a", "us-east-1b, us-east-1c"),
        unsupported_zone("t4g.micro", "us-east-1e", "us-east-1a, us-east-1b, us-east-1c"),
        NO_SPOT_CAPACITY,
        SPOT_QUOTA,
        vcpu_limit(32),
        INSUFFICIENT_CAPACITY_STATE,
        *NOT_CAPACITY,
    ]
