"""The command line's habits that need no AWS, in process: version, examples in the help,
flags that go together, the question, the synth's layout, unknown keys of the config."""

from __future__ import annotations

import importlib
import importlib.metadata
import json

import click
import pytest
from click.testing import CliRunner

from ec2_executor.cli.main import NOTHING_DELETED, Commands, confirmed, main, unknown_keys

COMMANDS = sorted(main.commands)
CLI_MODULE = importlib.import_module("ec2_executor.cli.main")  # the package's `main` is the group


def invoke(*args: str, stdin: str | None = None) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), input=stdin, prog_name="ec2-executor")


def test_version_is_the_packages() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"ec2-executor {importlib.metadata.version('ec2-executor')}\n"


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["main", *COMMANDS])
def test_every_help_ends_in_an_example_kept_line_by_line(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ec2-executor")
    lines = result.stdout.splitlines()
    example = lines.index("  Example:")
    block = lines[example + 1 : lines.index("", example)]
    assert block and block[0].startswith("    ec2-executor "), result.stdout  # not rewrapped
    assert all(line.startswith("    ") for line in block), result.stdout
    assert any(line.startswith(f"    ec2-executor {' '.join(command)}") for line in block)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["cleanup", "--json"], "--json needs --yes or --dry-run"),
        (["bake", "--json"], "--json goes with --list"),
    ],
)
def test_json_without_its_partner_is_bad_usage_before_any_aws_call(
    args: list[str], says: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {says}") and result.stderr.count("\n") == 1


def asking(yes: bool = False) -> click.Group:
    """A command line whose one command asks before it would delete."""

    @click.group(cls=Commands)
    def ask() -> None:
        pass

    @ask.command()
    def go() -> None:
        if confirmed("Delete it?", yes=yes):
            click.echo("deleting")

    return ask


def test_no_at_the_question_says_nothing_was_deleted_and_is_not_a_failure() -> None:
    result = CliRunner().invoke(asking(), ["go"], input="n\n")
    assert result.exit_code == 0
    assert result.stdout == f"Delete it? [y/N]: n\n{NOTHING_DELETED}\n"


def test_no_answer_at_all_is_a_failure_that_names_yes() -> None:
    result = CliRunner().invoke(asking(), ["go"], input="")  # input closed, as in a script
    assert result.exit_code == 1
    assert "deleting" not in result.stdout
    assert result.stderr.startswith("Error: no answer to the question, so nothing was deleted")
    assert "--yes" in result.stderr and result.stderr.count("\n") == 1


def test_yes_does_not_ask() -> None:
    result = CliRunner().invoke(asking(yes=True), ["go"], input="")
    assert (result.exit_code, result.stdout) == (0, "deleting\n")


COMPACT = json.dumps({"Resources": {"Instance": {"Type": "AWS::EC2::Instance"}}})


def test_synth_is_indented_unless_compact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CLI_MODULE, "stack_template", lambda _shape: COMPACT)
    indented, compact = invoke("synth"), invoke("synth", "--compact")
    assert indented.exit_code == compact.exit_code == 0
    assert indented.stdout == json.dumps(json.loads(COMPACT), indent=2) + "\n"
    assert indented.stdout.startswith('{\n  "Resources": {\n')
    assert compact.stdout == COMPACT + "\n"


def test_unknown_keys_name_the_closest_option_and_spare_known_ones() -> None:
    section = {"instance_tpye": "t3.large", "conda_env": "py311", "region": "eu-west-1"}
    section |= {"log_stdout": "out.log"}  # Covalent's own option, which every executor takes
    typo, old = unknown_keys(section)
    assert typo.startswith("'instance_tpye' in [executors.ec2] is not an option")
    assert typo.endswith("did you mean 'instance_type'?")
    assert old.startswith("'conda_env'") and "README" in old
    assert unknown_keys({"region": "eu-west-1", "retries": 2}) == []
