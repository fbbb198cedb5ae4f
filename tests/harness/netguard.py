"""Fail loudly when a test opens a network connection to anything but loopback.

`socket.socket.connect`/`connect_ex` and `socket.create_connection` are replaced; the check runs
before the real call, so a blocked connection never sends a packet (and a host name other than
`localhost` is refused before it is resolved, so it does not cause a DNS query either).
AF_UNIX and other non-IP families pass through. `allow(network)` admits one more range while
it exists on this machine: the real-guest boot's bridge (tests/harness/guests.py).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any

_SENTINEL = object()


class NetworkGuardError(RuntimeError):
    """A test tried to connect outside 127.0.0.0/8 / ::1.

    Not an OSError on purpose: client libraries retry or swallow OSErrors.
    """


def _host_is_loopback(host: Any) -> bool:
    if isinstance(host, bytes | bytearray):
        host = bytes(host).decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip().rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False  # a host name: refuse it rather than resolve it
    if address.is_loopback:
        return True
    # Linux connects the unspecified address to the local host; it never leaves the machine.
    if address.is_unspecified:
        return True
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped is not None and (mapped.is_loopback or mapped.is_unspecified)


class NetworkGuard:
    """Installs the patches; records every refused attempt in `violations` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._violations: list[str] = []
        self._saved: dict[str, Any] = {}
        self._allowed: set[ipaddress.IPv4Network] = set()
        self.installed = False

    def allow(self, network: str) -> None:
        """Admit `network` too (the test guests' subnet, while its bridge exists)."""
        with self._lock:
            self._allowed.add(ipaddress.IPv4Network(network))

    def revoke(self, network: str) -> None:
        with self._lock:
            self._allowed.discard(ipaddress.IPv4Network(network))

    def _host_is_allowed(self, host: Any) -> bool:
        try:
            address = ipaddress.ip_address(str(host))
        except ValueError:
            return False
        with self._lock:
            return any(address in network for network in self._allowed)

    @property
    def violations(self) -> list[str]:
        with self._lock:
            return list(self._violations)

    def take_violations(self) -> list[str]:
        """Return and forget the violations seen so far (for tests that provoke one)."""
        with self._lock:
            taken, self._violations = self._violations, []
        return taken

    def check(self, family: Any, address: Any, via: str) -> None:
        if family not in (socket.AF_INET, socket.AF_INET6, None):
            return  # AF_UNIX, AF_NETLINK, ...: not a network connection
        host = address[0] if isinstance(address, tuple) and address else address
        if _host_is_loopback(host) or self._host_is_allowed(host):
            return
        message = (
            f"network guard: {via} to {address!r} refused; tests may only connect to "
            "127.0.0.0/8, ::1, localhost or the test guests' subnet while it exists"
        )
        with self._lock:
            self._violations.append(message)
        raise NetworkGuardError(message)

    def install(self) -> None:
        if self.installed:
            return
        guard = self
        original_connect = socket.socket.connect
        original_connect_ex = socket.socket.connect_ex
        original_create_connection = socket.create_connection
        self._saved = {
            "connect": socket.socket.__dict__.get("connect", _SENTINEL),
            "connect_ex": socket.socket.__dict__.get("connect_ex", _SENTINEL),
            "create_connection": original_create_connection,
        }

        def connect(self: socket.socket, address: Any) -> None:
            guard.check(self.family, address, "socket.connect")
            return original_connect(self, address)

        def connect_ex(self: socket.socket, address: Any) -> int:
            guard.check(self.family, address, "socket.connect_ex")
            return original_connect_ex(self, address)

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            guard.check(None, address, "socket.create_connection")
            return original_create_connection(address, *args, **kwargs)

        socket.socket.connect = connect  # type: ignore[method-assign,assignment]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
        socket.create_connection = create_connection
        self.installed = True

    def uninstall(self) -> None:
        if not self.installed:
            return
        for name in ("connect", "connect_ex"):
            saved = self._saved[name]
            if saved is _SENTINEL:
                delattr(socket.socket, name)
            else:
                setattr(socket.socket, name, saved)
        socket.create_connection = self._saved["create_connection"]
        self.installed = False
