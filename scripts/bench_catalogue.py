#!/usr/bin/env python
"""Benchmark: a replica with model caching over a large `models.dir` catalogue in S3 (SeaweedFS on 127.0.0.1).

For each catalogue size N (`--models 1000 10000`): upload N one-file python models, start a real replica
(`replica serve`, cache_size 3 / disk_cache_size 5, one worker), and measure

- the time from starting the replica to the first `/readyz` 200,
- the supervisor's RSS once ready (the `replica serve` process), and the worker's,
- list calls per poll (`list_calls` in the state feed's facts over a few polls) and the size of the feed,
- the duration of one watcher pass (the supervisor's own Watcher.sync_once, timed in this process against
  the same bucket: listing, catalogue, feed publish),
- a few cache-miss latencies (distinct cold models, end to end over HTTP) and hit latencies, and the bytes the
  supervisor writes and the worker reads per miss (write/read syscalls, from /proc/PID/io).

It prints a markdown table and writes it to docs/benchmarks.md under "Catalogue scale" (replacing that
section when it exists). Every server it starts is stopped by PID.

    .venv/bin/python scripts/bench_catalogue.py --models 1000 10000
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import botocore.config  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402

from replica import feed  # noqa: E402
from replica.disktree import DiskTree  # noqa: E402
from tests.helpers import put_objects, write_api  # noqa: E402
from tests.replica_proc import ReplicaProcess  # noqa: E402
from tests.s3server import SeaweedS3  # noqa: E402
from tests.predictors import json_predictor  # noqa: E402

CACHE, DISK = 3, 5
PREDICTOR = json_predictor("""
def predict(self, query_params):
    name = query_params["model"]
    return {"name": name, "model": self.client.get_model(name)}
""")


def model_name(i: int) -> str:
    return f"m{i:05d}"


def upload(s3: SeaweedS3, bucket: str, n: int, threads: int) -> float:
    client = s3.client(config=botocore.config.Config(max_pool_connections=threads))
    client.create_bucket(Bucket=bucket)
    objects = {f"models/{model_name(i)}/model.json": json.dumps({"name": model_name(i), "value": i}).encode()
               for i in range(n)}
    start = time.perf_counter()
    put_objects(client, bucket, objects, threads=threads)
    return time.perf_counter() - start


def wait_ready(r: ReplicaProcess, timeout: float) -> float:
    """Seconds from now until /readyz answers 200 (polled every 50 ms)."""
    start = time.perf_counter()
    r.wait_ready(timeout=timeout, interval=0.05)
    return time.perf_counter() - start


def list_calls_per_poll(feed_file: Path, polls: int, timeout: float) -> tuple[float, int]:
    """Watch the feed's facts across `polls` watcher passes: (list calls per pass, feed bytes)."""
    seen: list[tuple[float, int]] = []
    deadline = time.time() + timeout
    while len(seen) < polls + 1 and time.time() < deadline:
        state = feed.facts(feed_file)
        point = (state.get("last_poll"), state.get("list_calls"))
        if point[0] is not None and (not seen or point[0] != seen[-1][0]):
            seen.append(point)
        time.sleep(0.05)
    if len(seen) < 2:
        raise TimeoutError(f"saw only {len(seen)} watcher passes in {timeout}s")
    size = sum(Path(str(feed_file) + s).stat().st_size for s in ("", "-wal") if Path(str(feed_file) + s).exists())
    return (seen[-1][1] - seen[0][1]) / (len(seen) - 1), size


def io_bytes(pid: int) -> tuple[int, int]:
    """(bytes written, bytes read) through syscalls by a process so far (files, sockets, the feed)."""
    io = psutil.Process(pid).io_counters()
    return io.write_chars, io.read_chars


def watcher_pass(spec: Path, env: dict, server_pid: int, passes: int = 3) -> tuple[float, float, float, float]:
    """The supervisor's own watcher pass (prefetch=False), run here on a scratch tree: (median seconds,
    ListObjectsV2 requests per pass, this process's CPU seconds per pass, the S3 server's CPU seconds per
    pass). The two CPU figures tell the replica's own cost from the server's work of listing."""
    from replica.spec import load_spec
    from supervisor.catalogue import Catalogue
    from supervisor.s3_client import make_s3_client
    from supervisor.upstream import open_upstream
    from supervisor.watcher import Watcher

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        api = load_spec(spec)
        upstreams = [(s, open_upstream(s.url, make_s3_client)) for s in api.predictor.sources]
        pages = [0]

        def count_page(**_):
            pages[0] += 1

        for _, upstream in upstreams:
            upstream.client.meta.events.register("before-call.s3.ListObjectsV2", count_page)
        with tempfile.TemporaryDirectory(prefix="bench-watcher-") as tmp:
            tree = DiskTree(tmp)
            watcher = Watcher(tree, Catalogue(api.predictor, upstreams), prefetch=False)
            watcher.start()
            watcher.sync_once()  # the first pass builds the catalogue; the passes timed below find it unchanged
            times = []
            server = psutil.Process(server_pid)
            pages[0] = 0
            cpu_start, server_start = time.process_time(), sum(server.cpu_times()[:2])
            for _ in range(passes):
                start = time.perf_counter()
                watcher.sync_once()
                times.append(time.perf_counter() - start)
            cpu = (time.process_time() - cpu_start) / passes
            server_cpu = (sum(server.cpu_times()[:2]) - server_start) / passes
        return statistics.median(times), pages[0] / passes, cpu, server_cpu
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def timed_post(session: requests.Session, r: ReplicaProcess, name: str) -> float:
    start = time.perf_counter()
    resp = session.post(r.base + "/", params={"model": name}, json={}, timeout=120)
    elapsed = time.perf_counter() - start
    body = resp.json() if resp.status_code == 200 else None
    if body is None or body["model"]["name"] != name:
        raise RuntimeError(f"bad answer for {name}: HTTP {resp.status_code} {resp.text[:300]}")
    return elapsed


def bench_one(s3: SeaweedS3, work: Path, n: int, args) -> dict:
    bucket = f"bench-{n}-{int(time.time())}"
    print(f"[{n}] uploading {n} models with {args.upload_threads} threads ...", flush=True)
    upload_s = upload(s3, bucket, n, args.upload_threads)
    print(f"[{n}] uploaded in {upload_s:.1f}s", flush=True)
    folder = work / f"n{n}"
    spec = write_api(folder, PREDICTOR, type="python", name="catalogue",
                     models={"dir": f"s3://{bucket}/models/", "cache_size": CACHE, "disk_cache_size": DISK},
                     processes_per_replica=1, threads_per_process=4)
    r = ReplicaProcess(spec, folder / "state", env=s3.env, poll_interval=args.poll_interval)
    result: dict = {"models": n, "upload_s": upload_s}
    try:
        r.start()
        result["ready_s"] = wait_ready(r, timeout=900)
        sup = psutil.Process(r.proc.pid)
        result["supervisor_rss_mib"] = sup.memory_info().rss / 2**20
        workers = r.worker_pids()
        result["worker_rss_mib"] = (sum(psutil.Process(p).memory_info().rss for p in workers) / 2**20
                                    if workers else float("nan"))
        print(f"[{n}] ready in {result['ready_s']:.2f}s; supervisor RSS {result['supervisor_rss_mib']:.0f} MiB",
              flush=True)
        calls, state_bytes = list_calls_per_poll(DiskTree(r.state_dir).feed_file, polls=args.polls,
                                                 timeout=args.polls * args.poll_interval * 3 + 120)
        result["list_calls_per_poll"] = calls
        result["state_kib"] = state_bytes / 1024
        session = requests.Session()
        cold = [model_name(i) for i in range(0, n, max(1, n // args.misses))][: args.misses]
        worker = r.worker_pids()[0]
        sup_before, worker_before = io_bytes(r.proc.pid)[0], io_bytes(worker)[1]
        misses = [timed_post(session, r, name) for name in cold]
        time.sleep(1.0)  # the supervisor publishes a fetch within 0.25 s, the worker reads it within 0.2 s
        result["miss_written_kib"] = (io_bytes(r.proc.pid)[0] - sup_before) / len(cold) / 1024
        result["miss_read_kib"] = (io_bytes(worker)[1] - worker_before) / len(cold) / 1024
        hits = [timed_post(session, r, cold[-1]) for _ in range(10)]
        result["miss_ms"] = [m * 1000 for m in misses]
        result["hit_ms_median"] = statistics.median(hits) * 1000
        print(f"[{n}] list calls/poll {calls:.2f}; miss latencies (ms) "
              + ", ".join(f"{m:.0f}" for m in result["miss_ms"]), flush=True)
    finally:
        r.stop()
    # Once the replica has stopped, so that its own polls do not share the S3 server with the measured passes.
    result["pass_s"], result["list_requests"], result["pass_cpu_s"], result["server_cpu_s"] = \
        watcher_pass(spec, s3.env, s3.proc.pid)
    print(f"[{n}] one watcher pass {result['pass_s']:.2f}s ({result['pass_cpu_s']:.2f}s of replica CPU, "
          f"{result['server_cpu_s']:.2f}s of S3 server CPU), {result['list_requests']:.0f} ListObjectsV2 requests",
          flush=True)
    return result


def table(results: list[dict]) -> str:
    head = ("| models | start to /readyz 200 | supervisor RSS | worker RSS | list calls / poll "
            "| ListObjectsV2 requests / poll | watcher pass | its replica CPU | its S3 server CPU | state feed "
            "| miss latency median (min-max) | hit latency median | written / read per miss |")
    rows = [head, "|" + "---|" * 13]
    for r in results:
        miss = r["miss_ms"]
        rows.append(
            f"| {r['models']:,} | {r['ready_s']:.2f} s | {r['supervisor_rss_mib']:.0f} MiB | {r['worker_rss_mib']:.0f} MiB "
            f"| {r['list_calls_per_poll']:.2f} | {r['list_requests']:.0f} | {r['pass_s']:.2f} s | {r['pass_cpu_s']:.2f} s "
            f"| {r['server_cpu_s']:.2f} s | {r['state_kib']:,.0f} KiB "
            f"| {statistics.median(miss):.0f} ms ({min(miss):.0f}-{max(miss):.0f}) | {r['hit_ms_median']:.1f} ms "
            f"| {r['miss_written_kib']:,.1f} KiB / {r['miss_read_kib']:,.1f} KiB |")
    return "\n".join(rows)


def machine() -> str:
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
    except OSError:
        cpu = platform.processor()
    return (f"{os.cpu_count()} CPUs ({cpu or 'unknown'}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def section(results: list[dict], args) -> str:
    uploads = "; ".join(f"{r['models']:,} models in {r['upload_s']:.1f} s" for r in results)
    return f"""## Catalogue scale

`scripts/bench_catalogue.py --models {' '.join(map(str, args.models))}`, run {datetime.date.today().isoformat()}.
A real replica (`replica serve`, one worker with 4 threads, python predictor) over a `models.dir` of N one-file
models in SeaweedFS (`weed mini`) on 127.0.0.1, with `cache_size: {CACHE}`, `disk_cache_size: {DISK}` and
`--poll-interval {args.poll_interval:g}`.
Machine: {machine()}. The S3 server, the replica and the client share these CPUs.

{table(results)}

- *start to /readyz 200*: from launching `replica serve` until `/readyz` first answers 200 (the first watcher
  pass lists the catalogue; nothing is downloaded up front).
- *RSS*: resident memory once ready, of the supervisor (`replica serve`) and of the gunicorn worker.
- *list calls / poll*: growth of `list_calls` in the state feed's facts per watcher pass over {args.polls} passes (one
  paginated listing per root per poll).
- *ListObjectsV2 requests / poll*: the pages of that one listing (S3 returns at most 1,000 keys a page),
  counted on the client during the watcher-pass measurement.
- *watcher pass*: the median of 3 runs of the supervisor's own `Watcher.sync_once` (listing, catalogue,
  publish to the feed) with nothing changed upstream (after a first, untimed pass), timed in the benchmark
  process against the same bucket once the replica has stopped.
  *its replica CPU*: the CPU time of that process per pass (requests, parsing, catalogue, feed); *its S3
  server CPU*: the CPU time SeaweedFS spent per pass answering the listing. The pages are requested one after
  the other, each once the previous one is read, so the wall time is about the two added up.
- *state feed*: the size of RUNTIME/feed.sqlite (and its WAL); a publish writes only the rows that changed.
- *miss latency*: end-to-end `POST /` for {args.misses} distinct cold models (admission, download through the
  supervisor, feed publish, load); *hit latency*: the same model again. *written / read per miss*: bytes the
  supervisor wrote and the worker read through syscalls (files, sockets, the feed) during those misses, per
  miss (/proc/PID/io `wchar` / `rchar`; watcher passes that ran meanwhile included).
- Upload time (setup, not a result; {args.upload_threads} threads of PutObject): {uploads}.
{targets(results)}"""


TARGETS = (("start to /readyz 200", "ready_s", 5.0, "s"), ("watcher pass, nothing changed", "pass_s", 4.0, "s"),
           ("supervisor RSS", "supervisor_rss_mib", 150.0, "MiB"))


def targets(results: list[dict]) -> str:
    """The targets at the largest catalogue measured, and where each pass's time goes."""
    r = max(results, key=lambda r: r["models"])
    lines = [f"\nTargets at {r['models']:,} models:\n", "| target | measured | |", "|---|---|---|"]
    for label, key, bound, unit in TARGETS:
        lines.append(f"| {label} < {bound:g} {unit} | {r[key]:.2f} {unit} | {'met' if r[key] < bound else '**missed**'} |")
    lines.append(f"| bytes per cache miss | {r['miss_written_kib']:,.1f} KiB written by the supervisor, "
                 f"{r['miss_read_kib']:,.1f} KiB read by the worker | not O(catalogue) |")
    lines.append(f"\nOf a {r['pass_s']:.2f} s pass with nothing changed, the replica's own CPU is {r['pass_cpu_s']:.2f} s; "
                 f"the S3 server spends {r['server_cpu_s']:.2f} s of CPU answering the listing's pages, one after the "
                 "other. Start-up waits for that same first listing.\n")
    return "\n".join(lines)


def write_doc(path: Path, text: str) -> None:
    if path.exists():
        doc = path.read_text()
        match = re.search(r"^## Catalogue scale\n.*?(?=^## |\Z)", doc, flags=re.S | re.M)
        doc = (doc[: match.start()] + text + "\n" + doc[match.end():]) if match else doc.rstrip() + "\n\n" + text
    else:
        doc = "# Benchmarks\n\n" + text
    path.write_text(doc.rstrip() + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1000, 10000], help="catalogue sizes")
    parser.add_argument("--upload-threads", type=int, default=32)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--polls", type=int, default=3, help="watcher passes to count list calls over")
    parser.add_argument("--misses", type=int, default=8, help="cold models to time")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-catalogue-"))
    s3 = SeaweedS3(work / "seaweedfs", buckets=[])
    results = []
    try:
        s3.start()
        s3.wait_ready(timeout=60)
        for n in args.models:
            results.append(bench_one(s3, work, n, args))
    finally:
        s3.stop()
    text = section(results, args)
    print()
    print(text)
    if not args.no_doc:
        write_doc(args.doc, text)
        print(f"written to {args.doc}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
