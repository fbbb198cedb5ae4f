"""The sweep: the stacks that orphans leave behind, deleted without a prompt.

An electron whose dispatcher died leaves its stack; its instance ends itself once its owner is
gone (`orphan_minutes`, the instance's own watch) or at `max_lifetime_minutes`. A stack is an
orphan when it is not this process's and either its instance has ended (terminated or stopped:
nothing can run a task on it any more) or its owner is proven dead on this machine
(`owner.known_gone`). Nothing else is proof, so a live electron of another dispatcher, busy or
idle, is never touched. The first electron of each process sweeps each
account and region once, in the background; `ec2-executor cleanup` sweeps the same way.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ec2_executor import owner
from ec2_executor.blocking import run_blocking
from ec2_executor.cloud.aws import AWS
from ec2_executor.cloud.stacks import TAG_OWNER, Stacks, tag_value
from ec2_executor.errors import EC2ExecutorError
from ec2_executor.logs import log
from ec2_executor.options import Options

LIMIT = 50
"""At most this many deletions per sweep; the next process's sweep takes the rest."""
PACE = 0.5
"""Seconds between two DeleteStack requests (CloudFormation throttles at a few per second)."""

_swept: dict[tuple[str, str, str], asyncio.Task[list[str]]] = {}
_lock = threading.Lock()


def orphans(
    stacks: Sequence[Mapping[str, Any]], states: Mapping[str, str], *, ours: str | None = None
) -> list[Mapping[str, Any]]:
    """The stacks proven orphaned, and not `ours`: their instance ended, or their owner is
    proven dead on this machine (pure, given the states). `ours`: this process's id."""
    from ec2_executor.cli.states import ORPHANS  # the states' one definition

    ours = ours or owner.owner_id()
    return [
        s
        for s in stacks
        if states.get(s["StackName"]) in ORPHANS
        and tag_value(s, TAG_OWNER) != ours
        and not str(s["StackStatus"]).startswith("DELETE")
    ]


def find_orphans(aws: AWS) -> list[tuple[Mapping[str, Any], str]]:
    """Every orphaned stack in the options' account and region, with its state (blocking: one
    listing of the stacks and one read of their instances). Forgets the notes of dead owners
    that have no stack left."""
    from ec2_executor.cli.states import instance_states

    found = Stacks(aws.cloudformation).list_ours()
    states = instance_states(aws.ec2, found)
    _forget_the_dead(found)
    return [(s, states[s["StackName"]]) for s in orphans(found, states)]


def _forget_the_dead(stacks: Sequence[Mapping[str, Any]]) -> None:
    with_stacks = {tag_value(s, TAG_OWNER) for s in stacks}
    for note in owner.notes_dir().glob("*.json"):
        if note.stem not in with_stacks:
            owner.forget(note.stem)


async def sweep(options: Options) -> list[str]:
    """Request the deletion of every orphaned stack (up to `LIMIT`), paced; the names that
    CloudFormation accepted. It finishes each deletion whatever becomes of this process."""
    aws = AWS(options)
    found = await run_blocking(find_orphans, aws)
    stacks = Stacks(aws.cloudformation)
    deleted: list[str] = []
    for n, (stack, why) in enumerate(found[:LIMIT]):
        if n:
            await asyncio.sleep(PACE)
        if await _delete(stacks, stack, why):
            deleted.append(stack["StackName"])
    return deleted


async def _delete(stacks: Stacks, stack: Mapping[str, Any], why: str) -> bool:
    name = stack["StackName"]
    whose = tag_value(stack, TAG_OWNER) or "unknown"
    log.info("sweep: deleting stack %s: %s (owner %s)", name, why, whose)
    try:
        # By id: a stack of that name created since the listing is someone's live electron.
        await run_blocking(stacks.delete, stack["StackId"])
    except EC2ExecutorError as exc:  # one stack's refusal does not stop the others
        log.warning("sweep: stack %s stays: %s", name, exc)
        return False
    return True


def sweep_once(options: Options) -> asyncio.Task[list[str]]:
    """Sweep the options' account and region in the background, once per process; the sweep's
    task (the first one's, on later calls). A failure is logged, never raised to an electron."""
    key = (options.profile, options.credentials_file, options.region)
    with _lock:
        if key not in _swept:
            _swept[key] = asyncio.ensure_future(_logged(options))
        return _swept[key]


async def _logged(options: Options) -> list[str]:
    try:
        deleted = await sweep(options)
    except EC2ExecutorError as exc:
        log.warning("sweep: left-over stacks in %s were not swept: %s", options.region, exc)
        return []
    log.info("sweep of %s: %d orphaned stack(s) deleted", options.region, len(deleted))
    return deleted


def forget() -> None:
    """Let the next electron sweep again (tests, each with a fresh cloud)."""
    with _lock:
        _swept.clear()
