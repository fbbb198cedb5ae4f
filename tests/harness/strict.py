"""Where moto is kinder than AWS, made as strict as AWS (patched in the process that runs moto).

- **VPC quota.** AWS allows 5 VPCs per region by default, the default VPC among them;
  CreateVpc past that fails with `VpcLimitExceeded` (Amazon VPC User Guide, "Amazon VPC
  quotas"). moto has no limit.
- **Images fit their volumes.** An image made by CreateImage has a snapshot of the instance's
  root volume, as large as that volume, on the instance's root device; moto gives every image
  a 15 GiB snapshot on /dev/sda1. A launch that maps the image's root device to a smaller
  volume fails as on AWS: `InvalidBlockDeviceMapping`, "Volume of size 8GB is smaller than
  snapshot 'snap-...', expect size >= 20GB". moto's own canned images keep their invented
  sizes and are not checked (the real Amazon Linux 2023 snapshot is 8 GiB).
- **The default VPC routes out.** AWS's default VPC has an internet gateway and a route
  0.0.0.0/0 to it in its main route table; moto's has neither.

And where moto is wrong in a way AWS never is:

- **A deleted stack stays deleted.** moto builds a stack's resources lazily, on their first
  reference, and its deletion forgets them; a read of the stack's outputs or resources during
  or after the deletion (a `DescribeStacks`, the first to read the outputs) builds them again:
  a new, untagged instance that nothing deletes. A stack whose deletion has begun reads as
  AWS shows it: no outputs, no resources but those still being deleted.
"""

from __future__ import annotations

from typing import Any

VPC_QUOTA = 5
"""VPCs per region, AWS's default quota."""
VPC_LIMIT_MESSAGE = "The maximum number of VPCs has been reached."


def make_moto_strict() -> None:
    """Apply every patch above to this process's moto; idempotent."""
    from moto.ec2.models import EC2Backend

    if getattr(EC2Backend, "as_strict_as_aws", False):
        return
    _limit_vpcs()
    _snapshots_fit()
    _default_vpc_routes_out()
    _deleted_stacks_stay_deleted()
    EC2Backend.as_strict_as_aws = True  # type: ignore[attr-defined]


def _limit_vpcs() -> None:
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.vpcs import VPCBackend

    create_vpc = VPCBackend.create_vpc

    def limited(self: Any, *args: Any, **kwargs: Any) -> Any:
        if len(self.vpcs) >= VPC_QUOTA:
            raise EC2ClientError("VpcLimitExceeded", VPC_LIMIT_MESSAGE)
        return create_vpc(self, *args, **kwargs)

    VPCBackend.create_vpc = limited  # type: ignore[method-assign]


def _snapshots_fit() -> None:
    from moto.ec2.models.amis import Ami, AmiBackend
    from moto.ec2.models.instances import InstanceBackend

    create_image = AmiBackend.create_image
    canned = Ami.block_device_mappings

    def create_sized_image(self: Any, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        image = create_image(self, instance_id, *args, **kwargs)
        instance = self.get_instance(instance_id)
        devices = dict(instance.get_block_device_mapping)
        device = instance.root_device_name if instance.root_device_name in devices else ""
        device = device or next(iter(devices), "")
        if device:
            volume = self.get_volume(devices[device].volume_id)
            image.root_device_name = device
            image.root_size = int(volume.size)  # type: ignore[attr-defined]
            image.ebs_snapshot.volume = volume
        return image

    def mappings(self: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = canned.fget(self)  # type: ignore[attr-defined]
        size = getattr(self, "root_size", None)
        if size is not None:
            for mapping in found:
                mapping["Ebs"]["VolumeSize"] = size
        return found

    run_instances = InstanceBackend.run_instances

    def run_fitting(self: Any, image_id: str, *args: Any, **kwargs: Any) -> Any:
        _refuse_smaller_than_snapshot(self, image_id, _requested_mappings(self, kwargs))
        return run_instances(self, image_id, *args, **kwargs)

    AmiBackend.create_image = create_sized_image  # type: ignore[method-assign]
    Ami.block_device_mappings = property(mappings)  # type: ignore[assignment,method-assign]
    InstanceBackend.run_instances = run_fitting  # type: ignore[method-assign]


def _requested_mappings(backend: Any, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    if kwargs.get("block_device_mappings"):
        return list(kwargs["block_device_mappings"])
    if kwargs.get("launch_template"):
        template = backend._get_template_from_args(kwargs["launch_template"])
        return list(template.data.get("BlockDeviceMappings") or [])
    return []


def _refuse_smaller_than_snapshot(
    backend: Any, image_id: str, requested: list[dict[str, Any]]
) -> None:
    from moto.ec2.exceptions import EC2ClientError

    image = backend.amis.get(image_id)
    if image is None or getattr(image, "root_size", None) is None:
        return  # moto's canned images: their sizes are invented
    snapshots = {
        m["DeviceName"]: (m["Ebs"]["SnapshotId"], int(m["Ebs"]["VolumeSize"]))
        for m in image.block_device_mappings
    }
    for mapping in requested:
        size = (mapping.get("Ebs") or {}).get("VolumeSize")
        if size is None or mapping.get("DeviceName") not in snapshots:
            continue
        snapshot, needed = snapshots[mapping["DeviceName"]]
        if int(size) < needed:
            raise EC2ClientError(
                "InvalidBlockDeviceMapping",
                f"Volume of size {int(size)}GB is smaller than snapshot '{snapshot}', "
                f"expect size >= {needed}GB",
            )


def _default_vpc_routes_out() -> None:
    from moto.ec2.models.vpcs import VPCBackend

    create_default_vpc = VPCBackend.create_default_vpc

    def with_gateway(self: Any) -> Any:
        vpc = create_default_vpc(self)
        gateway = self.create_internet_gateway()
        self.attach_internet_gateway(gateway.id, vpc.id)
        main = next(t for t in self.route_tables.values() if t.vpc_id == vpc.id)
        self.create_route(main.id, "0.0.0.0/0", gateway_id=gateway.id)
        return vpc

    VPCBackend.create_default_vpc = with_gateway  # type: ignore[method-assign]


def _deleted_stacks_stay_deleted() -> None:
    from moto.cloudformation.models import Stack
    from moto.cloudformation.parsing import ResourceMap
    from moto.core.common_models import CloudFormationModel

    delete, resource = ResourceMap.delete, ResourceMap.__getitem__
    outputs, resources = Stack.outputs, Stack.stack_resources

    def deleting(self: Any) -> None:
        self.deletion_begun = True
        delete(self)

    def built_before(self: Any, logical_id: str) -> Any:
        if getattr(self, "deletion_begun", False) and logical_id not in self._parsed_resources:
            raise KeyError(f"{logical_id}: the stack is deleted; moto would build it again")
        return resource(self, logical_id)

    def no_outputs_once_deleted(self: Any) -> Any:
        if getattr(self.resource_map, "deletion_begun", False):
            return None
        return outputs.fget(self)  # type: ignore[attr-defined]

    def resources_left(self: Any) -> Any:
        if getattr(self.resource_map, "deletion_begun", False):
            left = self.resource_map._parsed_resources.values()  # and pseudo parameters
            return [r for r in left if isinstance(r, CloudFormationModel)]
        return resources.fget(self)  # type: ignore[attr-defined]

    ResourceMap.delete = deleting  # type: ignore[method-assign]
    ResourceMap.__getitem__ = built_before  # type: ignore[method-assign]
    Stack.outputs = property(no_outputs_once_deleted)  # type: ignore[assignment,method-assign]
    Stack.stack_resources = property(resources_left)  # type: ignore[assignment,method-assign]
