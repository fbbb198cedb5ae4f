"""The `ec2-executor` command, run as a real process against the moto server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from executor_support import harness_options
from harness import LoopbackNetwork, MotoServer

from ec2_executor.ec2 import EC2Executor
from ec2_executor.stack import stack_name


@pytest.fixture
def cli_env(moto_server: MotoServer, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "COVALENT_CONFIG_DIR": str(tmp_path / "covalent-config"),
        "EC2_EXECUTOR_CACHE_DIR": os.environ.get("EC2_EXECUTOR_CACHE_DIR", str(tmp_path / "cache")),
    }


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ec2-executor", *args],
        env=env,
        input=stdin,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )


def harness_flags(network: LoopbackNetwork) -> list[str]:
    return [
        "-o",
        f"subnet={network.subnet_id}",
        "-o",
        "use_private_ip=true",
        "-o",
        "ssh_ingress_cidr=127.0.0.1/32",
    ]


def leave_a_stack(network: LoopbackNetwork, tmp_path: Path, dispatch_id: str) -> str:
    """Set up an electron and never tear it down, as a crashed dispatcher would."""
    ex = EC2Executor(**harness_options(network.subnet_id, str(tmp_path / "cache")))
    asyncio.run(ex.setup({"dispatch_id": dispatch_id, "node_id": 7, "results_dir": ""}))
    return stack_name(dispatch_id, 7)


def status(moto: MotoServer, name: str) -> str:
    for summary in moto.client("cloudformation").list_stacks()["StackSummaries"]:
        if summary["StackName"] == name:
            return str(summary["StackStatus"])
    return "absent"


@pytest.mark.parametrize("command", [[], ["list"], ["cleanup"], ["doctor"], ["synth"], ["policy"]])
def test_every_command_has_help(cli_env: dict[str, str], command: list[str]) -> None:
    done = cli(cli_env, *command, "--help")
    assert done.returncode == 0
    assert "Usage: ec2-executor" in done.stdout


def test_list_shows_a_live_electron_stack(
    cli_env: dict[str, str],
    loopback_network: LoopbackNetwork,
    moto_reset: MotoServer,
    tmp_path: Path,
) -> None:
    name = leave_a_stack(loopback_network, tmp_path, "dispatch-list")
    rows = json.loads(cli(cli_env, "list", "--json").stdout)
    assert [
        (r["name"], r["dispatch_id"], r["node_id"], r["status"], r["instance_type"]) for r in rows
    ] == [(name, "dispatch-list", "7", "CREATE_COMPLETE", "t2.micro")]
    assert rows[0]["age_seconds"] >= 0
    table = cli(cli_env, "list").stdout
    assert name in table and "CREATE_COMPLETE" in table


def test_cleanup_asks_then_deletes_a_left_over_stack(
    cli_env: dict[str, str],
    loopback_network: LoopbackNetwork,
    moto_reset: MotoServer,
    tmp_path: Path,
) -> None:
    kept = leave_a_stack(loopback_network, tmp_path, "dispatch-keep")
    left = leave_a_stack(loopback_network, tmp_path, "dispatch-left")

    declined = cli(cli_env, "cleanup", "--dispatch", "dispatch-left", stdin="n\n")
    assert declined.returncode == 1
    assert left in declined.stdout and kept not in declined.stdout
    assert status(moto_reset, left) == "CREATE_COMPLETE"

    done = cli(cli_env, "cleanup", "--dispatch", "dispatch-left", "--yes")
    assert done.returncode == 0, done.stderr
    assert f"deleted {left}" in done.stdout
    assert status(moto_reset, left) == "DELETE_COMPLETE"
    assert status(moto_reset, kept) == "CREATE_COMPLETE"


def test_cleanup_by_age_spares_young_stacks(
    cli_env: dict[str, str],
    loopback_network: LoopbackNetwork,
    moto_reset: MotoServer,
    tmp_path: Path,
) -> None:
    young = leave_a_stack(loopback_network, tmp_path, "dispatch-young")
    done = cli(cli_env, "cleanup", "--older-than", "1h", "--yes")
    assert done.returncode == 0
    assert "Nothing to delete." in done.stdout
    assert status(moto_reset, young) == "CREATE_COMPLETE"
    assert cli(cli_env, "cleanup", "--older-than", "soon").returncode == 2
    assert cli(cli_env, "cleanup", "--all", "--yes").returncode == 0
    assert status(moto_reset, young) == "DELETE_COMPLETE"


def test_doctor_passes_on_the_harness(
    cli_env: dict[str, str],
    loopback_network: LoopbackNetwork,
    moto_reset: MotoServer,
) -> None:
    done = cli(cli_env, "doctor", *harness_flags(loopback_network))
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert all(line.startswith("ok    ") for line in lines), done.stdout
    checked = [line.split(":")[0].removeprefix("ok    ") for line in lines]
    assert checked == [
        "options",
        "AWS credentials",
        "instance type",
        "image",
        "SSH ingress",
        "network",
        "stacks",
        "permissions",
        "template cache",
    ]
    assert loopback_network.subnet_id in done.stdout
    assert "127.0.0.1/32" in done.stdout
    assert "no baked image matches ('ec2-executor bake' makes one)" in done.stdout


def test_doctor_names_missing_credentials(
    cli_env: dict[str, str],
    loopback_network: LoopbackNetwork,
    tmp_path: Path,
) -> None:
    env = {
        k: v
        for k, v in cli_env.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    }
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        HOME=str(tmp_path),
    )
    done = cli(env, "doctor", *harness_flags(loopback_network))
    assert done.returncode == 1
    assert "FAIL  AWS credentials: No AWS credentials were found" in done.stdout


def test_doctor_names_a_missing_key_file(
    cli_env: dict[str, str],
    loopback_network: LoopbackNetwork,
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no_such_key"
    done = cli(cli_env, "doctor", *harness_flags(loopback_network), "-o", f"ssh_key_file={missing}")
    assert done.returncode == 1
    assert f"FAIL  options: Option 'ssh_key_file' is '{missing}'" in done.stdout


def test_synth_writes_the_cached_template(cli_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "created.json"
    done = cli(cli_env, "synth", "--shape", "created", "-O", str(out))
    assert done.returncode == 0, done.stderr
    template: dict[str, Any] = json.loads(out.read_text())
    assert "Vpc" in template["Resources"] and "Instance" in template["Resources"]


def test_cleanup_without_a_filter_spares_running_electrons_unless_all(
    cli_env: dict[str, str],
    loopback_network: LoopbackNetwork,
    moto_reset: MotoServer,
    tmp_path: Path,
) -> None:
    running = leave_a_stack(loopback_network, tmp_path, "dispatch-running")
    dead = leave_a_stack(loopback_network, tmp_path, "dispatch-dead")
    cloudformation, ec2 = moto_reset.client("cloudformation"), moto_reset.client("ec2")
    outputs = cloudformation.describe_stacks(StackName=dead)["Stacks"][0]["Outputs"]
    instance = next(o["OutputValue"] for o in outputs if o["OutputKey"] == "InstanceId")
    ec2.terminate_instances(InstanceIds=[instance])  # its electron is over: a real left-over

    done = cli(cli_env, "cleanup", "--yes")
    assert done.returncode == 0, done.stderr
    assert "Leaving 1 stack(s) whose instance is still running" in done.stdout
    assert running in done.stdout and "--all" in done.stdout
    assert f"deleted {dead}" in done.stdout
    assert status(moto_reset, dead) == "DELETE_COMPLETE"
    assert status(moto_reset, running) == "CREATE_COMPLETE"

    everything = cli(cli_env, "cleanup", "--all", "--yes")
    assert everything.returncode == 0, everything.stderr
    assert "Leaving" not in everything.stdout
    assert status(moto_reset, running) == "DELETE_COMPLETE"
