"""The gunicorn entry point: `workers.wsgi:application`, imported in each worker after fork.

Nothing is loaded in the gunicorn master (no preload), because TensorFlow and onnxruntime hang in a forked
child once a model has been used in the parent.
"""

import os

from replica.logs import configure_logging
from workers.app import create_app
from workers.runtime import runtime_from_env

configure_logging(os.environ.get("REPLICA_LOG_FORMAT", "text"), process_name="worker")
_runtime, _max_request_size = runtime_from_env()
application = create_app(_runtime, _max_request_size)
