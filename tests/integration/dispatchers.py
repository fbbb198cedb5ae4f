"""Another dispatcher, in a process of its own (so with an owner id of its own), that a test
can kill with SIGKILL mid-task."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]

ONE_ELECTRON = """\
import time
from executor_support import execute, run
from ec2_executor.ec2 import EC2Executor
from remote_tasks import sleepy
executor = EC2Executor(**{options!r})
print(run(execute(executor, sleepy, [{seconds}], {{}}, dispatch_id="{dispatch}")), flush=True)
time.sleep({linger})
"""


def dispatcher(
    tmp_path: Path,
    options: dict[str, Any],
    dispatch: str,
    *,
    seconds: float = 600,
    linger: float = 0,
) -> subprocess.Popen[str]:
    """Another dispatcher (its own process, so its own owner id) running one task of
    `seconds`, then staying `linger` seconds (a warm instance stays in its pool meanwhile).
    Its output goes to `<tmp_path>/<dispatch>.log`."""
    script = tmp_path / f"{dispatch}.py"
    script.write_text(
        ONE_ELECTRON.format(options=options, dispatch=dispatch, seconds=seconds, linger=linger)
    )
    path = os.pathsep.join(
        [str(TESTS), str(TESTS / "integration"), os.environ.get("PYTHONPATH", "")]
    )
    with open(tmp_path / f"{dispatch}.log", "w") as output:  # a pipe nobody reads could fill
        return subprocess.Popen(
            [sys.executable, str(script)],
            env={**os.environ, "PYTHONPATH": path},
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
