"""Watching moto for instances: the emulated boot's own EC2 client, which instances run, and
which of them are due to boot."""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from .boot_log import BootError
from .moto import REGION, TESTING_KEYS, Keys

log = logging.getLogger("harness.boot")


@dataclass(frozen=True)
class Seen:
    """An instance as one DescribeInstances showed it."""

    state: str
    private_ip: str | None


def gone_reason(seen: Seen | None) -> str | None:
    """Why an instance the harness booted must go now (None: it still runs)."""
    if seen is None:
        return "no longer known to moto (reset?)"
    if seen.state != "running":
        return f"instance is {seen.state}"
    return None


class MotoInstances:
    """moto's EC2 as the harness reads and changes it, with credentials of its own (an admin's,
    on a moto server that enforces IAM)."""

    def __init__(self, endpoint_url: str, keys: Keys = TESTING_KEYS) -> None:
        self.endpoint_url = endpoint_url
        self.keys = keys
        self.last_error: str | None = None
        self._client: Any = None

    def connect(self) -> None:
        self._client = boto3.session.Session().client(
            "ec2",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.keys.access_key_id,
            aws_secret_access_key=self.keys.secret_access_key,
        )

    def states(self) -> dict[str, Seen] | None:
        """Every instance by id; None when moto did not answer (said once per new error)."""
        try:
            pages = self._client.get_paginator("describe_instances").paginate()
            found = {
                instance["InstanceId"]: Seen(
                    instance["State"]["Name"], instance.get("PrivateIpAddress")
                )
                for page in pages
                for reservation in page["Reservations"]
                for instance in reservation["Instances"]
            }
        except (BotoCoreError, ClientError) as error:
            message = f"describe_instances failed: {error}"
            if message != self.last_error:
                log.warning("emulated boot: %s", message)
            self.last_error = message
            return None
        self.last_error = None
        return found

    def user_data(self, instance_id: str) -> bytes:
        attribute = self._client.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData"
        )
        encoded = (attribute.get("UserData") or {}).get("Value")
        if not encoded:
            raise BootError("the instance has no user data")
        return base64.b64decode(encoded)

    def image(self, instance_id: str) -> tuple[str, bool]:
        """The instance's image id, and whether it carries the tags `ec2-executor bake`
        writes."""
        from ec2_executor.cloud.images import TAG

        found = self._client.describe_instances(InstanceIds=[instance_id])
        image_id = found["Reservations"][0]["Instances"][0].get("ImageId", "")
        images = self._client.describe_images(ImageIds=[image_id])["Images"]
        tags = {t["Key"] for image in images for t in image.get("Tags", [])}
        return image_id, TAG + "key" in tags

    def power_off(self, instance_id: str, *, as_configured: bool = False) -> None:
        """What EC2 does when an instance shuts itself down: terminate it (the product's
        template asks for that) or, `as_configured`, what the instance's
        InstanceInitiatedShutdownBehavior says."""
        try:
            behaviour = self._shutdown_behaviour(instance_id) if as_configured else "terminate"
            if behaviour == "terminate":
                self._client.terminate_instances(InstanceIds=[instance_id])
            else:
                self._client.stop_instances(InstanceIds=[instance_id])
            log.info("%s powered itself off: %sd in moto", instance_id, behaviour)
        except (BotoCoreError, ClientError) as error:
            log.warning("%s powered itself off; moto could not be told: %s", instance_id, error)

    def _shutdown_behaviour(self, instance_id: str) -> str:
        attribute = self._client.describe_instance_attribute(
            InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
        )
        return str(attribute["InstanceInitiatedShutdownBehavior"]["Value"])


class Sightings:
    """When each instance was first seen running, and which of them are due to boot."""

    def __init__(self) -> None:
        self._first: dict[str, float] = {}

    def due(
        self, states: dict[str, Seen], booted: Container[str], delay: float, now: float
    ) -> list[tuple[str, str | None]]:
        """(id, private IP) of each running instance not booted yet, seen `delay` ago."""
        running = {i: seen.private_ip for i, seen in states.items() if seen.state == "running"}
        for instance_id in running:
            self._first.setdefault(instance_id, now)
        return [
            (instance_id, private_ip)
            for instance_id, private_ip in running.items()
            if instance_id not in booted and now - self._first[instance_id] >= delay
        ]


class Poller:
    """Calls `poll` every `interval` seconds on a thread of its own, until stopped."""

    def __init__(self, poll: Callable[[], None], interval: float, name: str) -> None:
        self._poll, self._interval, self._name = poll, interval, name
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._poll()
            except Exception:  # one failed poll must not end the watch: say it, poll again
                log.exception("%s: poll failed", self._name)
            self._stopping.wait(self._interval)
