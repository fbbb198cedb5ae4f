"""Holding instances' boots back: sshd waits for a release, and meanwhile the instance's SSH
address answers as a booting instance's may, so a test can see the executor knock."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable


class Hold:
    """Instances seen while it is on get no sshd until `release()`."""

    def __init__(self) -> None:
        self._released = threading.Event()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def release(self) -> None:
        self._released.set()


_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 seconds: close() sends a reset instead of a FIN."""


class Doorman:
    """Listens on a held instance's SSH address: resets each connection as soon as it is made
    (to a client, the same "try again" as a refused one) and calls `on_knock` for it."""

    def __init__(self, address: str, port: int, on_knock: Callable[[], None]) -> None:
        self._on_knock = on_knock
        self._closing = threading.Event()
        self._socket = socket.create_server((address, port))
        self._socket.settimeout(0.1)  # how soon `close()` is noticed
        self._thread = threading.Thread(
            target=self._serve, name=f"doorman-{address}:{port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop listening (the address is free for sshd once this returns)."""
        self._closing.set()
        self._thread.join()
        self._socket.close()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError):
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            connection.close()
            self._on_knock()
