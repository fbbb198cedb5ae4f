"""Baked images: the bootstrap done once, ahead of time, and found again by what went in.

A baked image is tagged with its recipe (Python minor, covalent, cloudpickle, architecture,
extra pip packages, the instance files' own version and the root volume's size). An electron
without `ami` uses the newest baked image whose recipe meets its needs (any extra packages are a
bonus) and whose snapshot fits its `volume_size` (EC2 refuses a root volume smaller than the
image's snapshot), so the bootstrap finds everything in place and only starts the warm worker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from cdk_stacks.user_data import INSTANCE_FILES, package_file
from ec2_executor.cloud.aws import aws_errors

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

TAG = "ec2-executor:bake:"
"""Prefix of the recipe's tags on a baked image and its snapshots."""


@cache
def instance_files_version() -> str:
    """A digest of bootstrap.sh, runner.py and run-task.sh: an image baked with other files
    is not reused."""
    digest = hashlib.sha256()
    for name in sorted(INSTANCE_FILES):
        digest.update(name.encode() + b"\0" + package_file(name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What goes into a baked image."""

    python: str
    covalent: str
    cloudpickle: str
    arch: str
    pip: tuple[str, ...] = ()
    files: str = ""
    """`instance_files_version()` of the package that baked it."""
    volume_size: int = 0
    """GiB of the root volume baked (the snapshot's size): an electron's `volume_size` must be
    at least this. Not a need: any image that fits serves."""

    @property
    def key(self) -> str:
        text = json.dumps({**asdict(self), "pip": sorted(self.pip)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def tags(self) -> dict[str, str]:
        """The image's tags: every field, and the key over all of them."""
        fields = {k: v for k, v in asdict(self).items() if k != "pip"}
        return {
            **{TAG + k: str(v) for k, v in fields.items()},
            TAG + "pip": " ".join(sorted(self.pip)),
            TAG + "key": self.key,
        }

    def needs(self) -> dict[str, str]:
        """The tags an image must carry to serve an electron of this recipe (pip and the
        volume's size aside: extra packages are a bonus, and a smaller snapshot fits)."""
        aside = (TAG + "pip", TAG + "key", TAG + "volume_size")
        return {k: v for k, v in self.tags().items() if k not in aside}


@dataclass(frozen=True, kw_only=True)
class BakedImage:
    image_id: str
    name: str
    created: str
    state: str
    tags: Mapping[str, str]
    snapshots: tuple[str, ...]
    root_device: str = ""
    root_size: int = 0
    """GiB of the root device's snapshot, as the image's block device mapping gives it."""

    @classmethod
    def from_ec2(cls, image: Mapping[str, Any]) -> BakedImage:
        mappings = image.get("BlockDeviceMappings", [])
        root_device = image.get("RootDeviceName", "")
        root: Mapping[str, Any] = next(
            (m for m in mappings if m.get("DeviceName") == root_device), {}
        )
        return cls(
            image_id=image["ImageId"],
            name=image.get("Name", ""),
            created=image.get("CreationDate", ""),
            state=image.get("State", ""),
            tags={t["Key"]: t["Value"] for t in image.get("Tags", [])},
            snapshots=tuple(
                m["Ebs"]["SnapshotId"] for m in mappings if m.get("Ebs", {}).get("SnapshotId")
            ),
            root_device=root_device,
            root_size=int(root.get("Ebs", {}).get("VolumeSize") or 0),
        )

    @property
    def volume_size(self) -> int:
        """The smallest root volume (GiB) an instance of the image may have: its snapshot's
        size, or the recipe's record of it (the larger, should they differ)."""
        recorded = self.tags.get(TAG + "volume_size", "")
        return max(self.root_size, int(recorded) if recorded.isdigit() else 0)

    def fits(self, volume_size: int) -> bool:
        return self.volume_size <= volume_size

    def recipe_text(self) -> str:
        t = {k.removeprefix(TAG): v for k, v in self.tags.items() if k.startswith(TAG)}
        extra = f", pip: {t['pip']}" if t.get("pip") else ""
        size = f", root {self.volume_size} GiB" if self.volume_size else ""
        return (
            f"python {t.get('python', '?')}, covalent {t.get('covalent', '?')}, cloudpickle "
            f"{t.get('cloudpickle', '?')}, {t.get('arch', '?')}{extra}{size}"
        )


def baked_images(ec2: EC2Client, tags: Mapping[str, str] | None = None) -> list[BakedImage]:
    """This account's baked images in the region, newest first, with all of `tags`."""
    wanted = tags or {TAG + "key": "*"}
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in wanted.items()]
    with aws_errors("listing the baked images"):
        found = ec2.describe_images(Owners=["self"], Filters=filters)["Images"]  # type: ignore[arg-type]
    images = [BakedImage.from_ec2(i) for i in found]
    return sorted(images, key=lambda i: i.created, reverse=True)


@dataclass(frozen=True)
class Match:
    """The baked image an electron gets, and the newest one it could not take for its size."""

    image: BakedImage | None
    too_large: BakedImage | None = None
    """The newest matching image whose snapshot is larger than the electron's volume."""


def newest_match(ec2: EC2Client, recipe: Recipe) -> Match:
    """The newest available baked image that serves `recipe`'s electrons and fits their root
    volume (`recipe.volume_size`)."""
    usable = [i for i in baked_images(ec2, recipe.needs()) if i.state == "available"]
    fitting = [i for i in usable if i.fits(recipe.volume_size)]
    larger = [i for i in usable if not i.fits(recipe.volume_size)]
    return Match(image=fitting[0] if fitting else None, too_large=larger[0] if larger else None)


def delete_image(ec2: EC2Client, image_id: str, snapshots: tuple[str, ...]) -> None:
    """Deregister the image, then delete its snapshots (which otherwise go on billing)."""
    with aws_errors(f"deregistering image {image_id}"):
        ec2.deregister_image(ImageId=image_id)
    for snapshot in snapshots:
        with aws_errors(f"deleting snapshot {snapshot} of {image_id}"):
            ec2.delete_snapshot(SnapshotId=snapshot)
