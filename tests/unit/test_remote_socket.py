"""The SSH socket's options, on a real TCP connection over loopback."""

from __future__ import annotations

import socket

import pytest

from ec2_executor.remote import _low_latency_socket

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")


def test_the_ssh_socket_sends_at_once_and_acks_every_read_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        raw = socket.create_connection(server.getsockname(), timeout=5)
        sock = _low_latency_socket(raw)
        peer, _ = server.accept()
        with sock, peer:
            assert sock.gettimeout() == 5  # kept from the connection
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            for _ in range(3):
                # The kernel leaves quick-ACK mode by itself (e.g. once we send), so each
                # read must set it again.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
                peer.sendall(b"reply")
                assert sock.recv(16) == b"reply"
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
                sock.sendall(b"request")
                assert peer.recv(16) == b"request"
