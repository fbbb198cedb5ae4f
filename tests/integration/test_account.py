"""A real account's refusals, played by moto: permissions, capacity, expired credentials.

Refusals are injected in front of or inside the moto server (`harness.faults`), never into the
executor: the executor's own boto3 calls meet AWS's error responses.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from executor_support import execute, harness_options, run
from harness import LoopbackNetwork, MotoServer, aws_texts
from harness.boot import EmulatedBoot
from harness.cloud_state import assert_nothing_left, instances_in, live_stacks
from harness.faults import (
    CapacityPlan,
    Fault,
    FaultProxy,
    access_denied,
    capacity_refused,
    fault_proxy,
    terminate_for_capacity,
)
from harness.timed_cloud import TimedCloud, Timeline

from ec2_executor import (
    CapacityError,
    ConfigurationError,
    PermissionDeniedError,
)
from ec2_executor.cloud.capacity import spread
from ec2_executor.cloud.stacks import stack_name
from ec2_executor.ec2 import EC2Executor

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SECOND_SUBNET_CIDR = "127.0.3.0/24"
REPO = Path(__file__).resolve().parents[2]


def double(x: int) -> int:
    return 2 * x


def slow_double(x: int) -> int:
    import time

    time.sleep(15)  # long enough for the watch to meet every fault and then moto
    return 2 * x


@pytest.fixture
def proxy(moto_reset: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The executor reaches moto through a fault proxy (the harness still sees moto itself)."""
    with fault_proxy(moto_reset.url) as faults:
        monkeypatch.setenv("AWS_ENDPOINT_URL", faults.url)
        yield faults


def two_zone_vpc(moto: MotoServer, network: LoopbackNetwork) -> dict[str, str]:
    """The loopback VPC with a second loopback subnet in another zone: zone -> subnet id."""
    ec2 = moto.client("ec2")
    second = ec2.create_subnet(
        VpcId=network.vpc_id, CidrBlock=SECOND_SUBNET_CIDR, AvailabilityZone="us-east-1b"
    )["Subnet"]["SubnetId"]
    return {"us-east-1a": network.subnet_id, "us-east-1b": second}


def dispatch_starting_in(zone: str, zones: list[str]) -> str:
    """A dispatch id whose electron's spread order starts in `zone`."""
    for n in range(100):
        if spread(zones, stack_name(f"capacity-{n}", 0), str)[0] == zone:
            return f"capacity-{n}"
    raise AssertionError(zone)


def in_vpc(network: LoopbackNetwork, remote_cache: str, **overrides: Any) -> EC2Executor:
    """Harness options, but only the VPC given: the executor picks the subnets (zones)."""
    options = harness_options(network.subnet_id, remote_cache, **overrides)
    options.update(subnet="", vpc=network.vpc_id)
    return EC2Executor(**options)


# --- permissions --------------------------------------------------------------------------


def test_access_denied_on_create_stack_names_the_action_and_reports_no_stack(
    loopback_network: LoopbackNetwork, proxy: FaultProxy, moto_reset: MotoServer, remote_cache: str
) -> None:
    proxy.add(access_denied("cloudformation", "CreateStack"))
    ex = EC2Executor(**harness_options(loopback_network.subnet_id, remote_cache))
    with pytest.raises(PermissionDeniedError) as refused:
        run(execute(ex, double, [1], {}))
    message = str(refused.value)
    assert refused.value.action == "cloudformation:CreateStack"
    assert "'cloudformation:CreateStack'" in message and "ec2-executor policy" in message
    assert "could not be deleted" not in message
    # The stack never existed: nothing to delete, nothing reported as left behind.
    assert proxy.answered("cloudformation", "DeleteStack") == []
    assert live_stacks(moto_reset) == []


def test_access_denied_while_planning_names_the_ec2_action(
    loopback_network: LoopbackNetwork, proxy: FaultProxy, moto_reset: MotoServer, remote_cache: str
) -> None:
    proxy.add(access_denied("ec2", "DescribeSubnets"))
    ex = EC2Executor(**harness_options(loopback_network.subnet_id, remote_cache))
    with pytest.raises(PermissionDeniedError, match=r"'ec2:DescribeSubnets'.*ec2-executor policy"):
        run(execute(ex, double, [1], {}))
    assert proxy.answered("cloudformation", "CreateStack") == []


def cli(*args: str, config_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if config_dir is not None:
        env["COVALENT_CONFIG_DIR"] = str(config_dir)
    return subprocess.run(
        [str(Path(sys.executable).with_name("ec2-executor")), *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )


def test_policy_command_prints_the_shipped_policy_and_the_readme_shows_it() -> None:
    done = cli("policy")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    shipped = json.loads((REPO / "ec2_executor" / "cloud" / "iam-policy.json").read_text())
    assert printed == shipped
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Permissions", 1)[1].split("\n## ", 1)[0]
    blocks = [json.loads(b.split("```", 1)[0]) for b in section.split("```json")[1:]]
    assert blocks[0] == shipped
    # With a CloudFormation service role: the user's policy, then the role's, in that order.
    for holder, block in zip(("user-with-role", "cloudformation-role"), blocks[1:], strict=True):
        done = cli("policy", "--for", holder)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == block, holder
    actions = {a for s in shipped["Statement"] for a in s["Action"]}
    for needed in (
        "cloudformation:CreateStack",
        "cloudformation:DescribeStacks",
        "cloudformation:DescribeStackEvents",
        "cloudformation:ListStacks",
        "cloudformation:DeleteStack",
        "ssm:GetParameters",
        "iam:PassRole",
        "pricing:GetProducts",
        "ec2:DescribeSpotPriceHistory",
        "ec2:RunInstances",
    ):
        assert needed in actions


def test_doctor_lists_each_missing_permission_and_creates_nothing(
    loopback_network: LoopbackNetwork,
    proxy: FaultProxy,
    moto_reset: MotoServer,
    template_cache: Path,
    tmp_path: Path,
) -> None:
    flags = ["-o", f"subnet={loopback_network.subnet_id}", "-o", "use_private_ip=true"]
    flags += ["-o", "ssh_ingress_cidr=127.0.0.1/32"]
    ec2 = moto_reset.client("ec2")
    before = (ec2.describe_vpcs()["Vpcs"], ec2.describe_security_groups()["SecurityGroups"])

    granted = cli("doctor", *flags, config_dir=tmp_path)
    assert "ok    permissions: all" in granted.stdout, granted.stdout + granted.stderr

    proxy.add(
        access_denied("cloudformation", "CreateStack"),
        access_denied("ec2", "RunInstances", when=lambda p: p.get("DryRun") == "true"),
        access_denied("ssm", "GetParameters"),
    )
    refused = cli("doctor", *flags, config_dir=tmp_path)
    assert refused.returncode == 1
    line = next(x for x in refused.stdout.splitlines() if "permissions" in x)
    assert line.startswith("FAIL")
    missing = line.split("missing: ", 1)[1].split(";", 1)[0].split(", ")
    assert missing == ["ec2:RunInstances", "cloudformation:CreateStack", "ssm:GetParameters"]
    assert "ec2-executor policy" in line
    after = (ec2.describe_vpcs()["Vpcs"], ec2.describe_security_groups()["SecurityGroups"])
    assert after == before
    assert ec2.describe_instances()["Reservations"] == []
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []
    assert live_stacks(moto_reset) == []
    # Every EC2 call that reached moto itself (no dry run) was a read.
    carried_out = {a for service, a, code in proxy.calls if service == "ec2" and code == "moto"}
    assert carried_out and all(a.startswith(("Describe", "Get")) for a in carried_out), carried_out


def test_doctor_dry_runs_run_instances_as_the_stack_sends_it(
    loopback_network: LoopbackNetwork,
    proxy: FaultProxy,
    moto_reset: MotoServer,
    template_cache: Path,
    tmp_path: Path,
) -> None:
    """RunInstances is refused only when the dry run carries the stack's request: the subnet,
    the VPC's default group, the encrypted gp3 root volume, IMDSv2, the instance profile, spot,
    and tags on the instance; doctor must then name RunInstances."""
    ec2 = moto_reset.client("ec2")
    (default_group,) = ec2.describe_security_groups(
        Filters=[
            {"Name": "vpc-id", "Values": [loopback_network.vpc_id]},
            {"Name": "group-name", "Values": ["default"]},
        ]
    )["SecurityGroups"]

    def the_stacks_request(p: dict[str, str]) -> bool:
        return (
            p.get("DryRun") == "true"
            and p.get("SubnetId") == loopback_network.subnet_id
            and p.get("SecurityGroupId.1") == default_group["GroupId"]
            and p.get("BlockDeviceMapping.1.Ebs.Encrypted") == "true"
            and p.get("BlockDeviceMapping.1.Ebs.VolumeType") == "gp3"
            and p.get("MetadataOptions.HttpTokens") == "required"
            and p.get("IamInstanceProfile.Name") == "task-profile"
            and p.get("InstanceMarketOptions.MarketType") == "spot"
            and p.get("TagSpecification.1.ResourceType") == "instance"
            and p.get("ImageId", "").startswith("ami-")
        )

    proxy.add(access_denied("ec2", "RunInstances", when=the_stacks_request))
    flags = ["-o", f"subnet={loopback_network.subnet_id}", "-o", "use_private_ip=true"]
    flags += ["-o", "ssh_ingress_cidr=127.0.0.1/32", "-o", "instance_profile=task-profile"]
    flags += ["-o", "spot=true"]
    refused = cli("doctor", *flags, config_dir=tmp_path)
    line = next(x for x in refused.stdout.splitlines() if "permissions" in x)
    assert line.startswith("FAIL"), refused.stdout + refused.stderr
    assert line.split("missing: ", 1)[1].split(";", 1)[0] == "ec2:RunInstances"


def test_doctor_counts_an_answer_that_proves_nothing_as_unchecked(
    loopback_network: LoopbackNetwork,
    proxy: FaultProxy,
    moto_reset: MotoServer,
    template_cache: Path,
    tmp_path: Path,
) -> None:
    """A dry run answered with something other than DryRunOperation or a refusal (here the
    fake instance id not found) is neither granted nor missing."""
    proxy.add(
        Fault(
            "ec2",
            "TerminateInstances",
            "InvalidInstanceID.NotFound",
            "The instance ID 'i-0123456789abcdef0' does not exist",
            status=400,
        )
    )
    flags = ["-o", f"subnet={loopback_network.subnet_id}", "-o", "use_private_ip=true"]
    flags += ["-o", "ssh_ingress_cidr=127.0.0.1/32"]
    done = cli("doctor", *flags, config_dir=tmp_path)
    line = next(x for x in done.stdout.splitlines() if "permissions" in x)
    assert line.startswith("ok"), done.stdout + done.stderr
    unchecked = line.split("not checked (no dry run, or no answer): ", 1)[1]
    assert "ec2:TerminateInstances (InvalidInstanceID.NotFound)" in unchecked


def test_doctor_says_when_the_default_ebs_key_needs_kms_grants(
    loopback_network: LoopbackNetwork, moto_reset: MotoServer, tmp_path: Path
) -> None:
    flags = ["-o", f"subnet={loopback_network.subnet_id}", "-o", "use_private_ip=true"]
    flags += ["-o", "ssh_ingress_cidr=127.0.0.1/32"]
    aws_managed = cli("doctor", *flags, config_dir=tmp_path)
    line = next(x for x in aws_managed.stdout.splitlines() if "EBS encryption" in x)
    assert line.startswith("ok") and "AWS managed (alias/aws/ebs)" in line, line
    assert "kms:CreateGrant" not in line

    key = moto_reset.client("kms").create_key()["KeyMetadata"]["Arn"]
    ec2 = moto_reset.client("ec2")
    ec2.enable_ebs_encryption_by_default()
    ec2.modify_ebs_default_kms_key_id(KmsKeyId=key)
    customer = cli("doctor", *flags, config_dir=tmp_path)
    line = next(x for x in customer.stdout.splitlines() if "EBS encryption" in x)
    assert "encryption by default on" in line and f"the default key {key} is customer" in line
    assert "kms:CreateGrant" in line and "Permissions" in line


def test_cloudformation_role_is_the_stacks_role(
    loopback_network: LoopbackNetwork,
    moto_reset: MotoServer,
    remote_cache: str,
    emulated_boot: Any,
) -> None:
    """CreateStack carries `cloudformation_role` as RoleARN: the stack records it."""
    role = "arn:aws:iam::123456789012:role/ec2-executor-cloudformation"
    options = harness_options(loopback_network.subnet_id, remote_cache)
    ex = EC2Executor(**options, cloudformation_role=role, wait_for_deletion=True)
    assert run(execute(ex, double, [21], {}, dispatch_id="role")) == 42
    cloudformation = moto_reset.client("cloudformation")
    (summary,) = [  # deleted by now: found by its id, as AWS keeps deleted stacks a while
        s
        for s in cloudformation.list_stacks()["StackSummaries"]
        if s["StackName"] == stack_name("role", 0)
    ]
    (stack,) = cloudformation.describe_stacks(StackName=summary["StackId"])["Stacks"]
    assert stack["RoleARN"] == role


def test_a_bad_cloudformation_role_is_refused_before_any_resource(
    loopback_network: LoopbackNetwork, moto_reset: MotoServer, remote_cache: str
) -> None:
    options = harness_options(loopback_network.subnet_id, remote_cache)
    with pytest.raises(ConfigurationError) as refused:  # refused as the executor is built
        EC2Executor(**options, cloudformation_role="ec2-executor-cloudformation")
    message = str(refused.value)
    assert "'cloudformation_role'" in message and "'ec2-executor-cloudformation'" in message
    assert "arn:aws:iam::123456789012:role/" in message
    assert moto_reset.client("cloudformation").list_stacks()["StackSummaries"] == []


# --- capacity -----------------------------------------------------------------------------


def test_a_zone_without_capacity_moves_the_electron_to_another_zone(
    loopback_network: LoopbackNetwork,
    emulated_boot: Any,
    moto_reset: MotoServer,
    remote_cache: str,
    package_log: pytest.LogCaptureFixture,
) -> None:
    subnets = two_zone_vpc(moto_reset, loopback_network)
    dispatch = dispatch_starting_in("us-east-1a", list(subnets))
    with capacity_refused(CapacityPlan(zones={"us-east-1a"})) as plan:
        ex = in_vpc(loopback_network, remote_cache)
        assert run(execute(ex, double, [21], {}, dispatch_id=dispatch)) == 42
    assert plan.launches == [("us-east-1a", False, "refused"), ("us-east-1b", False, "launched")]
    said = package_log.text
    assert "us-east-1a" in said and "refused" in said and "trying elsewhere" in said
    assert live_stacks(moto_reset) == []


def test_no_capacity_anywhere_names_every_zone_tried_and_leaves_no_stack(
    loopback_network: LoopbackNetwork, moto_reset: MotoServer, remote_cache: str
) -> None:
    subnets = two_zone_vpc(moto_reset, loopback_network)
    with capacity_refused(CapacityPlan(zones=set(subnets))) as plan:
        ex = in_vpc(loopback_network, remote_cache)
        with pytest.raises(CapacityError) as refused:
            run(execute(ex, double, [1], {}, dispatch_id="nowhere"))
    message = str(refused.value)
    for zone, subnet in subnets.items():  # each zone with EC2's reason, as CloudFormation said it
        assert (
            f"{zone} ({subnet}) on-demand: no capacity in this zone (We currently do not have "
            f"sufficient {ex.instance_type} capacity in the Availability Zone you requested "
            f"({zone}).)"
        ) in message
    assert "Try again later, or another 'instance_type' or 'region'." in message
    assert "spot='fallback'" not in message  # on-demand was tried: no market to fall back to
    assert sorted(z for z, _, _ in plan.launches) == sorted(subnets)
    assert live_stacks(moto_reset) == []


def test_spot_fallback_tries_spot_in_every_zone_then_on_demand(
    loopback_network: LoopbackNetwork,
    emulated_boot: Any,
    moto_reset: MotoServer,
    remote_cache: str,
) -> None:
    subnets = two_zone_vpc(moto_reset, loopback_network)
    with capacity_refused(CapacityPlan(spot_zones=set(subnets))) as plan:
        ex = in_vpc(loopback_network, remote_cache, spot="fallback")
        assert run(execute(ex, double, [4], {}, dispatch_id="fallback")) == 8
    spot_tries = [(z, s, r) for z, s, r in plan.launches if s]
    assert sorted(spot_tries) == [(z, True, "refused") for z in sorted(subnets)]
    assert plan.launches[-1][1:] == (False, "launched")
    assert live_stacks(moto_reset) == []


def test_spot_fallback_falls_back_to_on_demand_at_the_spot_quota(
    loopback_network: LoopbackNetwork,
    emulated_boot: Any,
    moto_reset: MotoServer,
    remote_cache: str,
    package_log: pytest.LogCaptureFixture,
) -> None:
    """EC2's "Max spot instance count exceeded", as CloudFormation quotes it (no error code):
    the quota is the account's, so no other zone is tried on spot; on-demand is."""
    subnets = two_zone_vpc(moto_reset, loopback_network)
    dispatch = dispatch_starting_in("us-east-1a", list(subnets))
    with capacity_refused(CapacityPlan(spot_quota=True)) as plan:
        ex = in_vpc(loopback_network, remote_cache, spot="fallback")
        assert run(execute(ex, double, [5], {}, dispatch_id=dispatch)) == 10
    assert plan.launches == [("us-east-1a", True, "refused"), ("us-east-1a", False, "launched")]
    assert aws_texts.SPOT_QUOTA.text in package_log.text
    assert_nothing_left(moto_reset)


@pytest.mark.parametrize("told_by", ["cloudformation", "the instance's state"])
def test_a_capacity_failure_after_the_instance_had_its_address_moves_to_the_next_zone(
    told_by: str,
    loopback_network: LoopbackNetwork,
    emulated_boot: EmulatedBoot,
    moto_reset: MotoServer,
    remote_cache: str,
    monkeypatch: pytest.MonkeyPatch,
    package_log: pytest.LogCaptureFixture,
) -> None:
    """EC2 launched the instance, which got its address, then terminated it for lack of
    capacity. The executor, still waiting for SSH, learns it from CloudFormation (the instance
    did not stabilise) or from the instance's state reason, whichever comes first; it deletes
    that stack and launches in the next zone; nothing of the failed attempt is left."""
    subnets = two_zone_vpc(moto_reset, loopback_network)
    dispatch = dispatch_starting_in("us-east-1a", list(subnets))
    name = stack_name(dispatch, 0)
    held = emulated_boot.hold()  # the first instance never answers SSH, as on EC2
    timeline = Timeline(instance_after=0.0, complete_after=300.0)  # still creating
    with (
        TimedCloud(moto_reset.url, timeline) as cloud,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        monkeypatch.setenv("AWS_ENDPOINT_URL", cloud.url)
        ex = in_vpc(loopback_network, remote_cache)
        electron = pool.submit(run, execute(ex, double, [21], {}, dispatch_id=dispatch))
        first = emulated_boot.wait_knocked()  # the executor had its address and tried SSH
        if told_by == "cloudformation":
            state = aws_texts.INSUFFICIENT_CAPACITY_STATE
            cloud.fail(name, aws_texts.did_not_stabilize(first.instance_id, state))
        else:
            terminate_for_capacity(first.instance_id)
        emulated_boot.wait_stopped(first.instance_id, timeout=60)  # its stack is deleted
        held.release()
        assert electron.result(timeout=300) == 42
    assert cloud.answers("CreateStack") == ["moto", "moto"]
    (second,) = [i for i in emulated_boot.instances if i.instance_id != first.instance_id]
    ec2 = moto_reset.client("ec2")
    placed = ec2.describe_instances(InstanceIds=[first.instance_id, second.instance_id])
    subnet_of = {
        i["InstanceId"]: i["SubnetId"] for r in placed["Reservations"] for i in r["Instances"]
    }
    assert subnet_of == {
        first.instance_id: subnets["us-east-1a"],
        second.instance_id: subnets["us-east-1b"],
    }
    assert first.instance_id in instances_in(moto_reset, "terminated")
    assert "Server.InsufficientInstanceCapacity" in package_log.text
    assert "trying elsewhere" in package_log.text
    assert_nothing_left(moto_reset)


def test_spot_only_does_not_fall_back(
    loopback_network: LoopbackNetwork, moto_reset: MotoServer, remote_cache: str
) -> None:
    subnets = two_zone_vpc(moto_reset, loopback_network)
    with capacity_refused(CapacityPlan(spot_zones=set(subnets))) as plan:
        ex = in_vpc(loopback_network, remote_cache, spot=True)
        with pytest.raises(CapacityError, match="spot"):
            run(execute(ex, double, [1], {}, dispatch_id="spot-only"))
    assert all(spot for _, spot, _ in plan.launches)
    assert live_stacks(moto_reset) == []


def test_electrons_start_in_different_zones(
    loopback_network: LoopbackNetwork, moto_reset: MotoServer, remote_cache: str
) -> None:
    """The plan of each electron, against moto: the first zone tried varies by electron."""
    from ec2_executor.cloud.network import plan_network
    from ec2_executor.options import Options

    subnets = two_zone_vpc(moto_reset, loopback_network)
    ec2 = moto_reset.client("ec2")
    options = Options(
        vpc=loopback_network.vpc_id, use_private_ip=True, ssh_ingress_cidr="127.0.0.1/32"
    )
    firsts = {
        plan_network(ec2, options, spread_key=stack_name("spread", n)).placements[0].zone
        for n in range(12)
    }
    assert firsts == set(subnets)


# --- created network ----------------------------------------------------------------------


def test_private_address_with_a_created_vpc_is_refused_before_anything_is_created(
    moto_reset: MotoServer, remote_cache: str
) -> None:
    ex = EC2Executor(
        vpc="",
        subnet="",
        create_vpc=True,
        use_private_ip=True,
        ssh_ingress_cidr="127.0.0.1/32",
        remote_cache=remote_cache,
    )
    with pytest.raises(ConfigurationError, match=r"'use_private_ip'.*'vpc' or 'subnet'"):
        run(execute(ex, double, [1], {}))
    assert moto_reset.client("cloudformation").list_stacks()["StackSummaries"] == []


def test_created_vpc_subnet_goes_to_a_zone_that_offers_the_type(
    moto_reset: MotoServer, template_cache: Path
) -> None:
    from cdk_stacks.shape import NetworkMode, StackShape
    from cdk_stacks.templates import template_for
    from ec2_executor.cloud.network import plan_network
    from ec2_executor.options import Options

    ec2 = moto_reset.client("ec2")
    options = Options(create_vpc=True, instance_type="t3.micro", ssh_ingress_cidr="127.0.0.1/32")
    plan = plan_network(ec2, options, spread_key="zone-test")
    offered = {
        o["Location"]
        for o in ec2.describe_instance_type_offerings(
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": ["t3.micro"]}],
        )["InstanceTypeOfferings"]
    }
    zones = [p.zone for p in plan.placements]
    assert zones and set(zones) == offered
    # The zone reaches the created subnet through the stack's AvailabilityZone parameter.
    template = template_for(StackShape(network=NetworkMode.CREATED))
    cloudformation = moto_reset.client("cloudformation")
    cloudformation.create_stack(
        StackName="zone-test",
        TemplateBody=template,
        Parameters=[
            {"ParameterKey": k, "ParameterValue": v}
            for k, v in {
                "AvailabilityZone": zones[0],
                "SshIngressCidr": "127.0.0.1/32",
                "AuthorizedKey": "ssh-ed25519 AAAA test",
                "HostKey": "aG9zdA==",
                "PythonVersion": "3.11",
                "CovalentVersion": "0.240.0",
                "CloudpickleVersion": "3.1.3",
            }.items()
        ],
    )
    resources = cloudformation.list_stack_resources(StackName="zone-test")["StackResourceSummaries"]
    subnet_id = next(
        r["PhysicalResourceId"] for r in resources if r["LogicalResourceId"] == "PublicSubnet"
    )
    subnet = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]
    assert subnet["AvailabilityZone"] == zones[0]
    moto_reset.reset()  # moto cannot delete a created VPC's gateway attachment


# --- the task watch -----------------------------------------------------------------------


def test_the_task_watch_outlasts_throttling_and_expired_credentials(
    loopback_network: LoopbackNetwork,
    emulated_boot: Any,
    proxy: FaultProxy,
    moto_reset: MotoServer,
    remote_cache: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ec2_executor.watch.INSTANCE_POLL", 0.5)
    expired = "The security token included in the request is expired"
    proxy.add(
        Fault("ec2", "DescribeInstances", "ExpiredToken", expired, times=1),
        Fault("ec2", "DescribeInstances", "Throttling", "Rate exceeded", times=2),
    )
    ex = EC2Executor(**harness_options(loopback_network.subnet_id, remote_cache))
    assert run(execute(ex, slow_double, [5], {})) == 10
    answers = proxy.answered("ec2", "DescribeInstances")
    assert answers[:3] == ["ExpiredToken", "Throttling", "Throttling"]
    assert "moto" in answers[3:]  # then real answers: the watch kept looking
    assert live_stacks(moto_reset) == []


# --- tags ---------------------------------------------------------------------------------


def test_tags_reach_the_launch_template_for_the_network_interface_and_the_instance(
    loopback_network: LoopbackNetwork, moto_reset: MotoServer, remote_cache: str
) -> None:
    ex = EC2Executor(
        **harness_options(loopback_network.subnet_id, remote_cache, tags={"project": "climate"})
    )
    metadata = {"dispatch_id": "tagged", "node_id": 2, "results_dir": ""}
    try:
        run(ex.setup(metadata))
        ec2 = moto_reset.client("ec2")
        template = ec2.describe_launch_templates()["LaunchTemplates"][0]
        data = ec2.describe_launch_template_versions(LaunchTemplateId=template["LaunchTemplateId"])[
            "LaunchTemplateVersions"
        ][0]["LaunchTemplateData"]
        specs = {s["ResourceType"]: s["Tags"] for s in data["TagSpecifications"]}
        assert set(specs) == {"network-interface"}  # no spot request without spot
        tags = {t["Key"]: t["Value"] for t in specs["network-interface"]}
        assert tags["project"] == "climate"
        assert tags["ec2-executor:dispatch-id"] == "tagged"
        assert tags["ec2-executor:node-id"] == "2"
        instance = ec2.describe_instances()["Reservations"][0]["Instances"][0]
        on_instance = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert {k: on_instance[k] for k in tags} == tags  # the same set, from the stack
    finally:
        run(ex.teardown(metadata))
