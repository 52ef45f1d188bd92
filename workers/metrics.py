"""Prometheus metrics: what each worker counts, and the supervisor's figures read from the state feed.

Workers count in prometheus-client's multiprocess mode (the supervisor points PROMETHEUS_MULTIPROC_DIR at a
fresh folder under run/ before it starts gunicorn), so `GET /metrics`, whichever worker answers it, adds up
every worker. The supervisor's own figures (upstream listing, downloads, disk cache) are already in
the state feed's facts, which every worker reads; they are exported from there rather than from a second registry.

Model labels only ever hold names from the catalogue: a request for an unknown name counts under "".
With a big catalogue the per-model series add up (a latency histogram is 16 series per model), so
`--metrics-model-labels` (REPLICA_METRICS_MODEL_LABELS) chooses where the model and version labels carry a
name: `all` (the default), `counters` (counters and gauges per model, histograms for the whole replica), or
`none` (every series for the whole replica); where they do not, they are "".
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from replica import feed, quarantine
from replica.disktree import DiskTree

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter("replica_requests", "Prediction requests by model, version and HTTP status code",
                   ["model", "version", "code"])
REQUEST_SECONDS = Histogram("replica_request_duration_seconds", "Prediction request latency by model", ["model"],
                            buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("replica_requests_in_flight", "Prediction requests being served", multiprocess_mode="livesum")
LOADS = Counter("replica_model_loads", "Model versions loaded into memory", ["model"])
LOAD_SECONDS = Histogram("replica_model_load_duration_seconds", "Time to load a model version into memory",
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0))
LOAD_FAILURES = Counter("replica_model_load_failures", "Model versions that failed to load or fetch", ["model"])
EVICTIONS = Counter("replica_model_evictions", "Model versions evicted from memory to make room (model caching)")
IN_MEMORY = Gauge("replica_models_in_memory", "Model versions held in memory, all workers together",
                  multiprocess_mode="livesum")
CACHE_HITS = Counter("replica_cache_hits", "Requests whose model version was already in memory")
CACHE_MISSES = Counter("replica_cache_misses", "Requests that had to bring their model version into memory")
SHED = Counter("replica_requests_shed", "Prediction requests answered 503 because autoscaling.max_replica_concurrency "
               "requests were already in flight")
BATCH_SIZE = Histogram("replica_batch_size", "Requests per batch run (server_side_batching), by model", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
BATCH_WAIT_SECONDS = Histogram("replica_batch_wait_seconds", "Time a request waited in the batch queue before its "
                               "batch ran (server_side_batching), by model", ["model"], buckets=LATENCY_BUCKETS)

_labels = os.environ.get("REPLICA_METRICS_MODEL_LABELS") or "all"
_per_model_counters = _labels != "none"
_per_model_histograms = _labels == "all"

_request_series: dict[tuple[str, str, int], tuple] = {}


def model_label(name: str) -> str:
    """The model label of a counter or gauge under the --metrics-model-labels setting."""
    return name if _per_model_counters else ""


def observe_request(model: str, version: str, status: int, seconds: float) -> None:
    """Count one prediction; each label set's children are looked up once, not on every request."""
    if not _per_model_counters:
        model = version = ""
    key = (model, version, status)
    series = _request_series.get(key)
    if series is None:
        series = _request_series.setdefault(key, (REQUESTS.labels(model, version, str(status)),
                                                  REQUEST_SECONDS.labels(model if _per_model_histograms else "")))
    series[0].inc()
    series[1].observe(seconds)


class Prediction:
    """One prediction of the protocol routes (V2 over REST and gRPC, TF Serving's predict), counted as the
    Cortex route counts its own: in flight from its creation, observed by `end` with the model and version it
    was served by, or, when it failed, the model it named only if the catalogue knows it (a name a client made
    up never becomes a label)."""

    __slots__ = ("started", "model", "version", "status")

    def __init__(self) -> None:
        IN_FLIGHT.inc()
        self.started = time.perf_counter()
        self.model = self.version = ""
        self.status = 500

    def served(self, model: str, version: str) -> None:
        self.model, self.version, self.status = model, version, 200

    def end(self, named: str, known: Callable[[str], bool]) -> None:
        IN_FLIGHT.dec()
        if self.status != 200 and known(named):
            self.model = named
        observe_request(self.model, self.version, self.status, time.perf_counter() - self.started)


def count_shed() -> None:
    """A prediction refused at admission (503): counted on its own and with the other requests by status."""
    SHED.inc()
    observe_request("", "", 503, 0.0)


def observe_batch(key: tuple, size: int, waits: list[float]) -> None:
    """One batch run: its size and each member's wait; the key's first element is the model name ("" for a
    Python predictor's batches, which are not per model)."""
    model = key[0] if key and isinstance(key[0], str) and _per_model_histograms else ""
    BATCH_SIZE.labels(model).observe(size)
    wait = BATCH_WAIT_SECONDS.labels(model)
    for seconds in waits:
        wait.observe(seconds)


class SupervisorCollector:
    """The supervisor's figures, from the facts of the state feed it publishes after every poll and fetch."""

    def __init__(self, tree: DiskTree):
        self.tree = tree

    def collect(self) -> Iterable:
        state = feed.facts(self.tree.feed_file)
        on_disk, errors = feed.version_counts(self.tree.feed_file)
        yield CounterMetricFamily("replica_upstream_list_calls", "Upstream listing calls (one paginated "
                                  "ListObjectsV2 per root per poll)", value=state.get("list_calls", 0))
        yield CounterMetricFamily("replica_upstream_bytes_downloaded", "Bytes of model files downloaded",
                                  value=state.get("bytes_downloaded", 0))
        yield CounterMetricFamily("replica_disk_evictions", "Model versions removed from disk to make room",
                                  value=state.get("disk_evictions", 0))
        for name, help_text, key in (
            ("replica_upstream_poll_duration_seconds", "Duration of the last upstream poll", "poll_seconds"),
            ("replica_upstream_last_poll_timestamp_seconds", "When the last poll ended", "last_poll"),
            ("replica_upstream_last_success_timestamp_seconds", "When the upstream was last listed without "
             "an error", "last_success"),
        ):
            if state.get(key) is not None:
                yield GaugeMetricFamily(name, help_text, value=state[key])
        yield GaugeMetricFamily("replica_models_upstream", "Model versions in the upstream catalogue",
                                value=state.get("versions_upstream", 0))
        yield GaugeMetricFamily("replica_models_on_disk", "Model versions in the disk tree",
                                value=on_disk)
        yield GaugeMetricFamily("replica_model_errors", "Model versions with a listing, download or layout error",
                                value=errors)
        quarantined = GaugeMetricFamily("replica_model_quarantined", "Model versions quarantined because a worker "
                                        "died loading them (1 per version; the reason is in GET /v1/models)",
                                        labels=["model", "version"])
        for (name, version) in sorted(quarantine.held(self.tree.workers_dir, time.time())):
            quarantined.add_metric([name, str(version)], 1)
        yield quarantined


class MemoryCollector:
    """The memory each version this worker holds takes (measured at its load), and the cache's byte budget
    and use: read from the answering worker's registry at scrape time. With model caching that worker is the
    replica's only one; without it every worker holds the same versions."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self) -> Iterable:
        sizes = GaugeMetricFamily("replica_model_memory_bytes", "Memory a model version in memory takes, measured "
                                  "at its load (the answering worker's)", labels=["model", "version"])
        if _per_model_counters:
            for name, version, size in self.registry.memory_sizes():
                sizes.add_metric([name, str(version)], size)
            yield sizes
        budget = getattr(self.registry, "cache_memory", None)
        if budget is not None:
            yield GaugeMetricFamily("replica_cache_memory_budget_bytes", "predictor.models.cache_memory",
                                    value=budget)
            yield GaugeMetricFamily("replica_cache_memory_used_bytes", "Memory the versions in memory take, "
                                    "reserved for those loading included", value=self.registry.memory_used())


def exposition(tree: DiskTree, models=None) -> tuple[bytes, str]:
    """The text a scrape of /metrics gets, summed over every worker, with the answering worker's memory figures
    when its model registry (`models`) is given."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:  # one process (a test, or the app run outside the supervisor): its own default registry
        registry = CollectorRegistry()
        registry.register(_Default())
    registry.register(SupervisorCollector(tree))
    if models is not None:
        registry.register(MemoryCollector(models))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Default:
    def collect(self) -> Iterable:
        return REGISTRY.collect()
