"""`ec2-executor`: see and remove what the executor created, check a set-up, print templates.

Exit codes: 0 success, and also a "no" at a question (nothing is deleted, and the command says
so: declining is an answer, not a failure); 1 a check failed, a stack could not be deleted, a
named stack or image does not exist, a question got no answer (input closed, Ctrl-C), or AWS
failed; 2 bad usage or set-up (a bad flag, a bad option or `[executors.ec2]` value, no usable
credentials). A failure is one line on stderr, never a traceback (EC2_EXECUTOR_DEBUG=1 shows it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cdk_stacks.shape import NetworkMode, StackShape
from cdk_stacks.templates import cache_path
from ec2_executor import options as opts
from ec2_executor.blocking import Deadline
from ec2_executor.cli import bake as baking
from ec2_executor.cli.permission_checks import (
    Launch,
    check_permissions,
    ebs_encryption,
    launch_shape,
)
from ec2_executor.cli.states import BUSY, IDLE, ORPHANS, instance_states, stack_summary
from ec2_executor.cloud import egress, images, lookups
from ec2_executor.cloud.aws import AWS, aws_errors
from ec2_executor.cloud.lookups import architecture, key_pair_name
from ec2_executor.cloud.network import NetworkPlan, ingress_cidr, plan_network
from ec2_executor.cloud.permissions import POLICY_FILES, policy_text
from ec2_executor.cloud.stacks import (
    DELETE_TIMEOUT,
    EventLog,
    Stacks,
    delete_and_wait,
    stack_template,
)
from ec2_executor.config import config_file, config_section
from ec2_executor.cost import record
from ec2_executor.errors import ConfigurationError, EC2ExecutorError

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
LIST_COLUMNS = (
    "name",
    "dispatch_id",
    "node_id",
    "owner",
    "status",
    "age",
    "instance_type",
    "state",
    "rate",
    "cost",
)
COST_COLUMNS = ("region", "instance_type", "market", "kind", "charges", "hours", "usd")
CLEANUP_COLUMNS = ("name", "dispatch_id", "node_id", "status", "age", "state")
IMAGE_COLUMNS = ("image", "name", "created", "state", "contents")
"""The tables' columns; --json prints every field of the rows instead."""
DEBUG_ENV = "EC2_EXECUTOR_DEBUG"
"""Set (to anything) to let a failure end in its Python traceback instead of one line."""
VERSION_LINE = "%(prog)s %(version)s"
NOTHING_DELETED = "Nothing deleted."


class Failure(click.ClickException):
    """The command failed: one line on stderr ("Error: ..."), exit code 1."""

    exit_code = 1


class BadUsage(Failure):
    """A bad flag, option value or set-up: one line on stderr, exit code 2."""

    exit_code = 2


class Commands(click.Group):
    """The command's one error boundary: whatever a command raises becomes a `Failure`."""

    def invoke(self, ctx: click.Context) -> Any:
        if os.environ.get(DEBUG_ENV):
            return super().invoke(ctx)
        try:
            with aws_errors("running this command"):  # a botocore error no call site mapped
                return super().invoke(ctx)
        except click.UsageError as exc:
            raise BadUsage(_usage_line(exc)) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except ConfigurationError as exc:  # a bad value is bad usage; nothing was created
            raise BadUsage(str(exc)) from exc
        except EC2ExecutorError as exc:
            raise Failure(str(exc)) from exc
        except Exception as exc:  # a bug: still one line, with the way to its traceback
            raise Failure(
                f"unexpected {type(exc).__name__}: {exc}; this is a bug in ec2-executor, rerun "
                f"with {DEBUG_ENV}=1 for the traceback and report it."
            ) from exc


def _usage_line(exc: click.UsageError) -> str:
    """Click's message without its usage block, which would make the failure several lines."""
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
    return f"{exc.format_message()}{where}"


def load_options(region: str | None, profile: str | None, pairs: tuple[str, ...]) -> opts.Options:
    """Options as the executor would see them: flags > `[executors.ec2]` > defaults."""
    explicit = _explicit(region, profile, pairs)
    try:
        return opts.build(opts.resolve(explicit, config_section()))
    except ConfigurationError as exc:
        if not _valid_alone(explicit):
            raise
        # The flags are fine, so the value came from the file: say which, and how to get past it.
        raise ConfigurationError(
            f"{exc} The value is in [executors.ec2] of {config_file()}: fix it there, or "
            f"override it with -o KEY=VALUE."
        ) from exc


def _explicit(region: str | None, profile: str | None, pairs: tuple[str, ...]) -> dict[str, Any]:
    explicit: dict[str, Any] = {"region": region, "profile": profile}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in opts.OPTION_NAMES:
            raise click.BadParameter(
                f"{pair!r} is not KEY=VALUE with a known option; known: "
                f"{', '.join(opts.OPTION_NAMES)}",
                param_hint="'-o'",
            )
        explicit[key] = parse_tags(value) if key == "tags" else value
    return explicit


def _valid_alone(explicit: dict[str, Any]) -> bool:
    try:
        opts.build(opts.resolve(explicit, {}))
    except ConfigurationError:
        return False
    return True


def parse_tags(text: str) -> dict[str, Any]:
    """`-o tags=...`: JSON (`{"team": "ml"}`) or `team=ml,project=x`. A tag value cannot hold a
    comma, so a comma always separates two tags; an empty text means no tags."""
    if text.lstrip().startswith("{"):
        return _json_tags(text)
    tags: dict[str, Any] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(
                f"tags={text!r}: {item!r} is not KEY=VALUE; give tags as "
                f'tags=team=ml,project=x or as JSON, tags=\'{{"team": "ml"}}\'.',
                param_hint="'-o'",
            )
        tags[key.strip()] = value.strip()
    return tags


def _json_tags(text: str) -> dict[str, Any]:
    try:
        tags = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"tags={text!r} is not valid JSON ({exc.msg}); give a JSON object such as "
            f'tags=\'{{"team": "ml"}}\', or tags=team=ml,project=x.',
            param_hint="'-o'",
        ) from exc
    if not isinstance(tags, dict):
        raise click.BadParameter(
            f'tags={text!r} is JSON but not an object; give tags=\'{{"team": "ml"}}\'.',
            param_hint="'-o'",
        )
    return tags  # Options checks each key and value


def aws_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--region", help="AWS region (default: [executors.ec2] or us-east-1).")(fn)
    fn = click.option("--profile", help="AWS profile (default: [executors.ec2] or default).")(fn)
    return click.option(
        "-o",
        "--option",
        "pairs",
        multiple=True,
        metavar="KEY=VALUE",
        help="Any executor option, as EC2Executor(KEY=VALUE) would take it (repeatable); "
        "tags as tags=team=ml,project=x or as JSON.",
    )(fn)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ec2-executor", prog_name="ec2-executor", message=VERSION_LINE)
def main() -> None:
    """Manage what ec2-executor creates: one CloudFormation stack per electron.

    \b
    Example:
      ec2-executor doctor             # is this machine ready to run electrons?
      ec2-executor list               # what the executor left in the region
      ec2-executor cleanup --dry-run  # what cleanup would delete
    """


# --- synth ------------------------------------------------------------------------------


@main.command()
@click.option(
    "--shape",
    type=click.Choice([m.value for m in NetworkMode]),
    default=NetworkMode.EXISTING.value,
    show_default=True,
    help="existing: a given VPC and subnet; created: a VPC made per electron.",
)
@click.option(
    "--output",
    "-O",
    type=click.File("w"),
    default="-",
    help="Write the template here (default: stdout).",
)
@click.option(
    "--compact",
    is_flag=True,
    help="One line, as the executor deploys it (CloudFormation takes at most 51,200 bytes).",
)
def synth(shape: str, output: Any, compact: bool) -> None:
    """Print the CloudFormation template of a stack shape, indented (cached after the first
    time).

    \b
    Example:
      ec2-executor synth --shape created -O created.json
      ec2-executor synth --compact | wc -c
    """
    template = stack_template(StackShape(network=NetworkMode(shape)))
    output.write(template if compact else json.dumps(json.loads(template), indent=2))
    output.write("\n")


# --- list -------------------------------------------------------------------------------


@main.command(name="list")
@aws_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_stacks(
    region: str | None, profile: str | None, pairs: tuple[str, ...], as_json: bool
) -> None:
    """Every stack the executor created in the region, found by its tags.

    \b
    Example:
      ec2-executor list --region eu-west-1
      ec2-executor list --json | jq -r '.[].name'
    """
    aws = AWS(load_options(region, profile, pairs))
    rows = _summaries(Stacks(aws.cloudformation), aws)
    show(rows, LIST_COLUMNS, as_json=as_json, empty="No ec2-executor stacks.")


def _summaries(stacks: Stacks, aws: AWS) -> list[dict[str, Any]]:
    found = stacks.list_ours()
    states = instance_states(aws.ec2, found)
    now = datetime.now(UTC)
    rows = []
    for stack in found:
        row = stack_summary(stack)
        created = stack.get("CreationTime")
        row["age_seconds"] = int((now - created).total_seconds()) if created else None
        row["age"] = _human(row["age_seconds"])
        row["state"] = states[row["name"]]
        hourly, age = row["usd_per_hour"], row["age_seconds"]
        row["cost_usd"] = None if hourly is None or age is None else hourly * age / 3600.0
        row["rate"] = "?" if hourly is None else f"${hourly:.4f}/h"
        row["cost"] = "?" if row["cost_usd"] is None else f"${row['cost_usd']:.4f}"
        rows.append(row)
    return rows


def _human(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def show(
    rows: list[dict[str, Any]], columns: tuple[str, ...], *, as_json: bool, empty: str
) -> None:
    """A table of `columns` for people, or with --json every field of every row for scripts
    (an empty list, never the `empty` sentence, which a script would have to parse)."""
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif rows:
        _table(rows, columns)
    else:
        click.echo(empty)


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    widths = [max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))


def confirmed(question: str, *, yes: bool) -> bool:
    """Whether to go on: --yes, or a yes at the question. A no is an answer, so it says
    "Nothing deleted." and the command ends well (exit 0); no answer at all (input closed,
    Ctrl-C) is a failure, so a script that forgot --yes does not pass unnoticed."""
    if yes:
        return True
    try:
        if click.confirm(question, default=False):
            return True
    except click.Abort as exc:
        click.echo()  # end the question's line
        raise Failure(
            "no answer to the question, so nothing was deleted; add --yes to delete without asking."
        ) from exc
    click.echo(NOTHING_DELETED)
    return False


# --- cost -------------------------------------------------------------------------------


def _age_option_required(_ctx: click.Context, _param: click.Parameter, value: str) -> Any:
    return parse_age(value)


@main.command(name="cost")
@click.option(
    "--since",
    default="30d",
    show_default=True,
    callback=_age_option_required,
    help="How far back: an age like 12h, 7d.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cost(since: timedelta, as_json: bool) -> None:
    """What this machine's electrons cost, from the executor's local record: each electron's
    instance (launch to termination, public IPv4, gp3 volume) and the warm pool's idle time.

    \b
    Example:
      ec2-executor cost --since 7d
      ec2-executor cost --since 24h --json | jq .total_usd
    """
    start = datetime.now(UTC) - since
    found = list(record.charges(since=start))
    rows = record.totals(found)
    total = sum(float(r["usd"]) for r in rows)
    unpriced = sum(int(r["unpriced"]) for r in rows)
    if as_json:
        summary = {
            "since": start.isoformat(timespec="seconds"),
            "record": str(record.record_path()),
            "charges": len(found),
            "total_usd": total,
            "unpriced": unpriced,
            "rows": rows,
        }
        click.echo(json.dumps(summary, indent=2))
        return
    if not rows:
        click.echo(f"No charges since {start:%Y-%m-%d %H:%M} UTC in {record.record_path()}.")
        return
    shown = [{**r, "hours": f"{r['hours']:.3f}", "usd": f"${r['usd']:.4f}"} for r in rows]
    _table(shown, COST_COLUMNS)
    unknown = f"; {unpriced} charge(s) had no known price" if unpriced else ""
    click.echo(
        f"Total ${total:.4f} for {len(found)} charge(s) since {start:%Y-%m-%d %H:%M} UTC"
        f"{unknown} (record: {record.record_path()})."
    )


# --- cleanup ----------------------------------------------------------------------------


def parse_age(value: str) -> timedelta:
    match = _AGE.match(value.strip())
    if not match:
        raise click.BadParameter(f"{value!r} is not an age like 30m, 2h or 1d.")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def _age_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    return parse_age(value) if value else None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Selection:
    """Which stacks `cleanup` deletes: every filter given must match."""

    age: timedelta | None = None
    dispatch_id: str | None = None
    names: tuple[str, ...] = ()
    idle: bool = False
    everything: bool = False

    def matches(self, row: Mapping[str, Any]) -> bool:
        return (
            (self.age is None or (row["age_seconds"] or 0) >= self.age.total_seconds())
            and (self.dispatch_id is None or row["dispatch_id"] == self.dispatch_id)
            and (not self.names or row["name"] in self.names)
            and (not self.idle or row["state"].startswith(IDLE) or row["state"] in ORPHANS)
        )

    def spares(self, row: Mapping[str, Any]) -> bool:
        """Without a filter, a stack whose electron may be running right now is left alone."""
        unfiltered = not (self.everything or self.age or self.dispatch_id or self.names)
        return unfiltered and row["state"] == BUSY


@main.command()
@aws_options
@click.option(
    "--older-than",
    "age",
    callback=_age_option,
    help="Only stacks at least this old, e.g. 30m, 2h, 1d.",
)
@click.option("--dispatch", "dispatch_id", help="Only the stacks of this dispatch id.")
@click.option(
    "--stack", "names", multiple=True, help="Only this stack (repeatable); it must exist."
)
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Without a filter, also delete stacks whose electron may still be running.",
)
@click.option("--idle", is_flag=True, help="Only warm stacks that are idle, and orphans.")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output (needs --yes or --dry-run)."
)
@click.option("--yes", "-y", is_flag=True, help="Delete without asking.")
def cleanup(
    region: str | None,
    profile: str | None,
    pairs: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    yes: bool,
    **selection: Any,
) -> None:
    """Delete left-over executor stacks, waiting for each.

    Without a filter, a stack whose instance is running a task (an electron that some Covalent
    server may be running right now) is left alone unless --all is given; an orphan (its
    instance gone, or its owner proven dead) is deleted.

    \b
    Example:
      ec2-executor cleanup --older-than 2h --dry-run  # what would go, deleting nothing
      ec2-executor cleanup --dispatch DISPATCH_ID --yes
      ec2-executor cleanup --idle --yes --json
    """
    if as_json and not (yes or dry_run):  # as terraform's -json needs -auto-approve
        raise BadUsage("--json needs --yes or --dry-run: a question would mix with the JSON.")
    chosen = Selection(**selection)  # click passes the filters by their field names
    options = load_options(region, profile, pairs)
    aws = AWS(options)
    stacks = Stacks(aws.cloudformation)
    found = _summaries(stacks, aws)
    _require_named(chosen.names, found, options.region)
    rows = [r for r in found if chosen.matches(r)]
    kept = [{**r, "action": "kept", "error": None} for r in rows if chosen.spares(r)]
    doomed = [r for r in rows if not chosen.spares(r)]
    if kept and not as_json:
        click.echo(
            f"Leaving {len(kept)} stack(s) whose instance is still running, so an electron "
            f"may be using it: {', '.join(r['name'] for r in kept)}. Add --all to delete "
            f"them too, or name them with --stack."
        )
    done = _delete(stacks, doomed, dry_run=dry_run, as_json=as_json, yes=yes)
    if as_json:
        click.echo(json.dumps(kept + done, indent=2))
    if any(r["action"] == "failed" for r in done):
        raise SystemExit(1)


def _require_named(names: tuple[str, ...], found: list[dict[str, Any]], region: str) -> None:
    """A mistyped --stack is an error, not "Nothing to delete.": the user meant a stack."""
    missing = [n for n in names if n not in {r["name"] for r in found}]
    if missing:
        raise Failure(
            f"No ec2-executor stack named {', '.join(map(repr, missing))} in {region}; "
            f"'ec2-executor list' shows the stacks there (--region for another region)."
        )


def _delete(
    stacks: Stacks, rows: list[dict[str, Any]], *, dry_run: bool, as_json: bool, yes: bool
) -> list[dict[str, Any]]:
    """Show `rows`, ask, delete: each row back with its "action" (would delete, deleted,
    failed) and "error"; none when the answer was no."""
    if not rows:
        if not as_json:
            click.echo("Nothing to delete.")
        return []
    if not as_json:
        _table(rows, CLEANUP_COLUMNS)
    if dry_run:
        if not as_json:
            click.echo(f"Dry run: {len(rows)} stack(s) would be deleted. {NOTHING_DELETED}")
        return [{**r, "action": "would delete", "error": None} for r in rows]
    if not confirmed(f"Delete these {len(rows)} stack(s)?", yes=yes):
        return []
    report = None if as_json else (lambda name: click.echo(f"deleted {name}"))
    errors = asyncio.run(_delete_all(stacks, [r["name"] for r in rows], report=report))
    for message in errors.values():
        click.echo(f"FAILED  {message}", err=True)
    return [
        {
            **r,
            "action": "failed" if r["name"] in errors else "deleted",
            "error": errors.get(r["name"]),
        }
        for r in rows
    ]


async def _delete_all(
    stacks: Stacks, names: list[str], *, report: Callable[[str], None] | None
) -> dict[str, str]:
    """Delete the stacks side by side; the name of each that failed, with why."""

    async def one(name: str) -> str | None:
        try:  # retries a DELETE_FAILED stack once, then says what blocks it
            await delete_and_wait(
                stacks,
                name,
                deadline=Deadline(DELETE_TIMEOUT),
                events=EventLog(name, logger=lambda _: None),
            )
        except EC2ExecutorError as exc:
            return str(exc)
        if report:
            report(name)
        return None

    results = await asyncio.gather(*(one(name) for name in names))
    return {name: error for name, error in zip(names, results, strict=True) if error}


# --- policy -----------------------------------------------------------------------------


@main.command()
@click.option(
    "--for",
    "holder",
    type=click.Choice(list(POLICY_FILES)),
    default="user",
    show_default=True,
    help="user: CloudFormation acts with the user's rights; user-with-role: the user's policy "
    "when 'cloudformation_role' is set; cloudformation-role: that role's policy.",
)
def policy(holder: str) -> None:
    """Print the IAM policy the executor needs (README, "Permissions").

    \b
    Example:
      ec2-executor policy > ec2-executor-policy.json
      aws iam create-policy --policy-name ec2-executor \\
        --policy-document file://ec2-executor-policy.json
      ec2-executor policy --for cloudformation-role > role-policy.json
    """
    click.echo(policy_text(holder).rstrip())


# --- bake -------------------------------------------------------------------------------

ARCH_INSTANCE_TYPES = {"x86_64": "t3.micro", "arm64": "t4g.micro"}
"""The instance a bake runs on when only `--arch` is given."""


@main.command()
@aws_options
@click.option("--arch", type=click.Choice(sorted(ARCH_INSTANCE_TYPES)), help="Image architecture.")
@click.option("--instance-type", help="Bake on this type (its architecture is the image's).")
@click.option("--pip", "pip", multiple=True, metavar="PKG", help="Extra package (repeatable).")
@click.option("--force", is_flag=True, help="Bake even if a matching image exists.")
@click.option("--list", "list_images", is_flag=True, help="List the baked images and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --list: machine-readable output.")
@click.option("--delete", "delete", metavar="IMAGE", help="Deregister IMAGE, delete its snapshots.")
@click.option("--yes", "-y", is_flag=True, help="With --delete: delete without asking.")
def bake(
    region: str | None,
    profile: str | None,
    pairs: tuple[str, ...],
    arch: str | None,
    instance_type: str | None,
    pip: tuple[str, ...],
    force: bool,
    list_images: bool,
    as_json: bool,
    delete: str | None,
    yes: bool,
) -> None:
    """Make an image with the bootstrap done, for this machine's Python and covalent.

    \b
    Example:
      ec2-executor bake --arch arm64 --pip numpy --pip pandas
      ec2-executor bake --list --json
      ec2-executor bake --delete ami-0123456789abcdef0
    """
    if as_json and not list_images:
        raise BadUsage("--json goes with --list, the one table bake prints.")
    options = load_options(region, profile, pairs)
    ec2 = AWS(options).ec2
    if list_images:
        rows = [_image_row(i) for i in images.baked_images(ec2)]
        empty = "No baked images ('ec2-executor bake' makes one)."
        show(rows, IMAGE_COLUMNS, as_json=as_json, empty=empty)
        return
    if delete:
        _delete_image(ec2, delete, yes=yes)
        return
    chosen = instance_type or (ARCH_INSTANCE_TYPES[arch] if arch else options.instance_type)
    options = dataclasses.replace(options, instance_type=chosen)
    if arch and architecture(ec2, options) != arch:
        raise BadUsage(f"--instance-type {chosen} is not {arch}; give one of the two.")
    result = asyncio.run(baking.bake(options, pip=pip, force=force))
    state = "made" if result.made else "exists already (--force bakes anew)"
    click.echo(f"{result.image.image_id} {state}: {result.image.recipe_text()}")


def _delete_image(ec2: EC2Client, image_id: str, *, yes: bool) -> None:
    found = [i for i in images.baked_images(ec2) if i.image_id == image_id]
    if not found:  # as a missing --stack: the user meant an image, so exit 1
        raise Failure(
            f"{image_id!r} is not a baked image in this region; 'ec2-executor bake --list' "
            f"shows them."
        )
    image = found[0]
    _table([_image_row(image)], IMAGE_COLUMNS)
    snapshots = ", ".join(image.snapshots) or "-"
    if confirmed(f"Deregister {image_id} and delete its snapshots ({snapshots})?", yes=yes):
        images.delete_image(ec2, image_id, image.snapshots)
        click.echo(f"deleted {image_id} and its snapshots {snapshots}")


def _image_row(image: images.BakedImage) -> dict[str, Any]:
    return {
        "image": image.image_id,
        "name": image.name,
        "created": image.created,
        "state": image.state,
        "contents": image.recipe_text(),
        "snapshots": list(image.snapshots),
        "tags": dict(image.tags),
    }


# --- doctor -----------------------------------------------------------------------------


@main.command()
@aws_options
def doctor(region: str | None, profile: str | None, pairs: tuple[str, ...]) -> None:
    """Check the set-up an electron would use, one line per check, with the fix.

    A "warn" line names a key of [executors.ec2] that no option reads (electrons ignore it,
    so a misspelt option silently keeps its default); it does not change the exit code.

    \b
    Example:
      ec2-executor doctor
      ec2-executor doctor --region eu-west-1 -o instance_type=t3.large
    """
    checks = Checks()
    options = checks.run("options", lambda: load_options(region, profile, pairs), str_of=_valid)
    for line in unknown_keys(config_section()):
        checks.warn("options", line)
    if options is not None:
        _check_aws(checks, options)
    checks.run("template cache", _template_cache)
    raise SystemExit(1 if checks.failed else 0)


def _check_aws(checks: Checks, options: opts.Options) -> None:
    aws = checks.run(
        "AWS credentials",
        lambda: AWS(options),
        str_of=lambda a: f"{a.check_credentials()} in {options.region}",
    )
    if aws is None:
        return
    arch = checks.run(
        "instance type",
        lambda: architecture(aws.ec2, options),
        str_of=lambda arch: f"{options.instance_type} ({arch})",
    )
    image = None
    if arch is not None:
        image = checks.run("image", lambda: _image(aws, options, arch), str_of=lambda i: i.why)
    if options.ssh_key_file:
        checks.run("key pair", lambda: _key_pair(aws, options))
    cidr = checks.run("SSH ingress", lambda: _ingress(options))
    plan = None
    if cidr:
        resolved = dataclasses.replace(options, ssh_ingress_cidr=cidr.split()[0])
        installs = image.installs if image is not None else True
        plan = checks.run("network", lambda: _network(aws, resolved, installs), str_of=_where)
        for warning in plan.warnings if plan is not None else ():
            checks.warn("network", warning)
    checks.run(
        "stacks",
        lambda: f"{len(Stacks(aws.cloudformation).list_ours())} ec2-executor stack(s) exist now",
    )
    checks.run("EBS encryption", lambda: ebs_encryption(aws.ec2))
    checks.run(
        "permissions", lambda: _permissions(aws, options, launch_shape(aws, options, image, plan))
    )


T = TypeVar("T")


class Checks:
    """Runs checks, printing one line each: 'ok' with what was found, or 'FAIL' with the fix."""

    def __init__(self) -> None:
        self.failed = 0

    def run(self, name: str, check: Callable[[], T], str_of: Callable[[T], str] = str) -> T | None:
        try:
            value = check()
            detail = str_of(value)
        except (EC2ExecutorError, click.ClickException, OSError) as exc:
            self.failed += 1
            message = exc.format_message() if isinstance(exc, click.ClickException) else exc
            click.echo(f"FAIL  {name}: {message}")
            return None
        click.echo(f"ok    {name}: {detail}")
        return value

    def warn(self, name: str, message: str) -> None:
        """Something to fix that does not stop an electron: said, but not a failure."""
        click.echo(f"warn  {name}: {message}")


def unknown_keys(section: Mapping[str, Any]) -> list[str]:
    """A sentence for each key of `[executors.ec2]` that no option reads, with the closest
    known option: electrons ignore such keys (old plugins' keys must keep working), so a typo
    would otherwise go unseen."""
    return [
        f"{key!r} in [executors.ec2] is not an option, so it is ignored; {hint}"
        for key, hint in opts.unknown_options(section).items()
    ]


def _valid(_: object) -> str:
    return "valid"


def _image(aws: AWS, options: opts.Options, arch: str) -> lookups.Image:
    versions = lookups.Versions.installed(options.python_version)
    return lookups.image(aws.ec2, options, arch, versions)


def _ingress(options: opts.Options) -> str:
    if options.ssh_ingress_cidr:
        return f"{options.ssh_ingress_cidr} (from 'ssh_ingress_cidr')"
    return f"{ingress_cidr(options)} (detected)"


def _key_pair(aws: AWS, options: opts.Options) -> str:
    name = key_pair_name(aws.ec2, options)
    attached = f"key pair {name!r} attached" if name else "no EC2 key pair (key via user data)"
    return f"{options.ssh_key_file} readable; {attached}"


def _network(aws: AWS, options: opts.Options, installs: bool) -> NetworkPlan:
    """The network an electron would get, with the way out checked as its plan checks it."""
    return egress.checked(aws.ec2, plan_network(aws.ec2, options), installs=installs)


def _where(plan: NetworkPlan) -> str:
    where = (
        f"subnet {plan.subnet_id} in {plan.vpc_id}"
        if plan.subnet_id
        else "a VPC created per electron"
    )
    return f"{where}; SSH open to {plan.ingress_cidr} only"


def _permissions(aws: AWS, options: opts.Options, launch: Launch) -> str:
    template = stack_template(StackShape(network=NetworkMode.EXISTING))
    report = check_permissions(aws, options, template=template, launch=launch)
    unchecked = f"; not checked (no dry run, or no answer): {', '.join(report.unchecked)}"
    if report.missing:
        raise PermissionsMissing(
            f"{len(report.missing)} of {len(report.missing) + len(report.granted)} missing: "
            f"{', '.join(report.missing)}; grant the policy that 'ec2-executor policy' prints"
            f"{unchecked}"
        )
    return f"all {len(report.granted)} checked actions allowed (dry runs){unchecked}"


class PermissionsMissing(EC2ExecutorError):
    """Some actions of the policy were refused to these credentials."""


def _template_cache() -> str:
    missing = [
        s.key for s in (StackShape(network=m) for m in NetworkMode) if not cache_path(s).exists()
    ]
    if not missing:
        return "every shape cached"
    node = shutil.which("node")
    if node is None:
        raise OSError(
            f"shapes {missing} not cached and Node.js is not installed; install "
            f"Node.js (CDK synthesis needs it) or run 'ec2-executor synth' once "
            f"where it is"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    return f"shapes {missing} will be synthesised on first use (Node {version})"


if __name__ == "__main__":
    sys.exit(main())
