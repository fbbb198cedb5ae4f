"""The command line's one error boundary and its `-o tags=...` forms, without AWS."""

from __future__ import annotations

import click
import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from ec2_executor.cli.main import DEBUG_ENV, Commands, parse_tags
from ec2_executor.errors import AWSError, ConfigurationError


def raising(exc: Exception) -> click.Group:
    """A command line whose one command raises `exc`."""

    @click.group(cls=Commands)
    def main() -> None:
        pass

    @main.command()
    def go() -> None:
        raise exc

    return main


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (ConfigurationError("Option 'x' is 'y'; use z."), 2, "Error: Option 'x' is 'y'; use z."),
        (AWSError("AWS refused listing stacks: Nope: no."), 1, "Error: AWS refused listing"),
        (
            ClientError({"Error": {"Code": "Nope", "Message": "no"}}, "DescribeStacks"),
            1,
            "Error: AWS refused running this command: Nope: no",
        ),
        (KeyError("stack"), 1, "Error: unexpected KeyError: 'stack'; this is a bug"),
    ],
    ids=["bad-value", "ours", "botocore", "bug"],
)
def test_every_failure_is_one_line_and_an_exit_code(exc: Exception, code: int, line: str) -> None:
    result = CliRunner().invoke(raising(exc), ["go"])
    assert result.exit_code == code
    assert isinstance(result.exception, SystemExit)  # not the error itself: no traceback
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr


def test_a_bug_names_the_way_to_its_traceback() -> None:
    bug = KeyError("stack")
    result = CliRunner().invoke(raising(bug), ["go"])
    assert f"rerun with {DEBUG_ENV}=1" in result.stderr
    debugged = CliRunner(env={DEBUG_ENV: "1"}).invoke(raising(bug), ["go"])
    assert debugged.exception is bug


def test_a_usage_error_is_one_line_too() -> None:
    result = CliRunner().invoke(raising(KeyError()), ["go", "--nope"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: No such option") and "--nope" in result.stderr
    assert result.stderr.endswith(" (see 'main go --help')\n") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ('{"team": "ml", "a=b": "c d"}', {"team": "ml", "a=b": "c d"}),
        ("team=ml,project=x", {"team": "ml", "project": "x"}),
        ("team = ml, url=a=b", {"team": "ml", "url": "a=b"}),
        ("", {}),
    ],
)
def test_tags_are_json_or_pairs(text: str, tags: dict[str, str]) -> None:
    assert parse_tags(text) == tags


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("team", "'team' is not KEY=VALUE"),
        ("{team", "is not valid JSON"),
        ('{"team"', "is not valid JSON"),
    ],
)
def test_bad_tags_say_which_forms_work(text: str, says: str) -> None:
    with pytest.raises(click.BadParameter, match=says) as raised:
        parse_tags(text)
    assert "tags=team=ml,project=x" in raised.value.format_message()
