"""The per-electron values of an `ElectronStack`, as CloudFormation parameters.

Shared by the stack (which declares them) and the executor (which fills them), and kept free of
`aws_cdk` imports so the executor never loads CDK on its hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

AL2023_SSM_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
DEFAULT_ROOT_DEVICE = "/dev/xvda"
TAG_SLOTS = 15
"""Stack tags the launch template copies to the network interface and spot request: the
executor's own five and up to ten of the user's (`options.MAX_EXTRA_TAGS`)."""


def tag_key_parameter(slot: int) -> str:
    return f"Tag{slot}Key"


def tag_value_parameter(slot: int) -> str:
    return f"Tag{slot}Value"


@dataclass(frozen=True, kw_only=True)
class StackParameters:
    """Values for one electron's stack. Field names are the template's parameter names."""

    InstanceType: str
    AuthorizedKey: str
    HostKey: str
    """Base64 of the OpenSSH private host key; NoEcho in the template."""
    SshIngressCidr: str
    PythonVersion: str
    CovalentVersion: str
    CloudpickleVersion: str
    LatestAmi: str = AL2023_SSM_PARAMETER.format(arch="x86_64")
    ImageId: str = ""
    RootDeviceName: str = DEFAULT_ROOT_DEVICE
    KeyName: str = ""
    VolumeSize: int = 8
    SshPort: int = 22
    SshUser: str = "ec2-user"
    MaxLifetimeMinutes: int = 120
    UseSpot: bool = False
    InstanceProfile: str = ""
    ExpectPublicIp: bool = True
    VpcId: str = ""
    SubnetId: str = ""
    AvailabilityZone: str = ""
    Tags: tuple[tuple[str, str], ...] = ()
    """The stack's tags, spread over the `TagNKey`/`TagNValue` slots."""

    def to_cloudformation(self, *, declared: frozenset[str]) -> list[dict[str, str]]:
        """Parameters for `create_stack`, limited to those the template declares."""
        if len(self.Tags) > TAG_SLOTS:
            raise ValueError(f"{len(self.Tags)} tags do not fit in {TAG_SLOTS} slots")
        values: dict[str, object] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "Tags"
        }
        for slot, (key, value) in enumerate(self.Tags, start=1):
            values[tag_key_parameter(slot)] = key
            values[tag_value_parameter(slot)] = value
        return [
            {"ParameterKey": name, "ParameterValue": _render(value)}
            for name, value in values.items()
            if name in declared
        ]


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
