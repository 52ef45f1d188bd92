"""A worker's gRPC server: the Open Inference Protocol (workers/v2_grpc.py) on `--grpc-port`.

Each worker starts its own, after fork and once its Runtime exists (workers/wsgi.py), and binds host:port
itself with SO_REUSEPORT, so the kernel spreads new connections over the workers. The HTTP socket is bound
once by the supervisor and inherited instead; that cannot be done here: grpcio binds addresses, never a socket
it is handed, and its core (threads, pollers) must start in the process that serves, never in the gunicorn
master before a fork. A gRPC channel is one long-lived HTTP/2 connection, so a client's calls stay with one
worker until it reconnects; a worker that stops closes its socket, and the connections still queued on that
socket are refused (clients reconnect to the others).
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc

from workers.runtime import Runtime

log = logging.getLogger(__name__)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start(runtime: Runtime, host: str, port: int, max_message: int) -> grpc.Server:
    """The worker's gRPC server, serving: `threads_per_process` threads run the calls, at most
    `max_replica_concurrency` calls are held at once (more get RESOURCE_EXHAUSTED), and a message may be as
    large as a request body may (--max-request-size). RuntimeError when the port cannot be bound.

    The worker stops it with `server.stop(grace)` (workers.front): no new calls from then on, those in flight
    get `grace` seconds, and the event it returns is set once they have ended."""
    from workers import v2_grpc  # the generated protobuf modules, only in a worker that serves gRPC

    api = runtime.api
    pool = futures.ThreadPoolExecutor(max_workers=api.predictor.threads_per_process, thread_name_prefix="grpc")
    server = grpc.server(pool, maximum_concurrent_rpcs=api.max_replica_concurrency, options=[
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_send_message_length", max_message),
    ])
    v2_grpc.add_to_server(runtime, server)
    where = address(host, port)
    try:
        server.add_insecure_port(where)
    except RuntimeError as e:
        raise RuntimeError(f"cannot listen for gRPC on {where} ({e}); choose another port with --grpc-port") from None
    server.start()
    log.info("serving the Open Inference Protocol over gRPC on %s", where)
    return server

