"""The executor's cloud lifecycle against a real moto server and real sshd instances."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from executor_support import NewExecutor, execute, free_port, run
from harness import LoopbackNetwork, MotoServer
from harness.cloud_state import assert_nothing_left, live_stacks

from ec2_executor import (
    ConfigurationError,
    CredentialsError,
    EC2ExecutorError,
    StackDeletionError,
)
from ec2_executor.cloud.stacks import TAG_DISPATCH, TAG_NODE, stack_name
from ec2_executor.ec2 import EC2Executor

# The instance cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def double(x: int) -> int:
    print("doubling", x)
    return 2 * x


def unconfigured(**options: Any) -> EC2Executor:
    """No network given (explicitly empty: the session's [executors.ec2] may hold one)."""
    options.setdefault("use_private_ip", False)  # the session's [executors.ec2] may say True
    return EC2Executor(vpc="", subnet="", ssh_ingress_cidr="127.0.0.1/32", **options)


def test_happy_path_runs_the_task_and_deletes_everything(
    new_executor: NewExecutor,
    emulated_boot: Any,
    moto_reset: MotoServer,
    caplog: pytest.LogCaptureFixture,
    package_log: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # everything: ours (via package_log), paramiko, botocore
    ex = new_executor(tags={"project": "tests"})
    seen: dict[str, Any] = {}
    real_teardown = ex.teardown

    async def spy_teardown(metadata: dict[str, Any]) -> None:
        stack = moto_reset.client("cloudformation").describe_stacks(
            StackName=stack_name("dispatch-1", 0)
        )["Stacks"][0]
        seen["stack"] = stack
        await real_teardown(metadata)

    ex.teardown = spy_teardown  # type: ignore[method-assign, assignment]
    assert run(execute(ex, double, [21], {})) == 42
    assert "doubling 21" in ex.task_stdout.getvalue()
    outputs = {o["OutputKey"]: o["OutputValue"] for o in seen["stack"]["Outputs"]}
    assert outputs["PrivateIp"].startswith("127.0.2.")
    assert outputs["InstanceId"].startswith("i-")
    tags = {t["Key"]: t["Value"] for t in seen["stack"]["Tags"]}
    assert tags[TAG_DISPATCH] == "dispatch-1" and tags[TAG_NODE] == "0"
    assert tags["project"] == "tests"
    # No private key reaches the logs or the task's streams (moto does not mask the NoEcho
    # HostKey parameter as CloudFormation does; the template's NoEcho is checked statically).
    host_key = next(p for p in seen["stack"]["Parameters"] if p["ParameterKey"] == "HostKey")
    shown = caplog.text + ex.task_stdout.getvalue() + ex.task_stderr.getvalue()
    assert "PRIVATE KEY" not in shown
    assert host_key["ParameterValue"] not in shown
    assert_nothing_left(moto_reset)


def test_ssh_ingress_is_exactly_the_given_cidr(
    new_executor: NewExecutor, emulated_boot: Any, moto_reset: MotoServer
) -> None:
    ex = new_executor(ssh_ingress_cidr="127.0.0.1/32")
    assert run(execute(ex, double, [1], {})) == 2
    params = {}
    for stack in (
        moto_reset.client("cloudformation").describe_stacks(StackName=stack_name("dispatch-1", 0))[
            "Stacks"
        ]
        if live_stacks(moto_reset)
        else []
    ):
        params = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert params == {}  # deleted; the template's ingress is proven in test_electron_stack


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"instance_type": "x9.huge"}, "'instance_type' is 'x9.huge'"),
        ({"subnet": "subnet-12345678"}, "'subnet' is 'subnet-12345678'"),
        ({"subnet": "", "vpc": "vpc-12345678"}, "'vpc' is 'vpc-12345678'"),
        ({"ami": "ami-12345678"}, "'ami' is 'ami-12345678'"),
        ({"use_private_ip": False, "public_subnet": False}, "gives instances no public address"),
    ],
)
def test_bad_values_found_in_aws_are_refused_before_anything_is_created(
    loopback_network: LoopbackNetwork,
    new_executor: NewExecutor,
    moto_reset: MotoServer,
    overrides: dict[str, Any],
    message: str,
) -> None:
    if overrides.pop("public_subnet", True) is False:
        moto_reset.client("ec2").modify_subnet_attribute(
            SubnetId=loopback_network.subnet_id, MapPublicIpOnLaunch={"Value": False}
        )
    ex = new_executor(**overrides)
    with pytest.raises(ConfigurationError, match=message):
        run(execute(ex, double, [1], {}))
    assert moto_reset.client("cloudformation").list_stacks()["StackSummaries"] == []


def test_subnet_outside_the_given_vpc_is_refused(
    new_executor: NewExecutor, moto_reset: MotoServer
) -> None:
    other = moto_reset.client("ec2").create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    ex = new_executor(vpc=other)
    with pytest.raises(ConfigurationError, match=f"not in the 'vpc' '{other}'"):
        run(execute(ex, double, [1], {}))
    assert moto_reset.client("cloudformation").list_stacks()["StackSummaries"] == []


def test_vpc_alone_picks_its_public_subnet(
    loopback_network: LoopbackNetwork,
    new_executor: NewExecutor,
    emulated_boot: Any,
    moto_reset: MotoServer,
) -> None:
    ex = new_executor(subnet="", vpc=loopback_network.vpc_id)
    assert run(execute(ex, double, [4], {})) == 8
    assert_nothing_left(moto_reset)


def test_explicit_key_name_must_exist(
    new_executor: NewExecutor, moto_reset: MotoServer, tmp_path: Path
) -> None:
    key = tmp_path / "ec2_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ex = new_executor(ssh_key_file=str(key), key_name="absent")
    with pytest.raises(ConfigurationError, match="'key_name' is 'absent'"):
        run(execute(ex, double, [1], {}))
    assert moto_reset.client("cloudformation").list_stacks()["StackSummaries"] == []


def test_user_key_file_logs_in_and_its_key_pair_is_attached(
    new_executor: NewExecutor, emulated_boot: Any, moto_reset: MotoServer, tmp_path: Path
) -> None:
    key = tmp_path / "ec2_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ec2 = moto_reset.client("ec2")
    ec2.import_key_pair(
        KeyName="ec2_key", PublicKeyMaterial=(tmp_path / "ec2_key.pub").read_bytes()
    )
    ex = new_executor(ssh_key_file=str(key))
    assert run(execute(ex, double, [5], {})) == 10
    key_names = {
        i.get("KeyName") for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    }
    assert key_names == {"ec2_key"}
    assert_nothing_left(moto_reset)


def test_no_credentials_is_refused_naming_the_problem(
    new_executor: NewExecutor,
    moto_reset: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    ex = new_executor(credentials_file=str(tmp_path / "none"))
    ex.credentials_file = "~/.aws/credentials"
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CredentialsError, match="No AWS credentials were found"):
        run(execute(ex, double, [1], {}))


def test_unknown_profile_is_refused(new_executor: NewExecutor, moto_reset: MotoServer) -> None:
    ex = new_executor(profile="no-such-profile")
    with pytest.raises(CredentialsError, match="'no-such-profile'"):
        run(execute(ex, double, [1], {}))


def test_credentials_rejected_by_sts(
    new_executor: NewExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second moto server that authenticates every request, as STS does, rejects our keys."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        _wait_for_port(port)
        ex = new_executor()
        with pytest.raises(CredentialsError, match="STS rejected"):
            run(execute(ex, double, [1], {}))
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_for_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(port)


def test_a_creation_that_cloudformation_refuses_gives_the_reason_and_leaves_no_stack(
    new_executor: NewExecutor, moto_reset: MotoServer
) -> None:
    ex = new_executor(instance_profile="missing-profile")
    with pytest.raises(EC2ExecutorError, match="missing-profile"):
        run(execute(ex, double, [1], {}))
    assert live_stacks(moto_reset) == []


def test_interrupted_while_waiting_leaves_no_stack(
    new_executor: NewExecutor, moto_reset: MotoServer
) -> None:
    """No emulated boot: SSH never answers, so the electron waits until it is cancelled."""
    ex = new_executor()

    async def cancel_while_waiting() -> None:
        task = asyncio.ensure_future(execute(ex, double, [1], {}))
        deadline = time.monotonic() + 60
        while not moto_reset.client("cloudformation").list_stacks()["StackSummaries"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_while_waiting())
    assert live_stacks(moto_reset) == []
    assert moto_reset.client("cloudformation").list_stacks()["StackSummaries"]


def test_ten_electrons_in_parallel_get_ten_stacks(
    new_executor: NewExecutor, emulated_boot: Any, moto_reset: MotoServer
) -> None:
    async def ten() -> list[Any]:
        return await asyncio.gather(
            *(
                execute(
                    new_executor(),
                    double,
                    [n],
                    {},
                    dispatch_id="parallel",
                    node_id=n,
                )
                for n in range(10)
            )
        )

    assert run(ten()) == [2 * n for n in range(10)]
    summaries = moto_reset.client("cloudformation").list_stacks()["StackSummaries"]
    assert sorted(s["StackName"] for s in summaries) == sorted(
        stack_name("parallel", n) for n in range(10)
    )
    assert {s["StackStatus"] for s in summaries} == {"DELETE_COMPLETE"}
    assert emulated_boot.booted_count == 10
    assert_nothing_left(moto_reset)


def test_waiting_for_deletion_holds_the_electron_until_the_stack_is_gone(
    new_executor: NewExecutor, emulated_boot: Any, moto_reset: MotoServer
) -> None:
    ex = new_executor(wait_for_deletion=True)
    assert run(execute(ex, double, [3], {})) == 6
    assert_nothing_left(moto_reset)


def test_a_stack_that_cannot_be_deleted_is_named_with_the_fix(
    moto_reset: MotoServer,
    remote_cache: str,
) -> None:
    """moto cannot delete a created VPC (its gateway attachment has no delete): a real
    DeleteStack failure. Setup and teardown only; the instance is not on loopback."""
    ex = unconfigured(create_vpc=True, remote_cache=remote_cache)
    metadata = {"dispatch_id": "undeletable", "node_id": 1, "results_dir": ""}
    run(ex.setup(metadata))
    name = stack_name("undeletable", 1)
    assert live_stacks(moto_reset)[0] == name
    with pytest.raises(StackDeletionError) as left:
        run(ex.teardown(metadata))
    assert name in str(left.value)
    assert f"ec2-executor cleanup --stack {name}" in str(left.value)


def _setup_only(ex: EC2Executor, dispatch_id: str) -> dict[str, str]:
    """Setup, read the stack's parameters, teardown: for networks the harness cannot boot."""
    metadata = {"dispatch_id": dispatch_id, "node_id": 0, "results_dir": ""}
    try:
        run(ex.setup(metadata))
        stack = ex._electron.stacks.cf.describe_stacks(StackName=stack_name(dispatch_id, 0))[
            "Stacks"
        ][0]
        return {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    finally:
        run(ex.teardown(metadata))


def test_no_network_given_uses_the_default_vpc(moto_reset: MotoServer, remote_cache: str) -> None:
    ec2 = moto_reset.client("ec2")
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
    vpc_id = default_vpc["Vpcs"][0]["VpcId"]
    ex = unconfigured(remote_cache=remote_cache)
    params = _setup_only(ex, "default-vpc")
    assert params["VpcId"] == vpc_id
    subnet = ec2.describe_subnets(SubnetIds=[params["SubnetId"]])["Subnets"][0]
    assert subnet["VpcId"] == vpc_id and subnet["MapPublicIpOnLaunch"]
    assert params["SshIngressCidr"] == "127.0.0.1/32"
    assert live_stacks(moto_reset) == []


def test_no_default_vpc_means_a_created_network(moto_reset: MotoServer, remote_cache: str) -> None:
    ec2 = moto_reset.client("ec2")
    for vpc in ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]:
        for subnet in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])[
            "Subnets"
        ]:
            ec2.delete_subnet(SubnetId=subnet["SubnetId"])
        ec2.delete_vpc(VpcId=vpc["VpcId"])
    ex = unconfigured(remote_cache=remote_cache)
    metadata = {"dispatch_id": "no-default", "node_id": 0, "results_dir": ""}
    run(ex.setup(metadata))
    resources = moto_reset.client("cloudformation").list_stack_resources(
        StackName=stack_name("no-default", 0)
    )["StackResourceSummaries"]
    assert {"AWS::EC2::VPC", "AWS::EC2::Subnet", "AWS::EC2::InternetGateway"} <= {
        r["ResourceType"] for r in resources
    }
    # moto cannot delete a created VPC (see test_a_stack_that_cannot_be_deleted_...)
    with pytest.raises(StackDeletionError):
        run(ex.teardown(metadata))


def test_each_phase_is_logged_with_its_time(
    new_executor: NewExecutor,
    emulated_boot: Any,
    caplog: pytest.LogCaptureFixture,
    package_log: pytest.LogCaptureFixture,
) -> None:
    run(execute(new_executor(), double, [2], {}))
    for phase in (
        "plan",
        "template",
        "create stack",
        "wait for stack",
        "wait for SSH",
        "bootstrap",
        "upload, run, fetch",
        "delete stack",
    ):
        assert re.search(rf": {re.escape(phase)} took \d+\.\d\ds", caplog.text), phase


INTERRUPTED_DISPATCHER = """
import asyncio, sys
sys.path[:0] = [{tests!r}, {support!r}]
from executor_support import execute, harness_options
from ec2_executor.ec2 import EC2Executor
ex = EC2Executor(**harness_options({subnet!r}, {cache!r}))
asyncio.run(execute(ex, print, [], {{}}, dispatch_id="interrupted"))
"""


def test_ctrl_c_while_waiting_leaves_no_stack(
    loopback_network: LoopbackNetwork, moto_reset: MotoServer, remote_cache: str
) -> None:
    """A real SIGINT to a dispatcher waiting for SSH (no emulated boot: it never answers)."""
    tests = Path(__file__).resolve().parents[1]
    script = INTERRUPTED_DISPATCHER.format(
        tests=str(tests),
        support=str(tests / "integration"),
        subnet=loopback_network.subnet_id,
        cache=remote_cache,
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    cloudformation = moto_reset.client("cloudformation")
    deadline = time.monotonic() + 120
    while not live_stacks(moto_reset):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert "KeyboardInterrupt" in output or process.returncode != 0, output
    assert live_stacks(moto_reset) == [], output
    assert cloudformation.list_stacks()["StackSummaries"][0]["StackStatus"] == "DELETE_COMPLETE"
