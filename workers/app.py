"""The WSGI app each gunicorn worker runs: the predictor behind Cortex's HTTP contract, as a Flask blueprint over
the worker's `Runtime` (workers/runtime.py), which `create_app` keeps in `app.extensions`.
"""

from __future__ import annotations

import json
import logging
import os
import time

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from workers import encoding, metrics, tfserving_rest, v2_rest
from workers.board import stalled
from workers.errors import Unavailable, error_response, http_error_parts, internal_error
from workers.payloads import parse_payload, to_response
from workers.inference import Inference
from workers.runtime import Runtime

log = logging.getLogger(__name__)

# The endpoints that run a model, whichever protocol: shed over autoscaling.max_replica_concurrency.
PREDICTIONS = frozenset({"replica.predict"}) | v2_rest.PREDICTIONS | tfserving_rest.PREDICTIONS

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
    status, body, headers = http_error_parts(e)
    return Response(body, status=status, mimetype="application/json", headers=headers)


# Werkzeug's own 413, 404 and 405 (body over the limit, no such route, wrong method) get messages that name the
# fix; the same statuses raised with a description of their own (`flask.abort(404, "...")`) keep it.
@bp.app_errorhandler(RequestEntityTooLarge)
def _too_large(e: RequestEntityTooLarge) -> Response:
    if e.description != RequestEntityTooLarge.description:
        return _http_error(e)
    return error_response(413, f"request body over the limit of {current_app.config['MAX_CONTENT_LENGTH']} bytes "
                       "(--max-request-size)")


@bp.app_errorhandler(NotFound)
def _no_route(e: NotFound) -> Response:
    if e.description != NotFound.description:
        return _http_error(e)
    return error_response(404, f"no route {request.path}; POST / or /predict runs the predictor, GET / describes the API")


@bp.app_errorhandler(MethodNotAllowed)
def _bad_method(e: MethodNotAllowed) -> Response:
    if e.description != MethodNotAllowed.description:
        return _http_error(e)
    return error_response(405, f"{request.method} is not allowed on {request.path}",
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
    runtime.wait_until_loaded()
    # Only what the predictor declares is built: copying the headers and query string costs ~20 µs a request.
    wanted = runtime.wanted_args
    req = request._get_current_object()  # one lookup through Flask's context-local proxy, not one per use
    available = {"payload": parse_payload(req) if "payload" in wanted else None,
                 "query_params": req.args.to_dict() if "query_params" in wanted else None,
                 "headers": dict(req.headers) if "headers" in wanted else None}
    with scope:
        try:
            result = runtime.predict(available)
        except HTTPException:  # a client's ModelNotFound, or the predictor's flask.abort: its own status
            raise
        except Exception as e:
            return internal_error(req, f"predictor raised {type(e).__name__}", "the predictor raised an exception")
        try:
            response = to_response(result)
        except (TypeError, ValueError):  # ValueError: a circular reference
            return internal_error(req, "cannot serialize the prediction", "cannot serialize the prediction")
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
        return error_response(503, why)
    board = getattr(current_app, "replica_board", None)  # set by workers.front.FrontWorker
    if board is not None:
        hung = stalled(board.rows(), int(time.monotonic() * 1000), int(runtime.hang_after * 1000))
        if hung:
            workers = ", ".join(f"{pid} for {age / 1000:.0f}s" for pid, age in hung)
            return error_response(503, f"worker(s) not answering: {workers}; replaced after --worker-timeout "
                               f"{runtime.worker_timeout:g}s")
    body: dict = {"status": "ok"}
    stuck = _stuck(runtime, board)
    if stuck:
        body["stuck"] = stuck
    return Response(json.dumps(body), mimetype="application/json")


def _stuck(runtime: Runtime, board) -> list[dict]:
    """What user code holds past its deadline: every worker's stuck request threads (from the board), and
    this worker's own requests and loads by name. The replica handles them (504s, a retiring worker, a FAILED
    version), so /healthz stays 200 and says what is going on."""
    mine = os.getpid()
    out = []
    for pid, n, retiring in board.stuck() if board is not None else []:
        row: dict = {"worker": pid, "stuck_requests": n, "retiring": retiring}
        if pid == mine:
            requests = getattr(current_app, "replica_stuck", None)
            row["requests"] = requests() if requests is not None else []
        out.append(row)
    loads = runtime.registry.abandoned.list()
    if loads:
        now = time.time()
        out.append({"worker": mine, "stuck_loads": [{"load": what, "seconds": round(now - since)}
                                                    for what, since in loads]})
    return out


@bp.route("/readyz")
def readyz() -> Response:
    runtime = _runtime()
    why = runtime.not_ready_reason()
    if why:
        raise Unavailable(why, retry_after=2)
    errors = runtime.upstream_errors()
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
    runtime = _runtime()
    body, content_type = metrics.exposition(runtime.tree, runtime.registry)
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
        return error_response(404, f"model '{name}' not found")
    status = registry.status(name)[0]
    if version is not None:
        if not (version.isascii() and version.isdigit()):  # "²".isdigit() is True, int("²") fails
            return error_response(400, f"invalid model version {version!r}: use a non-negative integer")
        rows = [r for r in status["model_version_status"] if r["version"] == str(int(version))]
        if not rows:
            return error_response(404, f"model '{name}' has no version {version}")
        status = {**status, "model_version_status": rows}
    return Response(encoding.dumps(status), mimetype="application/json")


def _prediction_route(app: Flask):
    """Whether a request (method, PATH_INFO) reaches the predict view, as Flask itself routes it, so that no
    spelling of the path (percent-encoding, doubled slashes) escapes autoscaling.max_replica_concurrency."""
    adapter = app.url_map.bind("")
    seen: dict[tuple[str, str], bool] = {}

    def is_prediction(method: str, path: str) -> bool:
        key = (method, path)
        known = seen.get(key)
        if known is None:
            try:
                known = adapter.match(path, method)[0] in PREDICTIONS
            except HTTPException:  # no route, a redirect, a wrong method: not a prediction
                known = False
            if len(seen) >= 1024:  # any path can be sent: remember a bounded few
                seen.clear()
            seen[key] = known
        return known

    return is_prediction


def create_app(runtime: Runtime, max_request_size: int) -> Flask:
    app = Flask("replica")
    app.config["MAX_CONTENT_LENGTH"] = max_request_size
    app.extensions["replica"] = runtime
    app.extensions["replica.v2"] = Inference(runtime)
    app.register_blueprint(bp)
    app.register_blueprint(v2_rest.bp)
    app.register_blueprint(tfserving_rest.bp)
    app.wsgi_app = v2_rest.InferRoute(app.wsgi_app, app.extensions["replica.v2"], max_request_size)
    app.replica_ready = runtime.registry.initial_sync_done.is_set  # read by workers.front before it accepts
    app.replica_is_prediction = _prediction_route(app)  # what workers.front sheds over max_replica_concurrency
    return app


