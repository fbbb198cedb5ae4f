"""The harness itself: moto on loopback, emulated boots with a real sshd, the network guard."""

from __future__ import annotations

import base64
import getpass
import importlib.util
import ipaddress
import json
import os
import socket
import sysconfig
import time
from collections.abc import Callable
from typing import Any

import boto3
import paramiko
import pytest
from botocore.exceptions import ClientError
from harness import (
    STAND_IN_BOOTSTRAP,
    BootError,
    EmulatedBoot,
    Image,
    KeyPair,
    LoopbackNetwork,
    MotoServer,
    NetworkGuard,
    NetworkGuardError,
    UserDataError,
    current_site_packages,
    parse_user_data,
    render_user_data,
)
from harness.cloud_state import instances_in, live_instances
from harness.iam import ADMIN, EXECUTOR_USER
from harness.moto_watch import Seen, Sightings, gone_reason
from harness.processes import alive

FAKE_HOST_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)

CONTRACT_USER_DATA = f"""\
#cloud-config
ssh_deletekeys: false
ssh_genkeytypes: []
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxY ec2-executor
write_files:
  - path: /etc/ssh/ec2_executor_host_ed25519_key
    permissions: "0600"
    encoding: b64
    content: {base64.b64encode(FAKE_HOST_KEY.encode()).decode()}
  - path: /etc/ssh/sshd_config.d/00-ec2-executor.conf
    content: |
      Port 2222
      HostKey /etc/ssh/ec2_executor_host_ed25519_key
      PasswordAuthentication no
      KbdInteractiveAuthentication no
  - path: /opt/ec2-executor/bootstrap.sh
    permissions: "0755"
    content: |
      #!/usr/bin/env bash
      echo bootstrap
bootcmd:
  - [shutdown, -P, "+120"]
runcmd:
  - [/opt/ec2-executor/bootstrap.sh, --python, "3.11", --covalent, "0.240.0",
     --cloudpickle, "3.1.3", --user, "ec2-user"]
"""


# -- parse_user_data --------------------------------------------------------------------------


def test_parse_user_data_contract() -> None:
    spec = parse_user_data(CONTRACT_USER_DATA)
    assert spec.authorized_keys == ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxY ec2-executor",)
    assert spec.host_key_pem == FAKE_HOST_KEY
    assert spec.port == 2222
    assert spec.bootstrap_script == "#!/usr/bin/env bash\necho bootstrap\n"
    assert spec.bootstrap_args == (
        "--python",
        "3.11",
        "--covalent",
        "0.240.0",
        "--cloudpickle",
        "3.1.3",
        "--user",
        "ec2-user",
    )
    assert parse_user_data(CONTRACT_USER_DATA.encode()) == spec


def test_parse_user_data_port_defaults_to_22_and_runcmd_may_be_a_string() -> None:
    text = (
        CONTRACT_USER_DATA.replace("      Port 2222\n", "")
        .replace("      HostKey /etc/ssh/ec2_executor_host_ed25519_key\n", "")
        .replace(
            '  - [/opt/ec2-executor/bootstrap.sh, --python, "3.11", --covalent, "0.240.0",\n'
            '     --cloudpickle, "3.1.3", --user, "ec2-user"]',
            "  - /opt/ec2-executor/bootstrap.sh --python 3.12 --user 'a b'",
        )
    )
    spec = parse_user_data(text)
    assert spec.port == 22
    assert spec.host_key_pem == FAKE_HOST_KEY  # found by content without a HostKey line
    assert spec.bootstrap_args == ("--python", "3.12", "--user", "a b")


def test_parse_user_data_without_bootstrap() -> None:
    text = CONTRACT_USER_DATA.split("runcmd:")[0]
    assert parse_user_data(text).bootstrap_script is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("#!/bin/sh\necho hi\n", "not a #cloud-config"),
        (CONTRACT_USER_DATA.replace("ssh_authorized_keys:\n  - ssh-ed25519", "x:\n  - y"), "keys"),
        (
            CONTRACT_USER_DATA.replace(
                "HostKey /etc/ssh/ec2_executor_host_ed25519_key", "HostKey /etc/ssh/other"
            ),
            "/etc/ssh/other",
        ),
    ],
)
def test_parse_user_data_rejects(text: str, message: str) -> None:
    with pytest.raises(UserDataError, match=message):
        parse_user_data(text)


def test_render_user_data_round_trips() -> None:
    host, client = KeyPair.generate("host"), KeyPair.generate()
    text = render_user_data(
        authorized_keys=[client.public_openssh], host_key_pem=host.private_openssh, port=2200
    )
    assert text.startswith("#cloud-config\n")
    assert "content: |" in text
    spec = parse_user_data(text)
    assert spec.authorized_keys == (client.public_openssh,)
    assert spec.host_key_pem == host.private_openssh
    assert spec.port == 2200
    assert spec.bootstrap_script == STAND_IN_BOOTSTRAP
    assert spec.bootstrap_args[-2:] == ("--user", "ec2-user")


# -- moto on loopback -------------------------------------------------------------------------


def _image_id(ec2: Any) -> str:
    # Filtered: listing all of moto's images takes over a second.
    filters = [{"Name": "name", "Values": ["al2023-ami-2023*-x86_64"]}]
    return str(ec2.describe_images(Owners=["amazon"], Filters=filters)["Images"][0]["ImageId"])


def _launch(ec2: Any, network: LoopbackNetwork, user_data: str, count: int = 1) -> list[str]:
    reservation = ec2.run_instances(
        ImageId=_image_id(ec2),
        InstanceType="t3.micro",
        MinCount=count,
        MaxCount=count,
        SubnetId=network.subnet_id,
        UserData=user_data,
    )
    return [instance["InstanceId"] for instance in reservation["Instances"]]


def test_moto_environment_points_at_loopback(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    assert aws_env["AWS_ENDPOINT_URL"] == moto_server.url
    assert ipaddress.ip_address(moto_server.host).is_loopback
    for name in ("AWS_ENDPOINT_URL", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        assert os.environ[name] == aws_env[name]
    assert "AWS_PROFILE" not in os.environ
    identity = boto3.client("sts").get_caller_identity()  # through the environment only
    assert identity["Account"] == "123456789012"


def test_moto_enforces_iam_the_environment_holds_the_policy_and_the_harness_is_admin(
    moto_reset: MotoServer,
) -> None:
    """The executor under test signs (through the environment) as the user holding the shipped
    policy, the harness as an admin, on a moto that checks both; a reset keeps both users."""
    for _ in range(2):
        as_executor = boto3.client("sts").get_caller_identity()["Arn"]
        assert as_executor.endswith(f":user/{EXECUTOR_USER}")
        as_harness = moto_reset.client("sts").get_caller_identity()["Arn"]
        assert as_harness.endswith(f":user/{ADMIN}")
        with pytest.raises(ClientError) as refused:  # not in the policy
            boto3.client("iam").list_users()
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
        assert moto_reset.client("iam").list_users()["Users"]
        # Granted on an ARN (the AMI parameters): widened to "*", as moto compares with "*".
        boto3.client("ssm").get_parameters(Names=["/aws/service/ami-amazon-linux-latest/x"])
        moto_reset.reset()
    stranger = boto3.client("ec2", aws_access_key_id="testing", aws_secret_access_key="testing")
    with pytest.raises(ClientError) as unknown:
        stranger.describe_vpcs()
    assert unknown.value.response["Error"]["Code"] == "AuthFailure"


def test_loopback_subnet_gives_loopback_private_ips(
    moto_server: MotoServer, loopback_network: LoopbackNetwork
) -> None:
    ec2 = moto_server.client("ec2")
    subnet = ec2.describe_subnets(SubnetIds=[loopback_network.subnet_id])["Subnets"][0]
    assert subnet["CidrBlock"] == "127.0.2.0/24"
    assert subnet["MapPublicIpOnLaunch"] is True
    user_data = "#cloud-config\nfoo: bar\n"
    ids = _launch(ec2, loopback_network, user_data, count=3)
    reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    ips = sorted(
        (i["PrivateIpAddress"] for r in reservations for i in r["Instances"]),
        key=ipaddress.ip_address,
    )
    assert ips == ["127.0.2.4", "127.0.2.5", "127.0.2.6"]
    attribute = ec2.describe_instance_attribute(InstanceId=ids[0], Attribute="userData")
    assert base64.b64decode(attribute["UserData"]["Value"]).decode() == user_data


# -- emulated boot ----------------------------------------------------------------------------


def _ssh(ip: str, port: int, client_key: KeyPair, pinned_host_key: KeyPair) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    host_key = pinned_host_key.public_key()
    client.get_host_keys().add(f"[{ip}]:{port}", host_key.get_name(), host_key)
    client.connect(
        ip,
        port=port,
        username=getpass.getuser(),
        pkey=client_key.paramiko_key(),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
        banner_timeout=10,
        auth_timeout=10,
    )
    return client


def _run(client: paramiko.SSHClient, command: str) -> str:
    _, stdout, stderr = client.exec_command(command, timeout=30)
    output = stdout.read().decode()
    assert stdout.channel.recv_exit_status() == 0, stderr.read().decode()
    return output


@pytest.fixture
def keys() -> tuple[KeyPair, KeyPair]:
    return KeyPair.generate("host"), KeyPair.generate("client")


Launch = Callable[..., list[str]]


@pytest.fixture
def launch(
    moto_server: MotoServer, loopback_network: LoopbackNetwork, keys: tuple[KeyPair, KeyPair]
) -> Launch:
    """Runs `count` instances in the loopback subnet whose user data holds `keys` (host, client);
    keywords go to `render_user_data`. Returns their ids."""
    host_key, client_key = keys

    def run(count: int = 1, **user_data: Any) -> list[str]:
        user_data.setdefault("host_key_pem", host_key.private_openssh)
        text = render_user_data(authorized_keys=[client_key.public_openssh], **user_data)
        return _launch(moto_server.client("ec2"), loopback_network, text, count)

    return run


def test_boot_ssh_and_terminate(
    moto_server: MotoServer,
    emulated_boot: EmulatedBoot,
    keys: tuple[KeyPair, KeyPair],
    launch: Launch,
) -> None:
    host_key, client_key = keys
    (instance_id,) = launch()

    instance = emulated_boot.wait_booted(instance_id, timeout=30)
    assert instance.private_ip == "127.0.2.4"
    assert instance.port == 2222
    assert instance.sshd is not None and instance.sshd.poll() is None
    assert emulated_boot.booted_count == 1
    emulated_boot.wait_bootstrap(instance_id, timeout=30)
    assert instance.bootstrap_returncode == 0, instance.bootstrap_output_tail()

    with _ssh(instance.private_ip, instance.port, client_key, host_key) as client:
        assert _run(client, "echo hello") == "hello\n"
        prefix = _run(client, 'echo "$EC2_EXECUTOR_PREFIX"').strip()
        assert prefix == str(instance.prefix)
        ready = _run(client, 'cat "$EC2_EXECUTOR_PREFIX/ready"').strip()
        assert os.path.isabs(ready)
        log = _run(client, 'cat "$EC2_EXECUTOR_PREFIX/bootstrap.log"')
        assert f"--user ec2-user --prefix {instance.prefix}" in log
        orphan = int(_run(client, "nohup sleep 300 >/dev/null 2>&1 & echo $!"))
    assert alive(orphan)

    moto_server.client("ec2").terminate_instances(InstanceIds=[instance_id])
    emulated_boot.wait_stopped(instance_id, timeout=10)
    assert instance.sshd.poll() is not None
    assert emulated_boot.stopped_count == 1
    assert not alive(orphan), "a process started over SSH outlived its instance"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((instance.private_ip, instance.port), timeout=2).close()


def test_wrong_host_key_is_rejected(
    emulated_boot: EmulatedBoot, keys: tuple[KeyPair, KeyPair], launch: Launch
) -> None:
    host_key, client_key = keys
    (instance_id,) = launch()
    instance = emulated_boot.wait_booted(instance_id)
    assert instance.port is not None
    impostor = KeyPair.generate("impostor")
    with pytest.raises(paramiko.BadHostKeyException):
        _ssh(instance.private_ip, instance.port, client_key, impostor)
    # and an unknown client key is refused by the server
    with pytest.raises(paramiko.AuthenticationException):
        _ssh(instance.private_ip, instance.port, impostor, host_key)
    _ssh(instance.private_ip, instance.port, client_key, host_key).close()


def test_two_instances_and_moto_reset_stop_everything(
    moto_server: MotoServer, emulated_boot: EmulatedBoot, launch: Launch
) -> None:
    ids = launch(count=2)
    instances = [emulated_boot.wait_booted(instance_id) for instance_id in ids]
    assert {i.private_ip for i in instances} == {"127.0.2.4", "127.0.2.5"}
    assert emulated_boot.running_count == 2
    moto_server.reset()
    for instance_id in ids:
        emulated_boot.wait_stopped(instance_id)
    assert emulated_boot.stopped_count == 2
    for instance in instances:
        assert instance.stop_reason is not None and "reset" in instance.stop_reason


def test_a_held_boot_resets_connections_until_released(
    emulated_boot: EmulatedBoot, keys: tuple[KeyPair, KeyPair], launch: Launch
) -> None:
    host_key, client_key = keys
    hold = emulated_boot.hold()
    (instance_id,) = launch()
    held = emulated_boot.log.wait_for(instance_id, lambda r: r.held, 30, "held")
    assert held.port is not None
    knock = socket.create_connection((held.private_ip, held.port), timeout=10)
    with knock, pytest.raises(ConnectionResetError):  # as from an instance still booting
        knock.recv(1)
    assert emulated_boot.wait_knocked() is held
    assert not held.booted and held.sshd is None

    hold.release()
    emulated_boot.wait_booted(instance_id)
    _ssh(held.private_ip, held.port, client_key, host_key).close()
    assert held.knocks == 1 and not held.held


def test_python_path_reaches_bootstrap_and_sessions(
    moto_server: MotoServer, keys: tuple[KeyPair, KeyPair], launch: Launch
) -> None:
    host_key, client_key = keys
    script = (
        "#!/usr/bin/env bash\n"
        'while [ $# -gt 0 ]; do [ "$1" = --prefix ] && prefix=$2; shift; done\n'
        'echo "$PYTHONPATH" > "$prefix/ready"\n'
    )
    image = Image(python_path="/emulated/site-packages")
    with EmulatedBoot(moto_server.url, image=image, keys=moto_server.keys) as boot:
        (instance_id,) = launch(port=2022, bootstrap_script=script)
        instance = boot.wait_bootstrap(instance_id)
        assert instance.ready_file.read_text() == "/emulated/site-packages\n"
        with _ssh(instance.private_ip, 2022, client_key, host_key) as client:
            assert _run(client, 'echo "$PYTHONPATH"') == "/emulated/site-packages\n"
    assert instance.stopped
    assert boot.errors == []


def test_sshd_failure_is_reported(emulated_boot: EmulatedBoot, launch: Launch) -> None:
    (instance_id,) = launch(host_key_pem=FAKE_HOST_KEY)
    with pytest.raises(BootError, match=r"sshd on 127\.0\.2\.4:2222 exited") as error:
        emulated_boot.wait_booted(instance_id)
    assert "host key" in str(error.value).lower()  # the log tail is in the message
    assert len(emulated_boot.clear_errors()) == 1
    assert emulated_boot.booted_count == 0


def test_an_instance_boots_once_it_has_run_for_the_boot_delay() -> None:
    sightings = Sightings()
    states = {"i-1": Seen("running", "127.0.2.4"), "i-2": Seen("pending", None)}
    assert sightings.due(states, set(), delay=1.0, now=10.0) == []  # first seen now
    assert sightings.due(states, set(), delay=1.0, now=11.0) == [("i-1", "127.0.2.4")]
    assert sightings.due(states, {"i-1"}, delay=1.0, now=12.0) == []  # booted already
    assert gone_reason(states["i-1"]) is None
    assert gone_reason(Seen("terminated", None)) == "instance is terminated"
    assert gone_reason(None) == "no longer known to moto (reset?)"


def test_current_site_packages_makes_the_project_importable() -> None:
    entries = current_site_packages().split(os.pathsep)
    assert sysconfig.get_paths()["purelib"] in entries
    spec = importlib.util.find_spec("ec2_executor")
    if spec is not None and spec.submodule_search_locations:
        assert os.path.dirname(next(iter(spec.submodule_search_locations))) in entries


# -- network guard ----------------------------------------------------------------------------


def test_network_guard_blocks_outside_loopback(network_guard: NetworkGuard) -> None:
    started = time.monotonic()
    with pytest.raises(NetworkGuardError, match=r"10\.255\.255\.1"):
        socket.create_connection(("10.255.255.1", 9), timeout=5)
    with pytest.raises(NetworkGuardError, match=r"example\.invalid"):
        socket.create_connection(("example.invalid", 80), timeout=5)  # refused before DNS
    with socket.socket() as sock:
        sock.settimeout(5)
        with pytest.raises(NetworkGuardError):
            sock.connect(("10.255.255.1", 9))
        with pytest.raises(NetworkGuardError):
            sock.connect_ex(("10.255.255.1", 9))
        # Nothing was attempted on the socket: it can still connect to a loopback listener.
        with socket.create_server(("127.0.0.1", 0)) as server:
            sock.connect(server.getsockname())
    with socket.socket(socket.AF_INET6) as sock6, pytest.raises(NetworkGuardError):
        sock6.connect(("2001:db8::1", 9))
    assert time.monotonic() - started < 1  # no timeout was waited for
    assert len(network_guard.take_violations()) == 5


def test_moto_holds_aws_s_default_quota_of_five_vpcs_per_region(moto_reset: MotoServer) -> None:
    ec2 = moto_reset.client("ec2")
    existing = len(ec2.describe_vpcs()["Vpcs"])  # the default VPC counts, as on AWS
    for index in range(5 - existing):
        ec2.create_vpc(CidrBlock=f"10.{index}.0.0/16")
    with pytest.raises(ClientError) as refused:
        ec2.create_vpc(CidrBlock="10.99.0.0/16")
    assert refused.value.response["Error"] == {
        "Code": "VpcLimitExceeded",
        "Message": "The maximum number of VPCs has been reached.",
    }
    assert len(ec2.describe_vpcs()["Vpcs"]) == 5


def test_moto_s_default_vpc_routes_out_through_an_internet_gateway(
    moto_reset: MotoServer,
) -> None:
    ec2 = moto_reset.client("ec2")
    (vpc,) = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    (main,) = ec2.describe_route_tables(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
            {"Name": "association.main", "Values": ["true"]},
        ]
    )["RouteTables"]
    default = [r for r in main["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
    assert [r["GatewayId"][:4] for r in default] == ["igw-"]


def test_moto_does_not_build_a_deleted_stack_s_instance_again(moto_reset: MotoServer) -> None:
    """moto builds resources on first reference: without the harness's patch, reading the
    outputs of a stack deleted before anyone read them launches its instance again."""
    ec2, cloudformation = moto_reset.client("ec2"), moto_reset.client("cloudformation")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    template = {
        "Resources": {
            "Box": {"Type": "AWS::EC2::Instance", "Properties": {"ImageId": image}},
        },
        "Outputs": {"Address": {"Value": {"Fn::GetAtt": ["Box", "PrivateIp"]}}},
    }
    stack_id = cloudformation.create_stack(StackName="once", TemplateBody=json.dumps(template))[
        "StackId"
    ]
    cloudformation.delete_stack(StackName="once")

    (stack,) = cloudformation.describe_stacks(StackName=stack_id)["Stacks"]
    resources = cloudformation.describe_stack_resources(StackName=stack_id)["StackResources"]

    assert len(instances_in(moto_reset)) == 1, "the deleted stack's instance was built again"
    assert live_instances(moto_reset) == []
    assert stack["StackStatus"] == "DELETE_COMPLETE"
    assert "Outputs" not in stack and resources == []
