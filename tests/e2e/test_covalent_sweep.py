"""A sweep through a real Covalent server: one lattice of 64 electrons, on a cloud with AWS's
rate limits and a vCPU quota of 16 instances (the timed cloud in front of moto), on light
instances (sshd alone). Every electron completes, some wait in the queue at the quota (the
server's log says so), and nothing is left."""

from __future__ import annotations

import collections
import dataclasses
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import covalent as ct
import pytest
from e2e_support import assert_nothing_left
from harness import EmulatedBoot, Image, MotoServer, booting
from harness.cloud_state import remove_everything_left
from harness.covalent_server import CovalentPaths, CovalentServer, own_servers, point_client_at
from harness.timed_cloud import AwsSeconds, RateLimits, TimedCloud
from harness.waiting import wait_until

pytestmark = pytest.mark.e2e

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ELECTRONS = 64
QUOTA = 16
"""vCPUs, so t2.micro instances (one vCPU each): a quarter of the sweep at once."""
AWS = AwsSeconds().scaled(0.05)
"""The published timeline, 20 times shorter: sshd 1 s after CreateStack, CREATE_COMPLETE at 2 s."""
SWEEP_TIMEOUT = 1200.0
"""A loaded two-core machine runs 64 electrons and their SSH sessions slowly."""
AT_QUOTA = "vCPU quota is reached; waiting"
DELETIONS_TIMEOUT = 300.0
"""64 background deletions, paced, on a loaded machine."""


@pytest.fixture
def limited_cloud(moto_server: MotoServer) -> Iterator[TimedCloud]:
    with TimedCloud(
        moto_server.url, AWS.timeline(), limits=RateLimits(), vcpu_quota=QUOTA
    ) as cloud:
        yield cloud


@pytest.fixture
def sweep_server(
    covalent_server: CovalentServer,
    moto_server: MotoServer,
    limited_cloud: TimedCloud,
    ec2_settings: dict[str, Any],
    tmp_path: Path,
) -> Iterator[CovalentServer]:
    """A Covalent server of its own, whose executors call the limited cloud; the client is
    pointed back at the session's server after it."""
    paths = CovalentPaths.create(Path(tempfile.mkdtemp(prefix="ec2-e2e-sweep-", dir=tmp_path)))
    env = {
        **moto_server.env,
        "AWS_ENDPOINT_URL": limited_cloud.url,
        "EC2_EXECUTOR_CACHE_DIR": str(tmp_path / "ec2-executor-cache"),
    }
    try:
        with own_servers(
            paths, env=env, executors={"ec2": ec2_settings}, log_level="info"
        ) as start:
            yield start()
    finally:
        point_client_at(covalent_server)
        remove_everything_left(moto_server)  # the test names them; the next tests start clean


@pytest.fixture
def light_boot(
    moto_server: MotoServer, boot_image: Image, tmp_path: Path
) -> Iterator[EmulatedBoot]:
    image = dataclasses.replace(boot_image, light=True)
    with booting(
        moto_server.url, image=image, base_dir=tmp_path / "instances", keys=moto_server.keys
    ) as boot:
        yield boot


def test_a_sweep_of_64_electrons_at_a_quota_of_16_completes_and_leaves_nothing(
    sweep_server: CovalentServer,
    light_boot: EmulatedBoot,
    limited_cloud: TimedCloud,
    moto_server: MotoServer,
) -> None:
    @ct.electron(executor="ec2")
    def square(x: int) -> int:
        return x * x

    @ct.lattice
    def grid(n: int) -> list[int]:
        return [square(i) for i in range(n)]

    dispatch_id = ct.dispatch(grid)(ELECTRONS)
    result = sweep_server.wait_for_result(dispatch_id, SWEEP_TIMEOUT)

    assert str(result.status) == "COMPLETED", (result.status, result.error)
    assert result.result == [i * i for i in range(ELECTRONS)]
    assert limited_cloud.refused_launches() >= 1, "no launch met the quota: nothing queued"
    assert limited_cloud.peak_vcpus <= QUOTA
    server_log = sweep_server.paths.server_log.read_text(errors="replace")
    assert AT_QUOTA in server_log
    # A call the cloud throttled was paced and retried (every electron completed); the
    # benchmark (`bench/sweep.py`) reports how many. The deletions are verified in the
    # server's background, paced as CloudFormation's bucket allows: give them time.
    try:
        wait_until(lambda: _nothing_left(moto_server), DELETIONS_TIMEOUT, "every stack deleted")
    except AssertionError:
        assert_nothing_left(moto_server)  # fails naming what is left
        raise
    creates = collections.Counter(limited_cloud.answers("CreateStack"))
    assert creates["moto"] == ELECTRONS, creates  # one stack each; refused ones never in moto
    assert light_boot.booted_count >= ELECTRONS


def _nothing_left(moto: MotoServer) -> bool:
    try:
        assert_nothing_left(moto)
    except AssertionError:
        return False
    return True
