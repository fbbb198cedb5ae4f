"""`ec2-executor bake`: an image with the bootstrap already done.

The same stack an electron gets is deployed from the stock image; a first task proves the
environment; `bake.sh` adds the extra packages and removes what belongs to that instance only;
CreateImage makes the image, tagged with its recipe. The stack is deleted whatever happens.
"""

from __future__ import annotations

import dataclasses
import platform
import shlex
import time
from typing import TYPE_CHECKING, Any

from cdk_stacks.user_data import package_file
from ec2_executor.blocking import run_blocking
from ec2_executor.cloud import lookups
from ec2_executor.cloud.aws import AWS, aws_errors
from ec2_executor.cloud.images import TAG, BakedImage, Recipe, baked_images, delete_image
from ec2_executor.electron import Electron, Host, Launched, launch, new_host, run_task
from ec2_executor.errors import EC2ExecutorError
from ec2_executor.logs import log
from ec2_executor.options import Options

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

BAKE_SCRIPT = package_file("bake.sh").read_bytes()
IMAGE_WAIT: Any = {"Delay": 15, "MaxAttempts": 120}
"""Up to 30 minutes for the image to become available (a few minutes is usual)."""


class BakeError(EC2ExecutorError):
    """The image could not be made; the message says at which step."""


@dataclasses.dataclass(frozen=True)
class Baked:
    image: BakedImage
    made: bool
    """False when a matching image existed already."""


async def bake(options: Options, *, pip: tuple[str, ...] = (), force: bool = False) -> Baked:
    """The baked image for `options`' instance type and this dispatcher's versions."""
    ec2 = AWS(options).ec2
    arch = await run_blocking(lookups.architecture, ec2, options)
    versions = lookups.Versions.installed(options.python_version)
    recipe = lookups.recipe(versions, arch, pip, volume_size=options.volume_size)
    if not force:
        found = await run_blocking(baked_images, ec2, {TAG + "key": recipe.key})
        if found:
            return Baked(image=found[0], made=False)
    stock = dataclasses.replace(options, ami="", use_baked_image=False, wait_for_deletion=True)
    electron = Electron(
        stock, {"dispatch_id": f"bake-{recipe.key[:12]}", "node_id": time.time_ns()}
    )
    launched: Launched | None = None
    host: Host | None = None
    try:
        launched = await launch(electron)
        host = new_host(electron, launched)
        outcome = await run_task(electron, launched, host, (platform.python_version, [], {}))
        if outcome.error:
            raise BakeError(
                f"The first task on the instance failed: {outcome.error}\n{outcome.traceback}"
            )
        command = shlex.join(["bash", "-s", "--", *pip])
        status, _, err = await run_blocking(host.remote.execute, command, stdin=BAKE_SCRIPT)
        if status != 0:
            raise BakeError(
                f"Readying the instance failed (exit {status}):\n{err.decode()[-2000:]}"
            )
        image = await run_blocking(
            _create_image, ec2, launched.outputs.instance_id, recipe, electron.name
        )
        return Baked(image=image, made=True)
    finally:
        await electron.destroy(launched, host)


def _create_image(ec2: EC2Client, instance_id: str, recipe: Recipe, stack: str) -> BakedImage:
    name = f"ec2-executor-{recipe.key[:12]}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags: list[Any] = [{"Key": k, "Value": v} for k, v in {**recipe.tags(), "Name": name}.items()]
    with aws_errors(f"creating an image of {instance_id}"):
        image_id = ec2.create_image(
            InstanceId=instance_id,
            Name=name,
            Description=f"ec2-executor baked image (from stack {stack})",
            # Snapshots tagged as they are made: the policy deletes only tagged ones.
            TagSpecifications=[
                {"ResourceType": "image", "Tags": tags},
                {"ResourceType": "snapshot", "Tags": tags},
            ],
        )["ImageId"]
    log.info("bake: %s is being made from %s", image_id, instance_id)
    try:
        with aws_errors(f"waiting for image {image_id} to become available"):
            ec2.get_waiter("image_available").wait(ImageIds=[image_id], WaiterConfig=IMAGE_WAIT)
            found = BakedImage.from_ec2(ec2.describe_images(ImageIds=[image_id])["Images"][0])
        if found.snapshots:  # for cost reports; known once the image is available
            with aws_errors(f"tagging the snapshots of {image_id}"):
                ec2.create_tags(Resources=list(found.snapshots), Tags=tags)
    except BaseException:
        _discard(ec2, image_id)
        raise
    return found


def _discard(ec2: EC2Client, image_id: str) -> None:
    """A half-made image is removed rather than left to be found (or billed) later."""
    snapshots: tuple[str, ...] = ()
    try:
        with aws_errors(f"reading image {image_id}"):
            found = ec2.describe_images(ImageIds=[image_id])["Images"]
        snapshots = BakedImage.from_ec2(found[0]).snapshots if found else ()
    except EC2ExecutorError as exc:
        log.error("bake: snapshots of %s may remain (AWS said: %s)", image_id, exc)
    try:
        delete_image(ec2, image_id, snapshots)
    except EC2ExecutorError as exc:
        log.error("bake: could not remove the unfinished image %s: %s", image_id, exc)
