"""Every per-electron value of an `ElectronStack`, declared once: name, type, default, bounds.

`ElectronStack` declares its `CfnParameter`s from `PARAMETERS`; the executor fills them through
`StackParameters`, which checks names and bounds against the same table. Free of `aws_cdk`
imports, so the executor never loads CDK on its hot path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from cdk_stacks.shape import NetworkMode

AL2023_SSM_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
DEFAULT_ROOT_DEVICE = "/dev/xvda"
IPV4_CIDR_PATTERN = r"^(\d{1,3}\.){3}\d{1,3}/(\d|[12]\d|3[0-2])$"
TAG_SLOTS = 16
"""Stack tags the launch template copies to the network interface and spot request (stack tags
do not reach them): the executor's own six and up to ten of the user's."""
LAUNCH_TEMPLATE_TAG = "ec2-executor:stack"
"""The launch template's own tag, its stack's name: its type takes no stack tags, and the
IAM policy allows deleting a launch template only with this tag."""

Value = str | int | bool


@dataclass(frozen=True, kw_only=True)
class Parameter:
    """One `CfnParameter`. A `bool` default makes a "true"/"false" string parameter."""

    name: str
    description: str
    type: str = "String"
    default: Value | None = None
    """None: the parameter is required."""
    min_value: int | None = None
    max_value: int | None = None
    pattern: str | None = None
    constraint: str | None = None
    no_echo: bool = False
    existing_network_only: bool = False
    """Declared only by the shape that uses an existing VPC and subnet."""
    created_network_only: bool = False
    """Declared only by the shape that creates its VPC."""

    def declared_in(self, network: NetworkMode) -> bool:
        if self.existing_network_only:
            return network is NetworkMode.EXISTING
        if self.created_network_only:
            return network is NetworkMode.CREATED
        return True

    @property
    def is_flag(self) -> bool:
        return isinstance(self.default, bool)

    def check(self, value: Value) -> None:
        """Refuse a value the template would refuse (ValueError naming the parameter)."""
        if self.type == "Number":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Stack parameter {self.name} must be a whole number: {value!r}")
            low = self.min_value if self.min_value is not None else value
            high = self.max_value if self.max_value is not None else value
            if not low <= value <= high:
                raise ValueError(
                    f"Stack parameter {self.name} is {value}, outside {self.min_value} to "
                    f"{self.max_value}."
                )
        elif self.is_flag and not isinstance(value, bool):
            raise ValueError(f"Stack parameter {self.name} must be True or False: {value!r}")


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(name="InstanceType", description="EC2 instance type.", default="t2.micro"),
    Parameter(
        name="LatestAmi",
        description="SSM parameter naming the default image (Amazon Linux 2023).",
        type="AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
        default=AL2023_SSM_PARAMETER.format(arch="x86_64"),
    ),
    Parameter(name="ImageId", description="Explicit AMI id; empty uses LatestAmi.", default=""),
    Parameter(
        name="RootDeviceName", description="Root device of the image.", default=DEFAULT_ROOT_DEVICE
    ),
    Parameter(name="KeyName", description="Optional EC2 key pair name.", default=""),
    Parameter(
        name="VolumeSize",
        description="Root volume size in GiB.",
        type="Number",
        default=8,
        min_value=1,
        max_value=16384,
    ),
    Parameter(
        name="SshIngressCidr",
        description="The only IPv4 range allowed to reach SSH.",
        pattern=IPV4_CIDR_PATTERN,
        constraint="must be an IPv4 CIDR such as 203.0.113.7/32",
    ),
    Parameter(
        name="SshPort",
        description="Port sshd listens on.",
        type="Number",
        default=22,
        min_value=1,
        max_value=65535,
    ),
    Parameter(
        name="SshUser", description="Login user that owns the task environment.", default="ec2-user"
    ),
    Parameter(name="AuthorizedKey", description="OpenSSH public key allowed to log in."),
    Parameter(
        name="HostKey", description="Base64 of the pinned OpenSSH host private key.", no_echo=True
    ),
    Parameter(name="PythonVersion", description="Python minor version, e.g. 3.11."),
    Parameter(name="CovalentVersion", description="covalent version to install."),
    Parameter(name="CloudpickleVersion", description="cloudpickle version to install."),
    Parameter(
        name="MaxLifetimeMinutes",
        description="The instance powers off (and terminates) after this.",
        type="Number",
        default=120,
        min_value=1,
        max_value=7 * 24 * 60,
    ),
    Parameter(
        name="LifetimeLimit",
        description="The option that set MaxLifetimeMinutes; the power-off names it.",
        default="max_lifetime_minutes",
        pattern="^(max_lifetime_minutes|budget_usd)$",
        constraint="must be max_lifetime_minutes or budget_usd",
    ),
    Parameter(
        name="IdleMinutes",
        description="The instance powers off after this many minutes without a task; 0: never.",
        type="Number",
        default=0,
        min_value=0,
        max_value=24 * 60,
    ),
    Parameter(
        name="OrphanMinutes",
        description="The instance powers off after this many minutes without an SSH connection "
        "from its dispatcher.",
        type="Number",
        default=10,
        min_value=2,
        max_value=24 * 60,
    ),
    Parameter(name="UseSpot", description="Run on the spot market.", default=False),
    Parameter(
        name="InstanceProfile", description="Optional existing instance profile name.", default=""
    ),
    Parameter(
        name="ExpectPublicIp",
        description="Whether the subnet gives the instance a public address.",
        default=True,
        existing_network_only=True,
    ),
    Parameter(
        name="VpcId",
        description="Existing VPC.",
        type="AWS::EC2::VPC::Id",
        existing_network_only=True,
    ),
    Parameter(
        name="SubnetId",
        description="Existing subnet in VpcId.",
        type="AWS::EC2::Subnet::Id",
        existing_network_only=True,
    ),
    Parameter(
        name="AvailabilityZone",
        description="Zone of the created subnet (one that offers the instance type); empty: "
        "the region's first.",
        default="",
        created_network_only=True,
    ),
    *(
        Parameter(name=name, description="A stack tag for the launch template to copy.", default="")
        for slot in range(1, TAG_SLOTS + 1)
        for name in (f"Tag{slot}Key", f"Tag{slot}Value")
    ),
)
BY_NAME: Mapping[str, Parameter] = {p.name: p for p in PARAMETERS}


class StackParameters(Mapping[str, Value]):
    """Values for one electron's stack, by parameter name: checked against `PARAMETERS`, with
    the table's defaults for what is not given."""

    def __init__(self, **values: Value) -> None:
        unknown = sorted(set(values) - set(BY_NAME))
        if unknown:
            raise ValueError(f"Not stack parameters: {', '.join(unknown)}")
        for name, value in values.items():
            BY_NAME[name].check(value)
        defaults = {p.name: p.default for p in PARAMETERS if p.default is not None}
        self._values: dict[str, Value] = {**defaults, **values}

    def __getitem__(self, name: str) -> Value:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:  # the host key stays out of logs and tracebacks
        shown = {k: ("***" if BY_NAME[k].no_echo else v) for k, v in self._values.items()}
        return f"StackParameters({shown})"

    def to_cloudformation(self, *, declared: frozenset[str]) -> list[dict[str, str]]:
        """Parameters for `create_stack`, limited to those the template declares."""
        missing = sorted(declared - set(self._values))
        if missing:
            raise ValueError(f"Stack parameters without a value: {', '.join(missing)}")
        return [
            {"ParameterKey": name, "ParameterValue": render(value)}
            for name, value in self._values.items()
            if name in declared
        ]


def tag_key_parameter(slot: int) -> str:
    return f"Tag{slot}Key"


def tag_value_parameter(slot: int) -> str:
    return f"Tag{slot}Value"


def tag_parameters(tags: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The `TagNKey`/`TagNValue` slot values for `tags`, in order; unused slots stay empty."""
    if len(tags) > TAG_SLOTS:
        raise ValueError(f"{len(tags)} tags do not fit in {TAG_SLOTS} slots")
    values: dict[str, str] = {}
    for slot, (key, value) in enumerate(tags, start=1):
        values[tag_key_parameter(slot)] = key
        values[tag_value_parameter(slot)] = value
    return values


def render(value: Value) -> str:
    """A value as CloudFormation takes it (flags are the strings "true" and "false")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
