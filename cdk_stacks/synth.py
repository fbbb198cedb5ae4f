"""Synthesise an `ElectronStack` template. Imports `aws_cdk`: run it in a child process.

python -m cdk_stacks.synth existing   # prints the template JSON
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import aws_cdk as cdk

from cdk_stacks.electron_stack import ElectronStack
from cdk_stacks.shape import NetworkMode, StackShape

APP_CONTEXT = {
    "aws:cdk:enable-path-metadata": False,
    "aws:cdk:version-reporting": False,
}


def new_app(**kw: Any) -> cdk.App:
    """An app with our context. CDK's built-in template validation is off: it expands every
    combination of the template's conditions (the tag slots alone make 2^15) and does not
    finish; the tests lint every template with cfn-lint instead."""
    return cdk.App(
        context=APP_CONTEXT,
        analytics_reporting=False,
        builtin_cloud_formation_validation=False,
        **kw,
    )


def stack_id(shape: StackShape) -> str:
    """The construct id, and the stack name `cdk deploy` uses for this shape."""
    return f"ec2-executor-{shape.network.value}"


def add_stack(app: cdk.App, shape: StackShape) -> ElectronStack:
    # No assets, no bootstrap stack, no version rule; the template goes inline, and `cdk deploy`
    # uses the caller's credentials. (BootstraplessSynthesizer names the bootstrap's deploy and
    # cfn-exec roles in the assembly, and the CLI passes that RoleARN to CloudFormation, which
    # fails in an account that was never bootstrapped.)
    synthesizer = cdk.LegacyStackSynthesizer()
    return ElectronStack(app, stack_id(shape), shape=shape, synthesizer=synthesizer)


def synthesize(shape: StackShape) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ec2-executor-synth-") as outdir:
        app = new_app(outdir=outdir)
        stack = add_stack(app, shape)
        template: dict[str, Any] = app.synth().get_stack_by_name(stack.stack_name).template
        return template


def main(argv: list[str]) -> None:
    import json

    shape = StackShape(network=NetworkMode(argv[0]))
    json.dump(synthesize(shape), sys.stdout, separators=(",", ":"), sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
