"""The listening socket: bound by the supervisor before anything else, handed to every gunicorn it starts.

gunicorn takes an inherited socket with `--bind fd://N`. Because the supervisor keeps its own copy open, a
gunicorn that dies and is started again never leaves a moment without a listener: connections that arrive
meanwhile wait in the kernel's backlog until the new workers accept them, instead of being refused.
"""

from __future__ import annotations

import errno
import socket


class PortInUse(Exception):
    """Another process listens on the address: a restart cannot fix that."""


def bind_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP socket listening on host:port, inheritable so that gunicorn can take it over."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT of a previous run
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} on {host} is already in use; choose another with --port, REPLICA_PORT "
                            f"or `make run-local PORT=...`") from None
        raise PortInUse(f"cannot listen on {host}:{port}: {e.strerror}; choose another address with --host/--port") \
            from None
    sock.set_inheritable(True)
    return sock
