"""Locust load test for a running replica: one model, or several with a model picked per request.

    # single model (the body is the ONNX example's sample)
    locust -f scripts/locustfile.py --headless --host http://127.0.0.1:8888 -u 8 -r 8 -t 30s SingleModelUser

    # several models: POST /?model=NAME, NAME picked at random per request
    BENCH_MODELS=m000,m001,m002 locust -f scripts/locustfile.py --headless --host http://127.0.0.1:8888 \
        -u 8 -r 8 -t 30s MultiModelUser

Environment:
- BENCH_BODY: the JSON body to POST (default: examples/onnx/sample.json); BENCH_BODY_FILE: a file holding the
  body instead, as bytes (a V2 request with the binary tensor extension is not text)
- BENCH_HEADERS: a JSON object of the request's headers (default: Content-Type: application/json)
- BENCH_MODELS: comma-separated model names for MultiModelUser
- BENCH_PATHS: a JSON list of request paths (with query strings) for BenchUser, which `scripts/bench.py` uses
  when wrk is not installed

FastHttpUser (geventhttpclient) keeps connections alive and is the fastest client locust has. Run locust as
its own process: it pulls in gevent and must never be imported by the replica or the tests.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import FastHttpUser, task

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "onnx" / "sample.json"
BODY: str | bytes = (Path(os.environ["BENCH_BODY_FILE"]).read_bytes() if os.environ.get("BENCH_BODY_FILE")
                     else os.environ.get("BENCH_BODY") or (SAMPLE.read_text() if SAMPLE.exists() else "{}"))
MODELS = [m for m in os.environ.get("BENCH_MODELS", "").split(",") if m]
PATHS = json.loads(os.environ.get("BENCH_PATHS", '["/"]'))
HEADERS = json.loads(os.environ.get("BENCH_HEADERS", '{"Content-Type": "application/json"}'))


class SingleModelUser(FastHttpUser):
    """POST / with the same body, as fast as the replica answers."""

    def wait_time(self):
        return 0

    @task
    def predict(self):
        self.client.post("/", data=BODY, headers=HEADERS)


class MultiModelUser(FastHttpUser):
    """POST /?model=NAME with NAME picked at random per request from BENCH_MODELS."""

    def wait_time(self):
        return 0

    @task
    def predict(self):
        if not MODELS:
            raise RuntimeError("set BENCH_MODELS=name1,name2,... for MultiModelUser")
        name = random.choice(MODELS)
        self.client.post(f"/?model={name}", data=BODY, headers=HEADERS, name="/?model=[name]")


class BenchUser(FastHttpUser):
    """POST to a path picked per request from BENCH_PATHS (scripts/bench.py's fallback load generator)."""

    def wait_time(self):
        return 0

    @task
    def predict(self):
        self.client.post(random.choice(PATHS), data=BODY, headers=HEADERS, name="bench")
