"""The gunicorn entry point: `workers.wsgi:application`, imported in each worker after fork.

Nothing is loaded in the gunicorn master (no preload), because TensorFlow and onnxruntime hang in a forked
child once a model has been used in the parent. With --grpc-port (REPLICA_GRPC_PORT), the worker's gRPC server
(workers/grpc_server.py) starts here too, over the same Runtime; the worker stops it when it stops
(`application.replica_stop`, called by workers.front).
"""

import os

from replica.logs import configure_logging
from workers.app import create_app
from workers.runtime import runtime_from_env

configure_logging(os.environ.get("REPLICA_LOG_FORMAT", "text"), process_name="worker")
_runtime, _max_request_size = runtime_from_env()
application = create_app(_runtime, _max_request_size)
_grpc_port = int(os.environ.get("REPLICA_GRPC_PORT") or 0)
if _grpc_port:
    from workers.grpc_server import start

    application.replica_stop = start(_runtime, os.environ.get("REPLICA_HOST") or "127.0.0.1", _grpc_port,
                                     _max_request_size).stop
