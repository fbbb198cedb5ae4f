"""The plan of one electron: every check and choice that needs AWS but creates nothing.

Credentials, instance type, image, key pair, network, SSH ingress and the network's way out
(`egress`) are settled here, so a bad option is refused before any resource exists.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cdk_stacks.parameters import AL2023_SSM_PARAMETER, DEFAULT_ROOT_DEVICE
from ec2_executor.access import ClientIdentity, client_identity
from ec2_executor.cloud import egress
from ec2_executor.cloud.aws import AWS, aws_errors
from ec2_executor.cloud.images import Recipe, instance_files_version, newest_match
from ec2_executor.cloud.network import NetworkPlan, plan_network
from ec2_executor.errors import AWSError, ConfigurationError
from ec2_executor.options import Options

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client


@dataclass(frozen=True, kw_only=True)
class Image:
    latest_ami_parameter: str
    image_id: str = ""
    root_device: str = DEFAULT_ROOT_DEVICE
    installs: bool = True
    """The bootstrap installs Python and packages (the stock image), so the subnet needs a way
    out; a baked image has them, and a given `ami` may (the bootstrap then skips installs)."""
    why: str = ""
    """Which image, and why: the plan logs it."""


@dataclass(frozen=True, kw_only=True)
class Versions:
    """What the instance's environment must match: the dispatcher's Python minor version and
    its covalent and cloudpickle (cloudpickle needs all three the same on both sides)."""

    python: str
    covalent: str
    cloudpickle: str

    @classmethod
    def installed(cls, python: str) -> Versions:
        version = importlib.metadata.version
        return cls(python=python, covalent=version("covalent"), cloudpickle=version("cloudpickle"))


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Everything the stack needs that had to be looked up or made."""

    identity: ClientIdentity
    image: Image
    key_name: str
    network: NetworkPlan
    versions: Versions

    @property
    def warnings(self) -> tuple[str, ...]:
        """What may go wrong that the plan could not rule out (logged as warnings)."""
        return self.network.warnings


def plan(aws: AWS, options: Options, *, spread_key: str = "") -> Plan:
    """Every check that can refuse the options, in the order a user would fix them.

    `spread_key` (the stack name) picks where in the region's zones this electron starts.
    """
    identity = client_identity(options.key_file)
    aws.check_credentials()
    ec2 = aws.ec2
    arch = architecture(ec2, options)
    versions = Versions.installed(options.python_version)
    chosen_image = image(ec2, options, arch, versions)
    key_name = key_pair_name(ec2, options)
    network = plan_network(ec2, options, spread_key=spread_key)
    return Plan(
        identity=identity,
        image=chosen_image,
        key_name=key_name,
        network=egress.checked(ec2, network, installs=chosen_image.installs),
        versions=versions,
    )


def architecture(ec2: EC2Client, options: Options) -> str:
    """'arm64' or 'x86_64' for the instance type; refuses a type the region does not offer."""
    try:
        with aws_errors(f"looking up instance type {options.instance_type!r}"):
            found = ec2.describe_instance_types(InstanceTypes=[options.instance_type])  # type: ignore[list-item]
    except AWSError as exc:
        if exc.code.startswith("InvalidInstanceType"):
            raise ConfigurationError(
                f"Option 'instance_type' is {options.instance_type!r}, which region "
                f"{options.region!r} does not offer; pick another type or region."
            ) from exc
        raise
    kinds = found["InstanceTypes"][0]["ProcessorInfo"]["SupportedArchitectures"]
    return "arm64" if "arm64" in kinds and "x86_64" not in kinds else "x86_64"


def image(ec2: EC2Client, options: Options, arch: str, versions: Versions) -> Image:
    """`ami` when given; else the newest baked image that fits, else the stock image."""
    latest = AL2023_SSM_PARAMETER.format(arch=arch)
    if not options.ami:
        needs = recipe(versions, arch, volume_size=options.volume_size)
        return _baked_or_stock(ec2, options, needs, latest)
    try:
        with aws_errors(f"looking up image {options.ami!r}"):
            images = ec2.describe_images(ImageIds=[options.ami])["Images"]
    except AWSError as exc:
        if not exc.code.startswith("InvalidAMIID"):
            raise
        images = []
    if not images:
        raise ConfigurationError(
            f"Option 'ami' is {options.ami!r}, but region {options.region!r} has no such image; "
            f"check the id and region, or leave 'ami' empty for Amazon Linux 2023."
        )
    found = images[0]
    if found.get("Architecture") and found["Architecture"] != arch:
        raise ConfigurationError(
            f"Option 'ami' is {options.ami!r}, an {found['Architecture']} image, but "
            f"'instance_type' {options.instance_type!r} is {arch}; pick a matching pair."
        )
    return Image(
        latest_ami_parameter=latest,
        image_id=options.ami,
        root_device=found.get("RootDeviceName") or DEFAULT_ROOT_DEVICE,
        installs=False,
        why="given as 'ami'",
    )


def recipe(versions: Versions, arch: str, pip: tuple[str, ...] = (), *, volume_size: int) -> Recipe:
    """What a baked image must hold for an electron (and what `bake` puts in), and the root
    volume it has (or is baked on)."""
    return Recipe(
        python=versions.python,
        covalent=versions.covalent,
        cloudpickle=versions.cloudpickle,
        arch=arch,
        pip=pip,
        files=instance_files_version(),
        volume_size=volume_size,
    )


def _baked_or_stock(ec2: EC2Client, options: Options, needs: Recipe, latest: str) -> Image:
    stock = "Amazon Linux 2023 (stock; the bootstrap installs Python, covalent and cloudpickle)"
    if not options.use_baked_image:
        return Image(latest_ami_parameter=latest, why=f"{stock}: use_baked_image=False")
    match = newest_match(ec2, needs)
    baked, larger = match.image, match.too_large
    if baked is None and larger is not None:
        return Image(
            latest_ami_parameter=latest,
            why=(
                f"{stock}: baked image {larger.image_id} ({larger.name}) matches, but its "
                f"{larger.volume_size} GiB snapshot is larger than 'volume_size' "
                f"{needs.volume_size} (EC2 refuses a root volume smaller than the image's "
                f"snapshot); set volume_size={larger.volume_size} to use it, or bake one at "
                f"this size ('ec2-executor bake -o volume_size={needs.volume_size}')"
            ),
        )
    if baked is None:
        return Image(
            latest_ami_parameter=latest,
            why=f"{stock}: no baked image matches ('ec2-executor bake' makes one)",
        )
    return Image(
        latest_ami_parameter=latest,
        image_id=baked.image_id,
        root_device=baked.root_device or DEFAULT_ROOT_DEVICE,
        installs=False,
        why=(
            f"baked {baked.name} ({baked.recipe_text()}), the newest that matches and fits "
            f"'volume_size' {needs.volume_size}"
        ),
    )


def key_pair_name(ec2: EC2Client, options: Options) -> str:
    """The EC2 key pair to attach, or '' when none is needed.

    The instance always authorises the client key through its user data, so a key pair is
    optional: an explicit `key_name` must exist, the seed's default (the key file's name) is
    attached only when such a pair exists.
    """
    name = options.effective_key_name
    if not name:
        return ""
    try:
        with aws_errors(f"looking up key pair {name!r}"):
            ec2.describe_key_pairs(KeyNames=[name])
        return name
    except AWSError as exc:
        if exc.code != "InvalidKeyPair.NotFound":
            raise
        if not options.key_name:
            return ""
        raise ConfigurationError(
            f"Option 'key_name' is {name!r}, but region {options.region!r} has no such key "
            f"pair; import the public key of 'ssh_key_file' as that key pair, or drop "
            f"'key_name'."
        ) from exc
