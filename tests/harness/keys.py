"""Ed25519 key pairs in OpenSSH format, as the product generates them for host and client."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str
    """`-----BEGIN OPENSSH PRIVATE KEY-----` text, unencrypted."""
    public_openssh: str
    """`ssh-ed25519 AAAA... comment`."""

    def paramiko_key(self) -> paramiko.Ed25519Key:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_openssh))

    def paramiko_public_key(self) -> paramiko.Ed25519Key:
        """The public half only, e.g. to pin as a known host key."""
        return paramiko.Ed25519Key(data=base64.b64decode(self.public_blob))

    @property
    def public_blob(self) -> str:
        """The base64 part of the public key (what `PKey.get_base64()` returns)."""
        return self.public_openssh.split()[1]


def generate_ed25519_keypair(comment: str = "ec2-executor") -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return KeyPair(private_openssh=private, public_openssh=f"{public} {comment}".strip())
