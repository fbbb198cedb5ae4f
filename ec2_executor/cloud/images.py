"""Baked images: the bootstrap done once, ahead of time, and found again by what went in.

A baked image is tagged with its recipe (Python minor, covalent, cloudpickle, architecture,
extra pip packages, and the instance files' own version). An electron without `ami` uses the
newest baked image whose recipe meets its needs (any extra packages are a bonus), so the
bootstrap finds everything in place and only starts the warm worker.
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
        """The tags an image must carry to serve an electron of this recipe (pip aside)."""
        return {k: v for k, v in self.tags().items() if k not in (TAG + "pip", TAG + "key")}


@dataclass(frozen=True, kw_only=True)
class BakedImage:
    image_id: str
    name: str
    created: str
    state: str
    tags: Mapping[str, str]
    snapshots: tuple[str, ...]

    @classmethod
    def from_ec2(cls, image: Mapping[str, Any]) -> BakedImage:
        return cls(
            image_id=image["ImageId"],
            name=image.get("Name", ""),
            created=image.get("CreationDate", ""),
            state=image.get("State", ""),
            tags={t["Key"]: t["Value"] for t in image.get("Tags", [])},
            snapshots=tuple(
                m["Ebs"]["SnapshotId"]
                for m in image.get("BlockDeviceMappings", [])
                if m.get("Ebs", {}).get("SnapshotId")
            ),
        )

    def recipe_text(self) -> str:
        t = {k.removeprefix(TAG): v for k, v in self.tags.items() if k.startswith(TAG)}
        extra = f", pip: {t['pip']}" if t.get("pip") else ""
        return (
            f"python {t.get('python', '?')}, covalent {t.get('covalent', '?')}, cloudpickle "
            f"{t.get('cloudpickle', '?')}, {t.get('arch', '?')}{extra}"
        )


def baked_images(ec2: EC2Client, tags: Mapping[str, str] | None = None) -> list[BakedImage]:
    """This account's baked images in the region, newest first, with all of `tags`."""
    wanted = tags or {TAG + "key": "*"}
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in wanted.items()]
    with aws_errors("listing the baked images"):
        found = ec2.describe_images(Owners=["self"], Filters=filters)["Images"]  # type: ignore[arg-type]
    images = [BakedImage.from_ec2(i) for i in found]
    return sorted(images, key=lambda i: i.created, reverse=True)


def newest_match(ec2: EC2Client, recipe: Recipe) -> BakedImage | None:
    """The newest available baked image that serves `recipe`'s electrons."""
    usable = [i for i in baked_images(ec2, recipe.needs()) if i.state == "available"]
    return usable[0] if usable else None


def delete_image(ec2: EC2Client, image_id: str, snapshots: tuple[str, ...]) -> None:
    """Deregister the image, then delete its snapshots (which otherwise go on billing)."""
    with aws_errors(f"deregistering image {image_id}"):
        ec2.deregister_image(ImageId=image_id)
    for snapshot in snapshots:
        with aws_errors(f"deleting snapshot {snapshot} of {image_id}"):
            ec2.delete_snapshot(SnapshotId=snapshot)
