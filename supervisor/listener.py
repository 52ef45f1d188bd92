"""The listening socket: bound by the supervisor before anything else, handed to every gunicorn it starts.

gunicorn takes an inherited socket with `--bind fd://N`. Because the supervisor keeps its own copy open, a
gunicorn that dies and is started again never leaves a moment without a listener: connections that arrive
meanwhile wait in the kernel's backlog until the new workers accept them, instead of being refused.

The gRPC port is the exception: each worker binds it itself (workers/grpc_server.py), so the supervisor only
checks at start-up that it is free.
"""

from __future__ import annotations

import errno
import socket


class PortInUse(Exception):
    """Another process listens on the address: a restart cannot fix that."""


def _listening(host: str, port: int, backlog: int, flag: str, fix: str) -> socket.socket:
    """A TCP socket listening on host:port, or PortInUse saying why not and what to change: `fix` for a port in
    use, `flag` (with --host) for any other refusal."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT of a previous run
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} on {host} is already in use; {fix}") from None
        raise PortInUse(f"cannot listen on {host}:{port}: {e.strerror}; choose another address with --host/{flag}") \
            from None
    return sock


def bind_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP socket listening on host:port, inheritable so that gunicorn can take it over."""
    sock = _listening(host, port, backlog, "--port",
                      "choose another with --port, REPLICA_PORT or `make run-local PORT=...`")
    sock.set_inheritable(True)
    return sock


def check_free(host: str, port: int) -> None:
    """PortInUse when the gRPC port is taken: each worker binds it with SO_REUSEPORT, which a socket of
    another process refuses to every worker, so start-up stops instead, naming the fix."""
    _listening(host, port, 1, "--grpc-port", "choose another with --grpc-port or REPLICA_GRPC_PORT").close()
