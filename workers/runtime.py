"""A worker's runtime: its predictor, the predictor's client and the model registry, built after fork.

It writes a readiness marker once the predictor's `__init__` has run and the models on disk have been loaded,
which `/readyz` counts across workers, and answers the health questions the views ask (is the supervisor
alive, which workers are ready).
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from replica import feed
from replica.disktree import DiskTree
from replica.interface import CLIENT_ARG
from replica.spec import ApiSpec, PredictorSpec
from workers import memory, metrics
from workers.batching import Batcher, Failure
from workers.caching import CachingRegistry
from workers.errors import ReplicaHTTPError, Unavailable
from workers.predictor import load_predictor_class
from workers.registry import ModelRegistry
from workers.scope import carry_context_into_thread_pools

log = logging.getLogger(__name__)

# A prediction that reaches a worker still loading the models on disk (a worker that replaced a crashed one
# while no other could answer) waits this long for them before it is answered 503: they are on disk already,
# so a short wait is a slower answer instead of a failed one.
STARTUP_WAIT_SECONDS = 10.0


class Runtime:
    """One worker's predictor, clients and registry."""

    def __init__(self, api: ApiSpec, tree: DiskTree, heartbeat_timeout: float, worker_timeout: float = 30.0,
                 load_wait: float = 30.0, load_timeout: float = 600.0):
        self.api = api
        self.tree = tree
        self.heartbeat_timeout = heartbeat_timeout
        # /healthz calls a worker hung once its event loop has been silent this long: well before the master
        # kills it at --worker-timeout, so the answer is honest meanwhile, and never for a pause of a second or two.
        self.worker_timeout = worker_timeout
        self.hang_after = min(worker_timeout, max(5.0, worker_timeout / 3))
        pred = api.predictor
        carry_context_into_thread_pools()  # an ensemble's pool work pins in its request (workers/scope.py)
        memory.map_large_blocks()  # unloaded weights go back to the system (workers/memory.py)
        cls = load_predictor_class(api)
        batching = pred.server_side_batching
        self.batcher = (Batcher(batching.max_batch_size, batching.batch_interval, observe=metrics.observe_batch)
                        if batching else None)
        if pred.cache_size is None:
            self.registry = ModelRegistry(tree, load=self._load_model, unload=self._unload_model,
                                          single_model=pred.single_model, load_timeout=load_timeout)
        else:
            self.registry = CachingRegistry(tree, load=self._load_model, unload=self._unload_model,
                                            single_model=pred.single_model, cache_size=pred.cache_size,
                                            load_wait=load_wait, load_timeout=load_timeout,
                                            cache_memory=pred.cache_memory)
        self.client = self._make_client()
        self.predictor = make_predictor(cls, pred, self.client)
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
        # None: the predictor's load_model, bound once the predictor exists
        self._loader = framework_loader(pred, self.registry)
        if pred.type == "onnx":
            from workers.onnx_client import ONNXClient

            return ONNXClient(self.registry, self.batcher)
        if pred.type == "tensorflow":
            from workers.tensorflow_client import TensorFlowClient

            return TensorFlowClient(self.registry, self.batcher)
        from workers.python_client import PythonClient

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
        # A runtime folder removed under the replica is made again by the supervisor (supervisor/tree_guard.py);
        # the marker is then written again, or /readyz would count this worker out for the rest of its life.
        while True:
            time.sleep(1.0)
            if not marker.exists() and self.tree.workers_dir.is_dir():
                try:
                    marker.write_text(str(time.time()))
                except OSError:
                    pass

    # -- health ----------------------------------------------------------------------------------------------
    def not_ready_reason(self) -> str | None:
        """Why the supervisor cannot give this replica its models yet (the state directory is gone or
        unwritable, or the first sync to disk has not finished, with the upstream errors), or None: what
        /readyz, the V2 health route and a prediction answer alike."""
        self.registry.refresh_state()
        tree_error = self.registry.feed.facts.get("state_dir_error")  # removed, replaced or unwritable
        if tree_error:
            return tree_error
        if not self.registry.supervisor_ready:
            why = "; ".join(self.upstream_errors().values())
            return "the first sync of models to disk has not finished" + (f": {why}" if why else "")
        return None

    def wait_until_loaded(self) -> None:
        """Return once this worker serves the models on disk; 503 (Unavailable) with the reason when the
        supervisor has none to give yet, or when they take longer than STARTUP_WAIT_SECONDS to load."""
        loaded = self.registry.initial_sync_done
        if loaded.is_set():
            return
        why = self.not_ready_reason()
        if why:  # nothing to wait for: answer now, with the reason
            raise Unavailable(why, retry_after=2)
        if not loaded.wait(STARTUP_WAIT_SECONDS):
            raise Unavailable("this worker is still loading the models on disk", retry_after=2)

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
        try:
            markers = list(self.tree.workers_dir.iterdir())
        except FileNotFoundError:  # the runtime folder was removed; the supervisor makes it again
            return pids
        for marker in markers:
            if marker.name.isdigit() and psutil.pid_exists(int(marker.name)):
                pids.append(int(marker.name))
        return pids


def framework_loader(pred: PredictorSpec,
                     registry: ModelRegistry | None = None) -> Callable[[str, str, int], Any] | None:
    """(model_path, name, version) -> model for ONNX and TensorFlow versions (the session, the SavedModel), as
    every worker loads them; None for a Python predictor, whose own `load_model` loads. A serving worker's
    ONNX sessions, loaded by its `registry`, are pre-packed after they serve where that applies
    (workers/onnx_prepack.py); without a registry (a trial load) each session is built as it will finally run."""
    if pred.type == "onnx":
        from workers.onnx_client import execution_providers, onnx_loader, session_config
        from workers.onnx_prepack import Packer, deferred

        providers = execution_providers(pred.config)
        log.info("onnxruntime execution providers: %s", ", ".join(providers))
        entries = session_config(pred.config)
        packer = Packer(registry.tree, registry.marks) \
            if registry is not None and deferred(entries, providers, pred.cache_memory) else None
        return onnx_loader(providers, entries, packer)
    if pred.type == "tensorflow":
        from workers.tensorflow_client import tensorflow_loader

        keys = {s.name: s.signature_key for s in pred.sources if s.name}
        dir_key = next((s.signature_key for s in pred.sources if s.is_dir), pred.signature_key)
        return tensorflow_loader(keys, dir_key)
    return None


def make_predictor(cls: type, pred: PredictorSpec, client: Any) -> Any:
    """The predictor instance, made as Cortex made it: `config`, and the client when `__init__` asks for it."""
    kwargs = {"config": dict(pred.config)}
    client_arg = CLIENT_ARG[pred.type]
    if client_arg in inspect.signature(cls.__init__).parameters:
        kwargs[client_arg] = client
    return cls(**kwargs)


def runtime_from_env() -> tuple[Runtime, int]:
    """Build the worker from the parsed spec and the settings the supervisor passes: the spec file itself is
    read only by the supervisor, so an edit saved into it changes nothing until a SIGHUP has checked it."""
    from replica.spec_codec import spec_from_json

    api: ApiSpec = spec_from_json(Path(os.environ["REPLICA_SPEC_FILE"]).read_bytes())
    os.environ.update(api.predictor.env)  # a reload may have changed it since gunicorn started
    tree = DiskTree(Path(os.environ["REPLICA_STATE_DIR"]), os.environ.get("REPLICA_RUNTIME_DIR"))
    poll = float(os.environ.get("REPLICA_POLL_INTERVAL", "10"))
    heartbeat = float(os.environ.get("REPLICA_HEARTBEAT_TIMEOUT") or max(30.0, 4 * poll))
    runtime = Runtime(api, tree, heartbeat_timeout=heartbeat,
                      worker_timeout=float(os.environ.get("REPLICA_WORKER_TIMEOUT") or 30),
                      load_wait=float(os.environ.get("REPLICA_LOAD_WAIT") or 30),
                      load_timeout=float(os.environ.get("REPLICA_LOAD_TIMEOUT") or 600))
    return runtime, int(os.environ.get("REPLICA_MAX_REQUEST_SIZE", str(64 << 20)))
