"""SSH identities for one electron: the client key that logs in and the pinned host key.

Both are generated fresh per electron by default, so no key is shared between tasks and no
trust-on-first-use is needed: the executor knows the host key before the instance exists.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ec2_executor.errors import ConfigurationError


@dataclass(frozen=True)
class KeyPair:
    """An OpenSSH key pair; the private half never leaves this process except as user data."""

    private_openssh: str = field(repr=False)
    public_openssh: str

    @classmethod
    def generate(cls, comment: str = "ec2-executor") -> KeyPair:
        key = ed25519.Ed25519PrivateKey.generate()
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
        return cls(private_openssh=private, public_openssh=f"{public} {comment}")

    def paramiko_key(self) -> paramiko.PKey:
        return _load_private_key(self.private_openssh, source="a generated key")

    def public_key(self) -> paramiko.PKey:
        kind, blob = self.public_openssh.split()[:2]
        return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))

    def private_base64(self) -> str:
        """For the `HostKey` parameter: one line, so it survives YAML and `Fn::Sub`."""
        return base64.b64encode(self.private_openssh.encode()).decode()


@dataclass(frozen=True)
class ClientIdentity:
    """The key the executor logs in with, and the public line the instance authorises."""

    key: paramiko.PKey = field(repr=False)
    authorized_key: str


def client_identity(key_file: Path | None) -> ClientIdentity:
    """The user's key (the seed's `ssh_key_file`) or, when none is set, a fresh one."""
    if key_file is None:
        pair = KeyPair.generate()
        return ClientIdentity(key=pair.paramiko_key(), authorized_key=pair.public_openssh)
    key = _load_private_key(key_file.read_text(), source=f"'ssh_key_file' {str(key_file)!r}")
    return ClientIdentity(key=key, authorized_key=f"{key.get_name()} {key.get_base64()}")


def _load_private_key(text: str, *, source: str) -> paramiko.PKey:
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except paramiko.PasswordRequiredException as exc:
            raise ConfigurationError(
                f"{source} is encrypted with a passphrase; give an unencrypted key file, or "
                f"leave 'ssh_key_file' empty to use a fresh key per electron."
            ) from exc
        except paramiko.SSHException:
            continue
    raise ConfigurationError(
        f"{source} is not an OpenSSH or PEM private key (ed25519, ECDSA or RSA); give the "
        f"private key file of the EC2 key pair."
    )
