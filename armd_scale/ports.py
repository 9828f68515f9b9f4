"""A free TCP port on the loopback interface, for a process group or a test server that needs one.

The kernel picks the port (bind to port 0); the socket is closed before the caller binds, so another
process could take it in between: fine for a single-node rendezvous and for tests, which retry by
failing loudly rather than by guessing fixed numbers that collide with parallel runs.
"""

from __future__ import annotations

import contextlib
import socket


def free_ports(count: int = 1) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now. The sockets stay open until all are chosen,
    so the kernel cannot hand out one port twice."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    """One port free on 127.0.0.1 right now."""
    return free_ports(1)[0]
