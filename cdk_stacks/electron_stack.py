"""`ElectronStack`: the network, security group and instance that one electron runs on."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from cdk_stacks.parameters import (
    LAUNCH_TEMPLATE_TAG,
    PARAMETERS,
    TAG_SLOTS,
    Parameter,
    render,
    tag_key_parameter,
    tag_value_parameter,
)
from cdk_stacks.shape import NetworkMode, StackShape
from cdk_stacks.user_data import cloud_config_template, instance_files

CREATED_VPC_CIDR = "10.64.0.0/16"
CREATED_SUBNET_CIDR = "10.64.0.0/24"
_NO_VALUE = {"Ref": "AWS::NoValue"}


class ElectronStack(cdk.Stack):
    """One template per `StackShape`; every per-electron value is a `CfnParameter`.

    Only L1 resources: the L2 `Vpc` and `Instance` add IAM roles, custom resources and
    launch templates that cost minutes of CloudFormation time per electron.
    """

    def __init__(self, scope: Construct, construct_id: str, *, shape: StackShape, **kw: Any):
        super().__init__(scope, construct_id, **kw)
        self.shape = shape
        self.template_options.description = (
            f"ec2-executor: one Covalent electron on a throw-away EC2 instance ({shape.key})"
        )
        p = self._declare_parameters()
        vpc_id, subnet_id, route = self._network(p)
        group = self._security_group(p, vpc_id)
        instance = self._instance(p, subnet_id, group)
        if route is not None:
            # The bootstrap needs the internet at first boot.
            instance.add_resource_dependency(route)
        self._outputs(instance, p.get("ExpectPublicIp"))

    # --- parameters -------------------------------------------------------------------------

    def _declare_parameters(self) -> dict[str, cdk.CfnParameter]:
        return {
            p.name: cdk.CfnParameter(self, p.name, **_cfn_parameter_props(p))
            for p in PARAMETERS
            if p.declared_in(self.shape.network)
        }

    def _is_set(self, name: str, parameter: cdk.CfnParameter) -> cdk.CfnCondition:
        return cdk.CfnCondition(
            self,
            f"Has{name}",
            expression=cdk.Fn.condition_not(cdk.Fn.condition_equals(parameter.value_as_string, "")),
        )

    def _is_true(self, name: str, parameter: cdk.CfnParameter) -> cdk.CfnCondition:
        return cdk.CfnCondition(
            self, name, expression=cdk.Fn.condition_equals(parameter.value_as_string, "true")
        )

    # --- network ----------------------------------------------------------------------------

    def _network(self, p: dict[str, cdk.CfnParameter]) -> tuple[str, str, cdk.CfnResource | None]:
        if self.shape.network is NetworkMode.EXISTING:
            return p["VpcId"].value_as_string, p["SubnetId"].value_as_string, None
        vpc = ec2.CfnVPC(
            self,
            "Vpc",
            cidr_block=CREATED_VPC_CIDR,
            enable_dns_hostnames=True,
            enable_dns_support=True,
        )
        subnet = ec2.CfnSubnet(
            self,
            "PublicSubnet",
            vpc_id=vpc.ref,
            cidr_block=CREATED_SUBNET_CIDR,
            map_public_ip_on_launch=True,
            availability_zone=cdk.Fn.condition_if(
                self._is_set("AvailabilityZone", p["AvailabilityZone"]).logical_id,
                p["AvailabilityZone"].value_as_string,
                cdk.Fn.select(0, cdk.Fn.get_azs()),
            ).to_string(),
        )
        gateway = ec2.CfnInternetGateway(self, "InternetGateway")
        attachment = ec2.CfnVPCGatewayAttachment(
            self, "GatewayAttachment", vpc_id=vpc.ref, internet_gateway_id=gateway.ref
        )
        table = ec2.CfnRouteTable(self, "RouteTable", vpc_id=vpc.ref)
        ec2.CfnSubnetRouteTableAssociation(
            self, "RouteTableAssociation", subnet_id=subnet.ref, route_table_id=table.ref
        )
        route = ec2.CfnRoute(
            self,
            "DefaultRoute",
            route_table_id=table.ref,
            destination_cidr_block="0.0.0.0/0",
            gateway_id=gateway.ref,
        )
        route.add_resource_dependency(attachment)
        return vpc.ref, subnet.ref, route

    def _security_group(self, p: dict[str, cdk.CfnParameter], vpc_id: str) -> ec2.CfnSecurityGroup:
        port = p["SshPort"].value_as_number
        return ec2.CfnSecurityGroup(
            self,
            "SshAccess",
            group_description="SSH from the dispatching machine only",
            vpc_id=vpc_id,
            security_group_ingress=[
                ec2.CfnSecurityGroup.IngressProperty(
                    ip_protocol="tcp",
                    from_port=port,
                    to_port=port,
                    cidr_ip=p["SshIngressCidr"].value_as_string,
                    description="SSH from the dispatching machine",
                )
            ],
            security_group_egress=[
                ec2.CfnSecurityGroup.EgressProperty(
                    ip_protocol="-1",
                    cidr_ip="0.0.0.0/0",
                    description="Package installs for the task environment",
                )
            ],
        )

    # --- instance ---------------------------------------------------------------------------

    def _instance(
        self, p: dict[str, cdk.CfnParameter], subnet_id: str, group: ec2.CfnSecurityGroup
    ) -> ec2.CfnInstance:
        def if_set(name: str) -> str:
            return cdk.Fn.condition_if(
                self._is_set(name, p[name]).logical_id, p[name].value_as_string, cdk.Aws.NO_VALUE
            ).to_string()

        spot = self._is_true("SpotRequested", p["UseSpot"])
        launch_template = self._launch_template(p, spot)
        user_data = cloud_config_template(instance_files())
        return ec2.CfnInstance(
            self,
            "Instance",
            image_id=cdk.Fn.condition_if(
                self._is_set("ImageId", p["ImageId"]).logical_id,
                p["ImageId"].value_as_string,
                p["LatestAmi"].value_as_string,
            ).to_string(),
            instance_type=p["InstanceType"].value_as_string,
            key_name=if_set("KeyName"),
            iam_instance_profile=if_set("InstanceProfile"),
            subnet_id=subnet_id,
            security_group_ids=[group.attr_group_id],
            instance_initiated_shutdown_behavior="terminate",
            metadata_options=ec2.CfnInstance.MetadataOptionsProperty(
                http_tokens="required", http_endpoint="enabled", http_put_response_hop_limit=1
            ),
            block_device_mappings=[
                ec2.CfnInstance.BlockDeviceMappingProperty(
                    device_name=p["RootDeviceName"].value_as_string,
                    ebs=ec2.CfnInstance.EbsProperty(
                        volume_size=p["VolumeSize"].value_as_number,
                        volume_type="gp3",
                        encrypted=True,
                        delete_on_termination=True,
                    ),
                )
            ],
            # Stack tags reach the instance; this copies them to its root volume.
            propagate_tags_to_volume_on_creation=True,
            launch_template=ec2.CfnInstance.LaunchTemplateSpecificationProperty(
                launch_template_id=launch_template.ref,
                version=launch_template.attr_latest_version_number,
            ),
            user_data=cdk.Fn.base64(cdk.Fn.sub(user_data)),
        )

    def _launch_template(
        self, p: dict[str, cdk.CfnParameter], spot: cdk.CfnCondition
    ) -> ec2.CfnLaunchTemplate:
        """What `AWS::EC2::Instance` cannot say itself: the spot market, and tags for the
        network interface and spot request that the launch creates (stack tags do not reach
        them). The tags come from the `TagNKey`/`TagNValue` parameter slots."""
        # Plain JSON rather than tokens: jsii resolves a few hundred nested tokens slowly.
        tags = []
        for slot in range(1, TAG_SLOTS + 1):
            key, value = tag_key_parameter(slot), tag_value_parameter(slot)
            has = self._is_set(key, p[key]).node.id
            tags.append(
                {"Fn::If": [has, {"Key": {"Ref": key}, "Value": {"Ref": value}}, _NO_VALUE]}
            )

        def tagged(resource_type: str) -> dict[str, Any]:
            return {"ResourceType": resource_type, "Tags": tags}

        market = {
            "MarketType": "spot",
            "SpotOptions": {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            },
        }
        template = ec2.CfnLaunchTemplate(
            self,
            "LaunchTemplate",
            launch_template_data=ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(),
        )
        # The launch template gets no stack tags (its type takes none): this tag lets the
        # policy allow deleting only the stacks' own launch templates.
        template.add_property_override(
            "TagSpecifications",
            [
                {
                    "ResourceType": "launch-template",
                    "Tags": [{"Key": LAUNCH_TEMPLATE_TAG, "Value": {"Ref": "AWS::StackName"}}],
                }
            ],
        )
        # Raw CloudFormation: the conditional parts are not expressible as typed properties.
        template.add_property_override(
            "LaunchTemplateData",
            {
                "InstanceMarketOptions": {"Fn::If": [spot.node.id, market, _NO_VALUE]},
                "TagSpecifications": [
                    tagged("network-interface"),
                    {"Fn::If": [spot.node.id, tagged("spot-instances-request"), _NO_VALUE]},
                ],
            },
        )
        return template

    def _outputs(
        self, instance: ec2.CfnInstance, expect_public_ip: cdk.CfnParameter | None
    ) -> None:
        cdk.CfnOutput(self, "InstanceId", value=instance.ref)
        cdk.CfnOutput(self, "PrivateIp", value=instance.attr_private_ip)
        public = cdk.CfnOutput(self, "PublicIp", value=instance.attr_public_ip)
        if expect_public_ip is not None:  # an existing subnet may give no public address
            public.condition = self._is_true("PublicIpExpected", expect_public_ip)


def _cfn_parameter_props(p: Parameter) -> dict[str, Any]:
    props: dict[str, Any] = {"type": p.type, "description": p.description}
    if p.default is not None:
        props["default"] = p.default if p.type == "Number" else render(p.default)
    if p.is_flag:
        props["allowed_values"] = ["true", "false"]
    if p.min_value is not None:
        props["min_value"] = p.min_value
    if p.max_value is not None:
        props["max_value"] = p.max_value
    if p.pattern is not None:
        props["allowed_pattern"] = p.pattern
        props["constraint_description"] = p.constraint
    if p.no_echo:
        props["no_echo"] = True
    return props
