"""The structural choices that change a template; everything else is a parameter.

Kept free of `aws_cdk` imports: a template cache hit must not pay for loading it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class NetworkMode(enum.StrEnum):
    """Where the instance's network comes from."""

    EXISTING = "existing"
    """An existing VPC and subnet, given as the `VpcId` and `SubnetId` parameters."""

    CREATED = "created"
    """A VPC with one public subnet, an internet gateway and a default route, made per stack."""


@dataclass(frozen=True, kw_only=True)
class StackShape:
    """Everything that needs a different template. One template serves all electrons of a shape."""

    network: NetworkMode = NetworkMode.EXISTING

    @property
    def key(self) -> str:
        """A short, stable, file-name-safe identifier of the shape."""
        return f"network-{self.network.value}"


ALL_SHAPES: tuple[StackShape, ...] = tuple(StackShape(network=mode) for mode in NetworkMode)
