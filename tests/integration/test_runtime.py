"""Ports for the embedded stack's processes, handed out before they bind."""

from __future__ import annotations

import socket

from retention import runtime


def test_a_port_is_handed_out_once_per_process() -> None:
    ports = [runtime.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    for port in ports[:5]:  # and each was free when handed out
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
