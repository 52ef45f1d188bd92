"""The WSGI app each gunicorn worker runs: the predictor behind Cortex's HTTP contract.

A worker builds everything after fork: the predictor class, its client, and the model registry whose thread
loads models from the disk tree. It writes a readiness marker once its predictor's `__init__` has run and
the models on disk have been loaded, which `/readyz` counts across workers.
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from flask import Blueprint, Flask, Request, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from replica import feed
from replica.disktree import DiskTree
from replica.interface import CLIENT_ARG
from replica.spec import ApiSpec
from workers import encoding, metrics
from workers.batching import Batcher, Failure
from workers.board import stalled
from workers.errors import BadRequest, ReplicaHTTPError, Unavailable
from workers.predictor import load_predictor_class
from workers.caching import CachingRegistry
from workers.registry import ModelRegistry

log = logging.getLogger(__name__)

# A prediction that reaches a worker still loading the models on disk (a worker that replaced a crashed one
# while no other could answer) waits this long for them before it is answered 503: they are on disk already,
# so a short wait is a slower answer instead of a failed one.
STARTUP_WAIT_SECONDS = 10.0


class Runtime:
    """One worker's predictor, clients and registry."""

    def __init__(self, api: ApiSpec, tree: DiskTree, heartbeat_timeout: float, worker_timeout: float = 30.0):
        self.api = api
        self.tree = tree
        self.heartbeat_timeout = heartbeat_timeout
        # /healthz calls a worker hung once its event loop has been silent this long: well before the master
        # kills it at --worker-timeout, so the answer is honest meanwhile, and never for a pause of a second or two.
        self.worker_timeout = worker_timeout
        self.hang_after = min(worker_timeout, max(5.0, worker_timeout / 3))
        pred = api.predictor
        cls = load_predictor_class(api)
        batching = pred.server_side_batching
        self.batcher = (Batcher(batching.max_batch_size, batching.batch_interval, observe=metrics.observe_batch)
                        if batching else None)
        registry_class = ModelRegistry if pred.cache_size is None else CachingRegistry
        self.registry = registry_class(tree, load=self._load_model, unload=self._unload_model,
                                       single_model=pred.single_model, cache_size=pred.cache_size)
        self.client = self._make_client()
        kwargs = {"config": dict(pred.config)}
        init_params = inspect.signature(cls.__init__).parameters
        client_arg = CLIENT_ARG[pred.type]
        if client_arg in init_params:
            kwargs[client_arg] = self.client
        self.predictor = cls(**kwargs)
        self.predict_args = tuple(inspect.signature(self.predictor.predict).parameters)
        post = getattr(self.predictor, "post_predict", None)
        self.post_predict = post
        self.post_predict_args = tuple(inspect.signature(post).parameters) if post else ()
        self.wanted_args = frozenset(self.predict_args) | frozenset(self.post_predict_args)
        # What exists now (modules, the predictor) lives as long as the worker: freeze it out of the collector's
        # way, so the full collection that releases an evicted or replaced model scans only what came after
        # (about 100 ms less per eviction on a busy 2-core machine; see docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        if pred.sources:
            self.registry.start()
        else:
            self.registry.initial_sync_done.set()
        threading.Thread(target=self._mark_ready, name="ready-marker", daemon=True).start()

    def _make_client(self):
        pred = self.api.predictor
        if pred.type == "onnx":
            from workers.onnx_client import ONNXClient, execution_providers, onnx_loader

            providers = execution_providers(pred.config)
            log.info("onnxruntime execution providers: %s", ", ".join(providers))
            self._loader = onnx_loader(providers)
            return ONNXClient(self.registry, self.batcher)
        if pred.type == "tensorflow":
            from workers.tensorflow_client import TensorFlowClient, tensorflow_loader

            keys = {s.name: s.signature_key for s in pred.sources if s.name}
            dir_key = next((s.signature_key for s in pred.sources if s.is_dir), pred.signature_key)
            self._loader = tensorflow_loader(keys, dir_key)
            return TensorFlowClient(self.registry, self.batcher)
        from workers.python_client import PythonClient

        self._loader = None  # the predictor's load_model, bound once the predictor exists
        return PythonClient(self.registry)

    def _load_model(self, model_path: str, name: str, version: int) -> Any:
        if self._loader is not None:
            return self._loader(model_path, name, version)
        return self.predictor.load_model(model_path)

    def _unload_model(self, model: Any) -> None:
        """The predictor's optional `unload_model(model)` hook, called when a version leaves memory."""
        hook = getattr(self.predictor, "unload_model", None)
        if hook is not None:
            hook(model)

    def predict(self, available: dict) -> Any:
        """Call the predictor's `predict` with the arguments it declares; with server_side_batching, a Python
        predictor's `predict` gets those arguments as lists, one element per request of the batch (Cortex v0.25),
        while the ONNX and TensorFlow clients batch inside `client.predict`."""
        args = {k: available[k] for k in self.predict_args}
        if self.batcher is None or self.api.predictor.type != "python":
            return self.predictor.predict(**args)
        return self.batcher.submit(("",), args, self._predict_batch)

    def _predict_batch(self, items: list[dict]) -> list:
        """One call of `predict` with lists; if it raises, each request runs alone (as a list of one), so a bad
        request fails only itself."""
        try:
            results = self.predictor.predict(**{k: [item[k] for item in items] for k in self.predict_args})
        except Exception as e:
            if len(items) == 1:
                return [Failure(e)]
            log.warning("predict raised %s for a batch of %d requests; running them one at a time",
                        type(e).__name__, len(items))
            return [self._predict_batch([item])[0] for item in items]
        if not isinstance(results, list) or len(results) != len(items):
            got = f"a list of {len(results)}" if isinstance(results, list) else f"a {type(results).__name__}"
            message = (f"with server_side_batching, predict receives lists ({len(items)} requests in this batch) and "
                       f"must return a list of the same length, in the same order; it returned {got}")
            log.error("%s", message)
            return [Failure(ReplicaHTTPError(message))] * len(items)
        return results

    def _mark_ready(self) -> None:
        self.registry.initial_sync_done.wait()
        marker = self.tree.workers_dir / str(os.getpid())
        marker.write_text(str(time.time()))
        log.info("worker %d ready", os.getpid())

    # -- health ----------------------------------------------------------------------------------------------
    def supervisor_alive(self) -> tuple[bool, str]:
        try:
            age = time.time() - self.tree.heartbeat_file.stat().st_mtime
        except FileNotFoundError:
            return False, "the supervisor has not written a heartbeat"
        if age > self.heartbeat_timeout:
            return False, f"the supervisor's watcher last polled {age:.0f}s ago"
        return True, "ok"

    def upstream_errors(self) -> dict[str, str]:
        """Each model root whose last listing failed (credentials, missing bucket, endpoint down), with why."""
        return feed.facts(self.tree.feed_file).get("root_errors") or {}

    def ready_workers(self) -> list[int]:
        pids = []
        for marker in self.tree.workers_dir.iterdir():
            if marker.name.isdigit() and psutil.pid_exists(int(marker.name)):
                pids.append(int(marker.name))
        return pids


def _body(req: Request) -> bytes:
    """The request body, at most --max-request-size bytes (413 over it).

    With a Content-Length (the usual case) the body is read straight from the server's input stream: werkzeug's
    own stream wrapping costs a few µs on every request. A streamed (chunked) body has no length to check up
    front, and werkzeug stops reading it at the limit without an error: one byte more means it was over the
    limit (413), never a body silently cut short."""
    limit = req.max_content_length
    length = req.content_length
    if length is not None:
        if limit is not None and length > limit:
            raise RequestEntityTooLarge()
        return req.environ["wsgi.input"].read(length) if length else b""
    raw = req.get_data(cache=False)
    if limit is not None and len(raw) >= limit and req.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


def _parse_payload(req: Request) -> Any:
    """Cortex's body rules: JSON -> object, text/plain -> str, forms -> form data, anything else -> bytes."""
    ctype = req.environ.get("CONTENT_TYPE")
    if ctype != "application/json":  # the common case skips parsing the header's options
        ctype = (req.mimetype or "").lower()
    if ctype == "application/json" or ctype.endswith("+json"):
        raw = _body(req)
        if not raw:
            raise BadRequest("empty body: send a JSON document")
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise BadRequest(f"malformed JSON body: {e}") from None
        except RecursionError:
            raise BadRequest("malformed JSON body: nested too deeply") from None
    if ctype == "text/plain":
        charset = req.mimetype_params.get("charset", "utf-8")
        try:
            return _body(req).decode(charset)
        except (UnicodeDecodeError, LookupError) as e:
            raise BadRequest(f"text body is not valid {charset}: {e}") from None
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return req.form
    return _body(req)


def _to_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, str):
        return Response(result, mimetype="text/plain")
    if isinstance(result, (bytes, bytearray)):
        return Response(bytes(result), mimetype="application/octet-stream")
    return Response(encoding.dumps(result), mimetype="application/json")


def _error(status: int, message: str, headers: dict[str, str] | list[tuple[str, str]] | None = None) -> Response:
    return Response(json.dumps({"error": message}), status=status, mimetype="application/json", headers=headers or {})


def _status_of(e: HTTPException) -> int:
    return e.response.status_code if e.response is not None else (e.code or 500)


# -- the views: a blueprint over the worker's Runtime, which create_app keeps in app.extensions ------------------
bp = Blueprint("replica", __name__)


def _runtime() -> Runtime:
    return current_app.extensions["replica"]


@bp.app_errorhandler(HTTPException)
def _http_error(e: HTTPException) -> Response:
    """Every HTTP error, the replica's own (workers.errors), werkzeug's and a predictor's `flask.abort`, answers
    its status with `{"error": description}` and its headers; one that carries a response answers that."""
    if e.response is not None:
        return e.response
    headers = [(k, v) for k, v in e.get_headers() if k.lower() != "content-type"]
    return _error(e.code or 500, e.description or e.name, headers)


# Werkzeug's own 413, 404 and 405 (body over the limit, no such route, wrong method) get messages that name the
# fix; the same statuses raised with a description of their own (`flask.abort(404, "...")`) keep it.
@bp.app_errorhandler(RequestEntityTooLarge)
def _too_large(e: RequestEntityTooLarge) -> Response:
    if e.description != RequestEntityTooLarge.description:
        return _http_error(e)
    return _error(413, f"request body over the limit of {current_app.config['MAX_CONTENT_LENGTH']} bytes "
                       "(--max-request-size)")


@bp.app_errorhandler(NotFound)
def _no_route(e: NotFound) -> Response:
    if e.description != NotFound.description:
        return _http_error(e)
    return _error(404, f"no route {request.path}; POST / or /predict runs the predictor, GET / describes the API")


@bp.app_errorhandler(MethodNotAllowed)
def _bad_method(e: MethodNotAllowed) -> Response:
    if e.description != MethodNotAllowed.description:
        return _http_error(e)
    return _error(405, f"{request.method} is not allowed on {request.path}",
                  [("Allow", ", ".join(e.valid_methods or ()))])


@bp.route("/", methods=["POST"])
@bp.route("/predict", methods=["POST"])
def predict() -> Response:
    """Every prediction, whatever its outcome, is counted by model, version and status (in the view itself:
    Flask's before/after/teardown hooks would cost every request about 8% of the hot path)."""
    started = time.perf_counter()
    runtime = _runtime()
    metrics.IN_FLIGHT.inc()
    scope = runtime.registry.request_scope()  # afterwards, which versions the request used
    status = 500
    try:
        response = _predict(runtime, scope)
        status = response.status_code
        return response
    except HTTPException as e:  # the replica's own errors, 413 while reading the body, the predictor's abort
        status = _status_of(e)
        raise
    finally:
        metrics.IN_FLIGHT.dec()
        lv = scope.pinned[0] if scope.pinned else None
        metrics.observe_request(lv.name if lv else "", str(lv.version) if lv else "", status,
                                time.perf_counter() - started)


def _predict(runtime: Runtime, scope) -> Response:
    loaded = runtime.registry.initial_sync_done
    if not loaded.is_set() and not loaded.wait(STARTUP_WAIT_SECONDS):
        raise Unavailable("the replica is still loading its models", retry_after=2)
    # Only what the predictor declares is built: copying the headers and query string costs ~20 µs a request.
    wanted = runtime.wanted_args
    req = request._get_current_object()  # one lookup through Flask's context-local proxy, not one per use
    available = {"payload": _parse_payload(req) if "payload" in wanted else None,
                 "query_params": req.args.to_dict() if "query_params" in wanted else None,
                 "headers": dict(req.headers) if "headers" in wanted else None}
    with scope:
        try:
            result = runtime.predict(available)
        except HTTPException:  # a client's ModelNotFound, or the predictor's flask.abort: its own status
            raise
        except Exception as e:
            log.exception("predictor raised %s", type(e).__name__)
            return _error(500, f"the predictor raised {type(e).__name__}: {e}; see the replica log")
        try:
            response = _to_response(result)
        except (TypeError, ValueError) as e:  # ValueError: a circular reference
            log.exception("cannot serialize the prediction")
            return _error(500, f"cannot serialize the prediction: {e}")
        if runtime.post_predict is not None:
            available["response"] = response
            args = {k: available[k] for k in runtime.post_predict_args}
            post_predict = runtime.post_predict

            def _post() -> None:
                scope.activate()  # what post_predict gets stays pinned until it returns
                try:
                    post_predict(**args)
                except Exception:
                    log.exception("post_predict raised")
                finally:
                    scope.close()

            scope.keep_open()
            response.call_on_close(_post)
    return response


@bp.route("/", methods=["GET"])
def usage() -> Response:
    runtime = _runtime()
    api = runtime.api
    lines = [
        f"API {api.name}: a {api.predictor.type} predictor.",
        "POST / (or /predict) with a JSON body to get a prediction; GET /v1/models for model states.",
        "",
    ]
    for m in runtime.registry.status():
        states = ", ".join(f"v{v['version']} {v['state']}" for v in m["model_version_status"]) or "no versions"
        lines.append(f"model {m['name']}: {states}")
    return Response("\n".join(lines) + "\n", mimetype="text/plain")


@bp.route("/healthz")
def healthz() -> Response:
    runtime = _runtime()
    ok, why = runtime.supervisor_alive()
    if not ok:
        return _error(503, why)
    board = getattr(current_app, "replica_board", None)  # set by workers.front.FrontWorker
    if board is not None:
        hung = stalled(board.rows(), int(time.monotonic() * 1000), int(runtime.hang_after * 1000))
        if hung:
            workers = ", ".join(f"{pid} for {age / 1000:.0f}s" for pid, age in hung)
            return _error(503, f"worker(s) not answering: {workers}; replaced after --worker-timeout "
                               f"{runtime.worker_timeout:g}s")
    return Response(json.dumps({"status": "ok"}), mimetype="application/json")


@bp.route("/readyz")
def readyz() -> Response:
    runtime = _runtime()
    runtime.registry.refresh_state()
    errors = runtime.upstream_errors()
    if not runtime.registry.supervisor_ready:
        why = "; ".join(errors.values())
        raise Unavailable("the first sync of models to disk has not finished" + (f": {why}" if why else ""),
                          retry_after=2)
    ready = len(runtime.ready_workers())
    wanted = runtime.api.predictor.processes_per_replica
    if ready < wanted or not runtime.registry.initial_sync_done.is_set():
        raise Unavailable(f"{ready} of {wanted} workers ready", retry_after=2)
    body = {"status": "ready", "workers": ready}
    if errors:
        body["upstream_errors"] = errors
    return Response(json.dumps(body), mimetype="application/json")


@bp.route("/metrics")
def prometheus_metrics() -> Response:
    body, content_type = metrics.exposition(_runtime().tree)
    return Response(body, content_type=content_type)


@bp.route("/v1/models")
def models() -> Response:
    runtime = _runtime()
    return Response(encoding.dumps({"models": runtime.registry.status(), "upstream_errors": runtime.upstream_errors()}),
                    mimetype="application/json")


@bp.route("/v1/models/<name>")
@bp.route("/v1/models/<name>/versions/<version>")
def model(name: str, version: str | None = None) -> Response:
    registry = _runtime().registry
    if not registry.known(name):
        return _error(404, f"model '{name}' not found")
    status = registry.status(name)[0]
    if version is not None:
        if not (version.isascii() and version.isdigit()):  # "²".isdigit() is True, int("²") fails
            return _error(400, f"invalid model version {version!r}: use a non-negative integer")
        rows = [r for r in status["model_version_status"] if r["version"] == str(int(version))]
        if not rows:
            return _error(404, f"model '{name}' has no version {version}")
        status = {**status, "model_version_status": rows}
    return Response(encoding.dumps(status), mimetype="application/json")


def create_app(runtime: Runtime, max_request_size: int) -> Flask:
    app = Flask("replica")
    app.config["MAX_CONTENT_LENGTH"] = max_request_size
    app.extensions["replica"] = runtime
    app.register_blueprint(bp)
    app.replica_ready = runtime.registry.initial_sync_done.is_set  # read by workers.front before it accepts
    return app


def runtime_from_env() -> tuple[Runtime, int]:
    """Build the worker from the parsed spec and the settings the supervisor passes: the spec file itself is
    read only by the supervisor, so an edit saved into it changes nothing until a SIGHUP has checked it."""
    import pickle

    api: ApiSpec = pickle.loads(Path(os.environ["REPLICA_SPEC_PICKLE"]).read_bytes())
    os.environ.update(api.predictor.env)  # a reload may have changed it since gunicorn started
    tree = DiskTree(Path(os.environ["REPLICA_STATE_DIR"]), os.environ.get("REPLICA_RUNTIME_DIR"))
    poll = float(os.environ.get("REPLICA_POLL_INTERVAL", "10"))
    heartbeat = float(os.environ.get("REPLICA_HEARTBEAT_TIMEOUT") or max(30.0, 4 * poll))
    runtime = Runtime(api, tree, heartbeat_timeout=heartbeat,
                      worker_timeout=float(os.environ.get("REPLICA_WORKER_TIMEOUT") or 30))
    return runtime, int(os.environ.get("REPLICA_MAX_REQUEST_SIZE", str(64 << 20)))
