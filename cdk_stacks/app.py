"""The CDK app for `cdk synth` / `cdk deploy` (see cdk.json): one stack per shape.

cdk synth ec2-executor-existing
cdk deploy ec2-executor-created --parameters SshIngressCidr=203.0.113.7/32 ...
"""

from __future__ import annotations

from cdk_stacks.shape import ALL_SHAPES
from cdk_stacks.synth import add_stack, new_app


def main() -> None:
    app = new_app()
    for shape in ALL_SHAPES:
        add_stack(app, shape)
    app.synth()


if __name__ == "__main__":
    main()
