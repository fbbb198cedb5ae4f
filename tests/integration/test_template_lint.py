"""Template fidelity beyond moto: cfn-lint and cdk-nag's AwsSolutions pack, for every shape.

cfn-lint reads the cached template exactly as `create_stack` receives it. cdk-nag runs as an
aspect on an app holding every shape; the accepted findings live in `cdk_stacks.nag` as plain
data (rule id -> reason) and are applied here, so the product never imports cdk_nag.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import aws_cdk
import cdk_nag
import pytest
from cfnlint.api import ManualArgs, lint

from cdk_stacks.nag import AWS_SOLUTIONS_SUPPRESSIONS
from cdk_stacks.shape import ALL_SHAPES, StackShape
from cdk_stacks.synth import add_stack, new_app, stack_id
from cdk_stacks.templates import template_for

LINT_REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2"]

ALLOWED_LINT_WARNINGS: dict[str, str] = {}
"""cfn-lint warning rule id -> why the template accepts it. None so far."""

NAG_MIN_REASON_CHARS = 10  # cdk-nag refuses shorter suppression reasons
SHAPE_IDS = [shape.key for shape in ALL_SHAPES]


# --- cfn-lint -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=SHAPE_IDS)
def test_cfn_lint_finds_no_errors(template_cache: Path, shape: StackShape) -> None:
    body = template_for(shape)
    matches = lint(body, config=ManualArgs(regions=LINT_REGIONS))
    findings = [
        f"{m.rule.id} ({m.rule.severity}) line {m.linenumber}: {m.message}" for m in matches
    ]
    errors = [m for m in matches if m.rule.id.startswith("E")]
    assert not errors, "\n".join(findings)
    unexplained = [m for m in matches if m.rule.id not in ALLOWED_LINT_WARNINGS]
    assert not unexplained, "\n".join(findings)


def test_cfn_lint_catches_a_broken_template(template_cache: Path) -> None:
    """The linter is wired up: a security group rule on a non-existent port is an error."""
    template = json.loads(template_for(ALL_SHAPES[0]))
    template["Resources"]["SshAccess"]["Properties"]["SecurityGroupIngress"][0]["FromPort"] = "ssh"
    matches = lint(json.dumps(template), config=ManualArgs(regions=LINT_REGIONS))
    assert any(m.rule.id.startswith("E") for m in matches), matches


# --- cdk-nag ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nag_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[StackShape, list[dict[str, str]]]:
    """Every shape in one app, AwsSolutions as an aspect, suppressions from cdk_stacks.nag."""
    outdir = tmp_path_factory.mktemp("nag")
    app = new_app(outdir=str(outdir))
    suppressions = [
        {"id": rule, "reason": reason} for rule, reason in AWS_SOLUTIONS_SUPPRESSIONS.items()
    ]
    for shape in ALL_SHAPES:
        stack = add_stack(app, shape)
        cdk_nag.NagSuppressions.add_stack_suppressions(stack, suppressions)
    aws_cdk.Aspects.of(app).add(cdk_nag.AwsSolutionsChecks(reports=True))
    app.synth()
    reports = {}
    for shape in ALL_SHAPES:
        found = sorted(outdir.glob(f"AwsSolutions-*{stack_id(shape)}-NagReport.csv"))
        assert len(found) == 1, sorted(p.name for p in outdir.iterdir())
        with found[0].open(newline="") as report:
            reports[shape] = list(csv.DictReader(report))
    return reports


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=SHAPE_IDS)
def test_nag_finds_nothing_unsuppressed(
    nag_reports: dict[StackShape, list[dict[str, str]]], shape: StackShape
) -> None:
    rows = nag_reports[shape]
    assert any(row["Compliance"] == "Compliant" for row in rows), "the pack did not run"
    # "Non-Compliant", and "UNKNOWN" (a rule that could not decide, e.g. on a parameter).
    open_findings = [row for row in rows if row["Compliance"] not in ("Compliant", "Suppressed")]
    assert not open_findings, "\n".join(
        f"{r['Rule ID']} {r['Compliance']} on {r['Resource ID']}: {r['Rule Info']}"
        for r in open_findings
    )
    for row in rows:
        if row["Compliance"] == "Suppressed":
            assert row["Exception Reason"] == AWS_SOLUTIONS_SUPPRESSIONS[row["Rule ID"]]


def test_nag_suppressions_have_reasons_and_are_all_needed(
    nag_reports: dict[StackShape, list[dict[str, str]]],
) -> None:
    for rule, reason in AWS_SOLUTIONS_SUPPRESSIONS.items():
        assert rule.startswith("AwsSolutions-"), rule
        assert len(reason.strip()) >= NAG_MIN_REASON_CHARS, rule
    used = {
        row["Rule ID"]
        for rows in nag_reports.values()
        for row in rows
        if row["Compliance"] == "Suppressed"
    }
    stale = set(AWS_SOLUTIONS_SUPPRESSIONS) - used
    assert not stale, f"suppressions no shape needs any more: {sorted(stale)}"


def test_nag_checks_the_controls_the_template_relies_on(
    nag_reports: dict[StackShape, list[dict[str, str]]],
) -> None:
    """Encrypted volumes (EC26) and described security groups (EC27) pass on their own merit."""
    for rows in nag_reports.values():
        compliant = {row["Rule ID"] for row in rows if row["Compliance"] == "Compliant"}
        assert {"AwsSolutions-EC26", "AwsSolutions-EC27"} <= compliant
