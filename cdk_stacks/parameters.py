"""The per-electron values of an `ElectronStack`, as CloudFormation parameters.

Shared by the stack (which declares them) and the executor (which fills them), and kept free of
`aws_cdk` imports so the executor never loads CDK on its hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

AL2023_SSM_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
DEFAULT_ROOT_DEVICE = "/dev/xvda"


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

    def to_cloudformation(self, *, declared: frozenset[str]) -> list[dict[str, str]]:
        """Parameters for `create_stack`, limited to those the template declares."""
        return [
            {"ParameterKey": field.name, "ParameterValue": _render(getattr(self, field.name))}
            for field in fields(self)
            if field.name in declared
        ]


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
