"""The real CDK CLI on this repository's app (cdk.json): synth offline, deploy/destroy on moto.

`cdk synth` must produce exactly the templates the executor deploys (`template_for`), and the
assembly must need no bootstrap: `cdk deploy` then works with plain credentials, here against
the moto server through `AWS_ENDPOINT_URL`. The created-VPC shape is not deployed: moto cannot
delete it (test_stack_on_moto covers its creation).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import LoopbackNetwork, MotoServer, parse_user_data

from cdk_stacks.parameters import StackParameters
from cdk_stacks.shape import ALL_SHAPES, NetworkMode, StackShape
from cdk_stacks.synth import stack_id
from cdk_stacks.templates import template_for

REPO = Path(__file__).resolve().parents[2]
CDK = REPO / "node_modules" / ".bin" / "cdk"
VENV_BIN = REPO / ".venv" / "bin"
EXISTING = StackShape(network=NetworkMode.EXISTING)
CLI_TIMEOUT_S = 300
BOOTSTRAP_PROPERTIES = (
    "assumeRoleArn",
    "cloudFormationExecutionRoleArn",
    "lookupRole",
    "requiresBootstrapStackVersion",
    "bootstrapStackVersionSsmParameter",
    "stackTemplateAssetObjectUrl",
)


@pytest.fixture(scope="module")
def cli_env(moto_server: MotoServer) -> dict[str, str]:
    """The environment every `cdk` call gets (AWS_* come from os.environ, i.e. moto).

    `cdk deploy` is a person deploying the template with their own rights (change sets among
    them), not the executor: it signs as the harness's admin, not as the policy's user."""
    if not CDK.exists():
        pytest.fail(f"{CDK} is missing: run 'make install' (npm install --no-package-lock)")
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH; the CDK CLI needs Node.js")
    return {
        # cdk.json runs `python -m cdk_stacks.app`: this venv's python.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
        "CDK_DISABLE_CLI_TELEMETRY": "true",  # nothing leaves the machine
        "CI": "true",  # no interactive prompts, no update banners
        "FORCE_COLOR": "0",
        "AWS_ACCESS_KEY_ID": moto_server.keys.access_key_id,
        "AWS_SECRET_ACCESS_KEY": moto_server.keys.secret_access_key,
    }


def run_cdk(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(CDK), *args, "--no-notices", "--no-color"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"cdk {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def assembly(cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cdk synth` of every stack, once for the module, into a temporary output directory."""
    outdir = tmp_path_factory.mktemp("cdk-out")
    run_cdk(cli_env, "synth", "--output", str(outdir), "--quiet")
    return outdir


@pytest.mark.usefixtures("template_cache")
@pytest.mark.parametrize("shape", ALL_SHAPES, ids=[shape.key for shape in ALL_SHAPES])
def test_cdk_synth_matches_the_cached_template(assembly: Path, shape: StackShape) -> None:
    from_cli = json.loads((assembly / f"{stack_id(shape)}.template.json").read_text())
    cached = json.loads(template_for(shape))
    for section in ("Parameters", "Conditions", "Resources", "Outputs"):
        assert from_cli.get(section) == cached.get(section), section
    assert from_cli == cached  # nothing else differs either (metadata, rules, description)


def test_cloud_assembly_needs_no_bootstrap(assembly: Path) -> None:
    """No role to assume, no bootstrap version to check, no bucket: a never-bootstrapped
    account deploys it with the caller's credentials."""
    manifest = json.loads((assembly / "manifest.json").read_text())
    artifacts: dict[str, Any] = manifest["artifacts"]
    stacks = {name: a for name, a in artifacts.items() if a["type"] == "aws:cloudformation:stack"}
    assert set(stacks) == {stack_id(shape) for shape in ALL_SHAPES}
    for name, artifact in stacks.items():
        properties = artifact.get("properties", {})
        assert not [p for p in BOOTSTRAP_PROPERTIES if p in properties], (name, properties)
        assert not artifact.get("dependencies"), (name, artifact.get("dependencies"))
    assert not [a for a in artifacts.values() if a["type"] == "cdk:asset-manifest"]
    assert not list(assembly.glob("asset.*"))


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    """(authorised OpenSSH public key, OpenSSH host private key)."""
    client = Ed25519PrivateKey.generate().public_key()
    public = client.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    host = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return f"{public} cdk-cli-test", host.decode()


@pytest.mark.parametrize("method", ["direct", "change-set"])
def test_cdk_deploy_and_destroy_on_moto(
    cli_env: dict[str, str],
    assembly: Path,
    moto_server: MotoServer,
    loopback_network: LoopbackNetwork,
    keys: tuple[str, str],
    method: str,
) -> None:
    """`direct` is CreateStack, the call the executor makes; `change-set` is the CLI's default.

    moto gap: a stack made by executing a CREATE change set has no Outputs (nor Description),
    so outputs are checked on the direct path only; everything else on both.
    """
    authorized_key, host_key = keys
    name = stack_id(EXISTING)
    template = json.loads((assembly / f"{name}.template.json").read_text())
    parameters = StackParameters(
        InstanceType="t3.micro",
        AuthorizedKey=authorized_key,  # has spaces
        HostKey=base64.b64encode(host_key.encode()).decode(),  # may end in '='
        SshIngressCidr="127.0.0.1/32",
        PythonVersion="3.11",
        CovalentVersion="0.240.0",
        CloudpickleVersion="3.1.1",
        SshPort=2203,
        ExpectPublicIp=False,
        VpcId=loopback_network.vpc_id,
        SubnetId=loopback_network.subnet_id,
    ).to_cloudformation(declared=frozenset(template["Parameters"]))
    flags = [f"--parameters={name}:{p['ParameterKey']}={p['ParameterValue']}" for p in parameters]
    cfn = moto_server.client("cloudformation")
    ec2 = moto_server.client("ec2")

    # Deploy the assembly synthesised above (and compared) rather than synthesising again.
    deploy = ["deploy", name, "--app", str(assembly), "--require-approval", "never"]
    run_cdk(cli_env, *deploy, f"--method={method}", *flags)

    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert "RoleARN" not in stack, "the CLI passed a bootstrap role to CloudFormation"
    given = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert given["AuthorizedKey"] == authorized_key
    assert given["SshPort"] == "2203"
    summaries = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    resources = {s["LogicalResourceId"]: s["PhysicalResourceId"] for s in summaries}
    instance_id = resources["Instance"]
    if method == "direct":
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        assert outputs["InstanceId"] == instance_id
        assert outputs["PrivateIp"].startswith("127.0.2.")
    (instance,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert instance["SubnetId"] == loopback_network.subnet_id
    user_data = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    spec = parse_user_data(base64.b64decode(user_data["UserData"]["Value"]))
    assert spec.host_key_pem == host_key  # the '=' padding survived `--parameters K=V`
    assert spec.port == 2203

    run_cdk(cli_env, "destroy", name, "--app", str(assembly), "--force")

    with pytest.raises(ClientError, match="does not exist"):
        cfn.describe_stacks(StackName=name)
    (instance,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert instance["State"]["Name"] == "terminated"
    with pytest.raises(ClientError, match=r"InvalidGroup\.NotFound"):
        ec2.describe_security_groups(GroupIds=[resources["SshAccess"]])
