"""The `ec2-executor` command, run as a real process against the moto server."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from executor_support import harness_options
from harness import LoopbackNetwork, MotoServer

from ec2_executor.cloud.images import TAG
from ec2_executor.cloud.stacks import stack_name
from ec2_executor.ec2 import EC2Executor


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


def without_credentials(env: dict[str, str], home: Path) -> dict[str, str]:
    """`env` with no AWS keys, and credential and config files that do not exist."""
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    none = str(home / "none")
    kept = {name: value for name, value in env.items() if name not in keys}
    return {**kept, "AWS_SHARED_CREDENTIALS_FILE": none, "AWS_CONFIG_FILE": none, "HOME": str(home)}


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


def test_the_installed_command_says_its_version(cli_env: dict[str, str]) -> None:
    """Each command's help and example: tests/unit/test_cli_habits.py, in process."""
    done = cli(cli_env, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ec2-executor {importlib.metadata.version('ec2-executor')}\n"


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
    mine = ["cleanup", "--dispatch", "dispatch-left"]
    results = cli_all(
        cli_env,
        {
            "dry run": [*mine, "--dry-run"],
            "dry run json": [*mine, "--dry-run", "--json"],
            "declined": ["cleanup", "--stack", left],  # stdin: n (cli_all's extra args)
            "mistyped": ["cleanup", "--stack", f"{left}x", "--yes"],
        },
        stdin="n\n",
    )

    dry = results["dry run"]
    assert dry.returncode == 0, dry.stderr
    assert left in dry.stdout and kept not in dry.stdout
    assert dry.stdout.endswith("Dry run: 1 stack(s) would be deleted. Nothing deleted.\n")
    assert "Delete these" not in dry.stdout  # no question
    (row,) = json.loads(results["dry run json"].stdout)
    assert (row["name"], row["action"], row["error"]) == (left, "would delete", None)

    declined = results["declined"]
    assert declined.returncode == 0, declined.stderr  # a no is an answer, not a failure
    assert left in declined.stdout and declined.stdout.endswith("[y/N]: Nothing deleted.\n")

    assert_one_line(
        results["mistyped"], code=1, says=(f"No ec2-executor stack named '{left}x'", "list")
    )
    assert status(moto_reset, left) == "CREATE_COMPLETE"  # none of the four deleted it

    done = cli(cli_env, *mine, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert [(r["name"], r["action"]) for r in json.loads(done.stdout)] == [(left, "deleted")]
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


def test_doctor_passes_on_the_harness_and_warns_of_a_misspelt_key(
    cli_env: dict[str, str],
    loopback_network: LoopbackNetwork,
    moto_reset: MotoServer,
) -> None:
    write_config(cli_env, 'instance_tpye = "t3.large"\n')
    done = cli(cli_env, "doctor", *harness_flags(loopback_network))
    assert done.returncode == 0, done.stdout  # electrons ignore the key: a warning, not a FAIL
    lines = done.stdout.splitlines()
    warned = [line for line in lines if line.startswith("warn  ")]
    assert warned == [
        "warn  options: 'instance_tpye' in [executors.ec2] is not an option, so it is ignored; "
        "did you mean 'instance_type'?"
    ]
    lines = [line for line in lines if line not in warned]
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
        "EBS encryption",
        "permissions",
        "template cache",
    ]
    assert loopback_network.subnet_id in done.stdout
    assert "127.0.0.1/32" in done.stdout
    assert "no baked image matches ('ec2-executor bake' makes one)" in done.stdout


def test_doctor_names_missing_credentials(
    cli_env: dict[str, str], loopback_network: LoopbackNetwork, tmp_path: Path
) -> None:
    done = cli(without_credentials(cli_env, tmp_path), "doctor", *harness_flags(loopback_network))
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


def test_synth_writes_the_cached_template_indented_or_compact(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    indented, compact = tmp_path / "created.json", tmp_path / "compact.json"
    results = cli_all(
        cli_env,
        {
            "indented": ["synth", "--shape", "created", "-O", str(indented)],
            "compact": ["synth", "--shape", "created", "--compact", "-O", str(compact)],
        },
    )
    assert all(done.returncode == 0 for done in results.values()), results
    template: dict[str, Any] = json.loads(indented.read_text())
    assert "Vpc" in template["Resources"] and "Instance" in template["Resources"]
    assert indented.read_text().startswith('{\n  "')
    assert json.loads(compact.read_text()) == template
    assert compact.read_text().count("\n") == 1  # the form the executor deploys


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


# --- failures: one line, a non-zero exit, never a traceback ---------------------------------

FAILING = {
    "list": ["list"],
    "cleanup": ["cleanup", "--yes"],
    "bake": ["bake"],
    "bake --list": ["bake", "--list"],
}
"""Each command that reads options and calls AWS, as a new user would first type it."""
DOCTOR = ["doctor", "-o", "ssh_ingress_cidr=127.0.0.1/32"]  # no address detection: offline
EVERY = {**FAILING, "doctor": DOCTOR}
ONE_TRY = {"AWS_MAX_ATTEMPTS": "1"}  # botocore would retry a refused connection or a 500


def cli_all(
    env: dict[str, str], commands: dict[str, list[str]], *extra: str, stdin: str = ""
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run the commands side by side (each process spends seconds importing covalent)."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        running = {
            name: pool.submit(cli, env, *args, *extra, stdin=stdin)
            for name, args in commands.items()
        }
        return {name: future.result() for name, future in running.items()}


def write_config(env: dict[str, str], section: str) -> Path:
    """Covalent's configuration file, holding `[executors.ec2]` with `section` in it."""
    config = Path(env["COVALENT_CONFIG_DIR"]) / "covalent.conf"
    config.parent.mkdir(parents=True)
    config.write_text(f"[executors.ec2]\n{section}")
    return config


def assert_one_line(
    done: subprocess.CompletedProcess[str], *, code: int, says: tuple[str, ...]
) -> None:
    shown = f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr, shown
    assert done.returncode == code, shown
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, shown
    assert all(s in done.stderr for s in says), shown


def assert_each_fails(
    results: dict[str, subprocess.CompletedProcess[str]], *, code: int, says: tuple[str, ...]
) -> None:
    """One line and `code` from each command; doctor's own form from doctor."""
    for name, done in results.items():
        if name == "doctor":
            assert_doctor_fails(done, says=says)
        else:
            assert_one_line(done, code=code, says=says)


def assert_doctor_fails(done: subprocess.CompletedProcess[str], *, says: tuple[str, ...]) -> None:
    """Doctor reports every check, one line each, and exits 1 when one failed."""
    shown = f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr and not done.stderr, shown
    assert done.returncode == 1, shown
    assert all(line.startswith(("ok    ", "FAIL  ")) for line in done.stdout.splitlines()), shown
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL  ")]
    assert failed and all(s in failed[0] for s in says), shown


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        (["-o", "volume_size=huge"], ("'volume_size'", "'huge'")),
        (["--region", "nowhere"], ("'region'", "'nowhere'", "us-east-1")),
        (["-o", "volum_size=8"], ("'-o'", "'volum_size=8'", "volume_size")),
        (["-o", "tags=team"], ("'-o'", "'team' is not KEY=VALUE", "tags=team=ml")),
    ],
    ids=["option-value", "region", "unknown-option", "tags-form"],
)
def test_a_bad_option_is_one_line_of_usage(
    cli_env: dict[str, str], flag: list[str], says: tuple[str, ...]
) -> None:
    assert_each_fails(cli_all(cli_env, EVERY, *flag), code=2, says=says)


def test_a_bad_flag_of_a_command_is_one_line_of_usage(cli_env: dict[str, str]) -> None:
    done = cli(cli_env, "cleanup", "--older-than", "soon")
    assert_one_line(done, code=2, says=("'--older-than'", "'soon'", "30m"))


def test_a_bad_config_value_names_the_file_and_the_override(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    config = write_config(cli_env, 'volume_size = "huge"\n')
    says = ("'volume_size'", "'huge'", str(config), "-o KEY=VALUE")
    assert_each_fails(cli_all(cli_env, EVERY), code=2, says=says)
    overridden = cli(cli_env, "list", "-o", "volume_size=8")  # a way past it, as it says
    assert overridden.returncode == 0, overridden.stderr


def test_no_credentials_is_one_line_with_the_fix(cli_env: dict[str, str], tmp_path: Path) -> None:
    says = ("No AWS credentials were found", "aws configure")
    env = without_credentials(cli_env, tmp_path)
    assert_each_fails(cli_all(env, FAILING), code=2, says=says)  # doctor: see above


@pytest.fixture
def closed_port() -> Iterator[str]:
    """An endpoint on 127.0.0.1 that refuses connections: bound (so no one else takes the
    port) but not listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


def test_aws_unreachable_is_one_line(cli_env: dict[str, str], closed_port: str) -> None:
    env = {**cli_env, **ONE_TRY, "AWS_ENDPOINT_URL": closed_port}
    says = ("Could not reach AWS", closed_port, "AWS_ENDPOINT_URL")
    assert_each_fails(cli_all(env, EVERY), code=1, says=says)


PLAIN_500 = b"Internal Server Error"
AWS_500 = (
    b"<ErrorResponse><Error><Type>Receiver</Type><Code>InternalFailure</Code>"
    b"<Message>We encountered an internal error.</Message></Error>"
    b"<RequestId>500-1</RequestId></ErrorResponse>"
)


@contextlib.contextmanager
def answering_500(body: bytes) -> Iterator[str]:
    """An endpoint on 127.0.0.1 that answers every request with HTTP 500 and `body`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("body", "commands", "says"),
    [
        (PLAIN_500, [*FAILING, "doctor"], ("not an AWS response", "Internal Server Error")),
        (  # the same path in every command; one per service's error format
            AWS_500,
            ["list", "bake --list", "doctor"],
            ("AWS failed (HTTP 500)", "InternalFailure", "try again later"),
        ),
    ],
    ids=["error-page", "aws-internal-failure"],
)
def test_an_http_500_is_one_line(
    cli_env: dict[str, str], body: bytes, commands: list[str], says: tuple[str, ...]
) -> None:
    chosen = {name: args for name, args in EVERY.items() if name in commands}
    with answering_500(body) as endpoint:
        results = cli_all({**cli_env, **ONE_TRY, "AWS_ENDPOINT_URL": endpoint}, chosen)
    assert_each_fails(results, code=1, says=says)


def test_bake_list_on_a_new_account_says_there_is_none(
    cli_env: dict[str, str], moto_reset: MotoServer
) -> None:
    done = cli(cli_env, "bake", "--list")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "No baked images ('ec2-executor bake' makes one).\n"


def an_image_tagged_as_baked(moto: MotoServer) -> str:
    """An image with the tag `bake` finds its images by, made in moto without baking."""
    ec2 = moto.client("ec2")
    stock = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    (instance,) = ec2.run_instances(ImageId=stock, MinCount=1, MaxCount=1)["Instances"]
    image = ec2.create_image(InstanceId=instance["InstanceId"], Name="baked-by-hand")["ImageId"]
    ec2.create_tags(Resources=[image], Tags=[{"Key": f"{TAG}key", "Value": "by-hand"}])
    ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
    return image


def test_bake_lists_as_json_and_asks_before_it_deletes(
    cli_env: dict[str, str], moto_reset: MotoServer
) -> None:
    image = an_image_tagged_as_baked(moto_reset)
    results = cli_all(
        cli_env,
        {
            "list": ["bake", "--list", "--json"],
            "declined": ["bake", "--delete", image],  # stdin: n
            "no such image": ["bake", "--delete", "ami-0000000000000000f", "--yes"],
        },
        stdin="n\n",
    )
    (row,) = json.loads(results["list"].stdout)
    assert (row["image"], row["name"], row["state"]) == (image, "baked-by-hand", "available")
    assert row["snapshots"] and row["tags"] == {f"{TAG}key": "by-hand"}
    declined = results["declined"]
    assert declined.returncode == 0, declined.stderr
    assert image in declined.stdout and declined.stdout.endswith("[y/N]: Nothing deleted.\n")
    says = ("'ami-0000000000000000f' is not a baked image", "bake --list")
    assert_one_line(results["no such image"], code=1, says=says)
    assert [
        i["ImageId"] for i in moto_reset.client("ec2").describe_images(Owners=["self"])["Images"]
    ] == [image]

    done = cli(cli_env, "bake", "--delete", image, "-y")
    assert done.returncode == 0, done.stderr
    assert f"deleted {image} and its snapshots {row['snapshots'][0]}" in done.stdout
    assert moto_reset.client("ec2").describe_images(Owners=["self"])["Images"] == []


def test_tags_can_be_given_with_o_as_json_or_pairs(cli_env: dict[str, str]) -> None:
    results = cli_all(
        cli_env,
        {
            "json": ["list", "-o", 'tags={"team": "ml", "project": "x"}'],
            "pairs": ["list", "-o", "tags=team=ml,project=x"],
            "bad json": ["list", "-o", 'tags={"team": "ml", "aws:team": "ml"}'],
            "bad pairs": ["list", "-o", "tags=team=ml,aws:team=ml"],
        },
    )
    assert results["json"].returncode == 0, results["json"].stderr
    assert results["pairs"].returncode == 0, results["pairs"].stderr
    # Refused by the check of the tags themselves: the text did become a mapping of tags.
    for refused in (results["bad json"], results["bad pairs"]):
        assert_one_line(refused, code=2, says=("Option 'tags' has the key 'aws:team'",))
