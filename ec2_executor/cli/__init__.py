"""`ec2-executor`: the command line (`main.py`), and what only it uses: `bake`, the stacks'
`states`, and the `doctor`'s permission checks."""

from ec2_executor.cli.main import main

__all__ = ["main"]
