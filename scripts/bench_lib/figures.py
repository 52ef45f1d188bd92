"""The measurements behind each figure of docs/benchmarks.md. Every function starts what it needs on
127.0.0.1, stops it by PID, and returns plain dicts that `scripts/bench.py` turns into tables and plots.

Noise control: the machine is shared (the load generator, the servers and anything else running compete for
the same cores), so the targets of one figure are measured in interleaved rounds (A B C, A B C, ...) and the
figure reports per-round ratios' medians next to the absolute numbers."""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import requests

from replica.disktree import DiskTree
from scripts.bench_lib import load, models, profile, servers, stacks
from tests.helpers import put_objects, write_api
from tests.replica_proc import ReplicaProcess

CONNECTIONS = 8


def tree_rss_mib(pid: int) -> float:
    """RSS of a process and all its descendants, MiB."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def worker_rss_mib(r: ReplicaProcess) -> list[float]:
    out = []
    for pid in r.worker_pids():
        try:
            out.append(psutil.Process(pid).memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            pass
    return out


def replica(work: Path, name: str, *, env: dict | None = None, poll_interval: float = 10.0, **api) -> ReplicaProcess:
    """A replica with the default poll interval (10 s) unless told otherwise."""
    folder = work / name
    spec = write_api(folder, api.pop("predictor", models.ONNX_PREDICTOR), type=api.pop("type", "onnx"), name=name,
                     **api)
    return ReplicaProcess(spec, folder / "state", env=env, poll_interval=poll_interval)


def worker_cpu_s(pids: list[int]) -> list[float]:
    """CPU seconds (user + system) each process has used so far (0 for one that is gone)."""
    out = []
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out.append(t.user + t.system)
        except psutil.NoSuchProcess:
            out.append(0.0)
    return out


def rounds(targets: dict[str, tuple], *, rounds: int, duration: float,
           warmup: float = 1.0, workers: dict[str, list[int]] | None = None,
           roots: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Run wrk against every target (name -> (base URL, body, paths[, headers])) in turn, `rounds` times, with
    CONNECTIONS connections; per target the list of per-round results (see `rounds_at`)."""
    return rounds_at({CONNECTIONS: targets}, rounds=rounds, duration=duration, warmup=warmup, workers=workers,
                     roots=roots)[CONNECTIONS]


def rounds_at(levels: dict[int, dict[str, tuple]], *, rounds: int, duration: float,
              warmup: float = 1.0, workers: dict[str, list[int]] | None = None,
              roots: dict[str, int] | None = None) -> dict[int, dict[str, list[dict]]]:
    """Interleaved rounds at several connection counts: each round runs wrk against every target of every
    level (connections -> targets) in turn, so that every figure of a round sees the same machine state; per
    level and target the list of per-round results. A target is (base URL, body, paths), or (base URL, body,
    paths, headers) for a request with its own headers (a V2 binary request).

    For targets named in `workers` (name -> worker pids), each round also records every worker's CPU seconds,
    which shows whether the load spread over the processes. For targets named in `roots` (name -> the server's
    first process), it records the CPU seconds of the whole process tree during the round and the CPU
    microseconds per request (the load generator's own CPU is not in it)."""
    out: dict[int, dict[str, list[dict]]] = {c: {name: [] for name in ts} for c, ts in levels.items()}
    workers, roots = workers or {}, roots or {}
    warmed: set[str] = set()
    for c, targets in levels.items():  # warm every server once (lazy sessions, JIT caches)
        for name, (base, body, paths, *headers) in targets.items():
            if name not in warmed:
                load.run(base, body, paths, duration=max(warmup, 1), connections=c,
                         headers=next(iter(headers), None))
                warmed.add(name)
    label = len(levels) > 1
    for i in range(rounds):
        for c, targets in levels.items():
            for name, (base, body, paths, *headers) in targets.items():
                pids = workers.get(name, [])
                everything = profile.tree(roots[name]) if name in roots else []
                before, before_all = worker_cpu_s(pids), worker_cpu_s(everything)
                res = load.run(base, body, paths, duration=duration, connections=c,
                               headers=next(iter(headers), None)).as_dict()
                extra = ""
                if everything:
                    res["cpu_s"] = sum(max(a - b, 0.0) for a, b in zip(worker_cpu_s(everything), before_all))
                    res["cpu_us_per_request"] = res["cpu_s"] / max(res["requests"], 1) * 1e6
                    extra += f"  CPU {res['cpu_us_per_request']:5.0f} us/req"
                if pids:
                    used = [a - b for a, b in zip(worker_cpu_s(pids), before)]
                    res["worker_cpu_s"] = used
                    extra += "  CPU per worker " + " / ".join(f"{u:.1f}s ({u / (sum(used) or 1):.0%})" for u in used)
                out[c][name].append(res)
                where = f" -c{c:<3}" if label else ""
                print(f"  round {i + 1}/{rounds}{where} {name:<22} {res['rps']:8.0f} req/s  p50 {res['p50_ms']:6.2f} "
                      f"ms  p99 {res['p99_ms']:7.2f} ms  failed {res['failed']}{extra}", flush=True)
    return out


def summarize(per_round: list[dict]) -> dict:
    out = {"rps": statistics.median(r["rps"] for r in per_round), "worst_rps": min(r["rps"] for r in per_round),
           "p50_ms": statistics.median(r["p50_ms"] for r in per_round),
           "p99_ms": statistics.median(r["p99_ms"] for r in per_round),
           "failed": sum(r["failed"] for r in per_round), "requests": sum(r["requests"] for r in per_round),
           "rounds": per_round}
    if all("cpu_us_per_request" in r for r in per_round):
        out["cpu_us_per_request"] = statistics.median(r["cpu_us_per_request"] for r in per_round)
    return out


def ratio(results: dict, a: str, b: str, key: str = "rps") -> float:
    """Median over rounds of a[key] / b[key] (both measured in the same round)."""
    return statistics.median(x[key] / y[key] for x, y in zip(results[a]["rounds"], results[b]["rounds"]))


def worst_ratio(results: dict, a: str, b: str, key: str = "rps") -> float:
    """The lowest a[key] / b[key] of any round (both measured in the same round)."""
    return min(x[key] / y[key] for x, y in zip(results[a]["rounds"], results[b]["rounds"]))


def at_connections(hot: dict, connections: int) -> dict:
    """The hot-path results measured with `connections` wrk connections."""
    if connections == hot["connections"]:
        return hot["results"]
    return hot["more_connections"][str(connections)]


def connection_levels(hot: dict) -> list[int]:
    """Every connection count the hot path was measured at, the main figure's (CONNECTIONS) first."""
    return [hot["connections"], *(int(c) for c in hot.get("more_connections", {}))]


def spread(results: dict, n: int) -> dict:
    """Keep-alive load over n worker processes: the replica's worst round against plain `gunicorn -w n` (sync)
    in the same round, and against its own median (an unbalanced round shows as a low worst round)."""
    rep = [r["rps"] for r in results[f"replica p{n}"]["rounds"]]
    sync = [r["rps"] for r in results[f"sync floor p{n}"]["rounds"]]
    shares = [max(r["worker_cpu_s"]) / (sum(r["worker_cpu_s"]) or 1)
              for r in results[f"replica p{n}"]["rounds"] if r.get("worker_cpu_s")]
    return {"worst_vs_sync": min(a / b for a, b in zip(rep, sync)),
            "worst_vs_median": min(rep) / statistics.median(rep),
            "sync_worst_vs_median": min(sync) / statistics.median(sync),  # the machine's own noise, for scale
            "busiest_worker_share": max(shares) if shares else float("nan")}


# -- 1. hot path -------------------------------------------------------------------------------------------------
def hot_path(work: Path, *, processes: tuple[int, ...] = (1, 2), n_rounds: int = 3, duration: float = 5.0,
             mlserver: bool = True, limit_stacks: tuple[str, ...] = (), left_out: tuple[str, ...] = (),
             connections: tuple[int, ...] = (CONNECTIONS,)) -> dict:
    """The replica against the floors, MLServer and the limit stacks (`limit_stacks`, names of `stacks.STACKS`, with
    `stacks.WORKERS` processes each), all in the same interleaved rounds.

    Every target runs at CONNECTIONS connections (the figure's `results`); the targets with stacks.WORKERS
    processes also at each other count in `connections` (`more_connections`), in the same rounds. A peer that
    cannot install or start is left out with the reason in `notes` (so is a stack named in `left_out`, the
    --no-stack option), never replaced by anything else."""
    if limit_stacks and stacks.WORKERS not in processes:
        raise ValueError(f"the limit stacks run with {stacks.WORKERS} processes: add it to processes {processes}")
    model_dir = work / "hot" / "iris"
    model_file = models.iris_onnx(model_dir / "1" / "model.onnx")
    running: list = []
    targets: dict[str, tuple[str, str, list[str]]] = {}
    notes: dict = {"stacks": {name: "left out of this run (--no-stack)" for name in left_out}}
    rss: dict[str, float] = {}
    pids: dict[str, int] = {}
    replicas: dict[str, ReplicaProcess] = {}
    optional: dict[int, str] = {}  # id(server) -> its target: peers whose failure to start is noted, not raised
    try:
        for n in processes:
            r = replica(work, f"replica-p{n}", model_path=str(model_dir), processes_per_replica=n,
                        threads_per_process=1).start()
            running.append(r)
            replicas[f"replica p{n}"] = r
            f = servers.Floor(model_file, n, work).start()
            sync = servers.Floor(model_file, n, work, worker_class="sync").start()
            running += [f, sync]
            targets[f"replica p{n}"] = (r.base, models.SAMPLE, ["/"])
            targets[f"floor p{n}"] = (f.base, models.SAMPLE, ["/"])
            targets[f"sync floor p{n}"] = (sync.base, models.SAMPLE, ["/"])
            pids[f"replica p{n}"], pids[f"floor p{n}"], pids[f"sync floor p{n}"] = r.proc.pid, f.proc.pid, sync.proc.pid
        if mlserver:
            py, why = servers.ensure_mlserver_venv(work / "mlserver-install.log")
            if py is None:
                notes["mlserver"] = why
            else:
                notes["mlserver_version"] = servers.mlserver_version(py)
                for n in processes:
                    m = servers.MLServer(py, model_file, n, work).start()
                    running.append(m)
                    optional[id(m)] = f"mlserver p{n}"
                    targets[f"mlserver p{n}"] = (m.base, servers.V2_BODY, ["/v2/models/iris/infer"])
                    pids[f"mlserver p{n}"] = m.proc.pid
        for name in limit_stacks:
            print(f"hot path: setting up {name} ({' '.join(stacks.STACKS[name].pins)})", flush=True)
            st, why = stacks.start(name, model_file, work)
            if st is None:
                notes["stacks"][name] = why
                continue
            running.append(st)
            target = f"{name} p{stacks.WORKERS}"
            optional[id(st)] = target
            targets[target] = (st.base, st.stack.body, [st.stack.path])
            pids[target] = st.proc.pid
        for s in running:
            try:
                s.wait_ready(timeout=180)
            except (RuntimeError, TimeoutError) as e:
                if id(s) not in optional:
                    raise
                target = optional[id(s)]
                targets.pop(target)
                if isinstance(s, stacks.StackServer):
                    notes["stacks"][s.stack.name] = f"{s.stack.title} did not start: {str(e)[-800:]}"
                else:
                    notes["mlserver"] = f"MLServer did not start: {str(e)[-500:]}"
                    targets = {k: v for k, v in targets.items() if not k.startswith("mlserver")}
        check_answers(targets)
        levels = {CONNECTIONS: targets}
        for c in connections:
            if c != CONNECTIONS:
                levels[c] = {k: v for k, v in targets.items() if k.endswith(f" p{stacks.WORKERS}")}
        print(f"hot path: {', '.join(targets)}; {n_rounds} rounds of {duration:g}s each, "
              f"{' and '.join(map(str, levels))} connections", flush=True)
        workers = {name: [c.pid for c in psutil.Process(pid).children()] for name, pid in pids.items()
                   if not name.startswith("replica") and not any(name.startswith(st) for st in stacks.STACKS)}
        workers.update({name: r.worker_pids() for name, r in replicas.items()})
        raw = rounds_at(levels, rounds=n_rounds, duration=duration, workers=workers,
                        roots={name: pid for name, pid in pids.items() if name in targets})
        for name, pid in pids.items():
            if name in targets:
                rss[name] = tree_rss_mib(pid)
        worker_rss = {name: worker_rss_mib(r) for name, r in replicas.items()}
        summaries = {c: {name: summarize(v) for name, v in per.items()} for c, per in raw.items()}
        return {"results": summaries.pop(CONNECTIONS), "notes": notes, "rss_mib": rss,
                "replica_worker_rss_mib": worker_rss, "processes": list(processes), "rounds": n_rounds,
                "duration": duration, "tool": load.generator(), "connections": CONNECTIONS,
                "more_connections": {str(c): v for c, v in summaries.items()},
                "stacks": {"requested": [*limit_stacks, *left_out], "workers": stacks.WORKERS,
                           "versions": {n: stacks.STACKS[n].version for n in limit_stacks}}}
    finally:
        for s in running:
            s.stop()


def check_answers(targets: dict) -> None:
    """One request per target: every server must answer the sample with setosa."""
    for name, (base, body, paths) in targets.items():
        resp = requests.post(base + paths[0], data=body, headers={"Content-Type": "application/json"}, timeout=30)
        if resp.status_code != 200 or "setosa" not in resp.text:
            raise RuntimeError(f"{name} answered {resp.status_code}: {resp.text[:300]}")


# -- 2. caching and 5b. resident models during a scan --------------------------------------------------------------
def caching(work: Path, s3, *, n_models: int = 24, cache_size: int = 3, disk_cache_size: int = 5,
            n_rounds: int = 3, duration: float = 5.0) -> dict:
    model_file = models.iris_onnx(work / "cache-src" / "model.onnx")
    client = s3.client()
    bucket = f"cache-{int(time.time())}"
    client.create_bucket(Bucket=bucket)
    names = [f"m{i:03d}" for i in range(n_models)]
    put_objects(client, bucket, {f"models/{n}/1/model.onnx": model_file.read_bytes() for n in names}, threads=8)
    client.put_object(Bucket=bucket, Key="single/iris/1/model.onnx", Body=model_file.read_bytes())
    cached = replica(work, "replica-cache", env=s3.env, processes_per_replica=1, threads_per_process=1,
                     models={"dir": f"s3://{bucket}/models/", "cache_size": cache_size,
                             "disk_cache_size": disk_cache_size})
    single = replica(work, "replica-single", env=s3.env, model_path=f"s3://{bucket}/single/iris/",
                     processes_per_replica=1, threads_per_process=1)
    out: dict = {"cache_size": cache_size, "disk_cache_size": disk_cache_size, "n_models": n_models}
    try:
        cached.start()
        single.start()
        cached.wait_ready()
        single.wait_ready()
        session = requests.Session()

        def post(name: str) -> float:
            t = time.perf_counter()
            resp = session.post(cached.base + "/", params={"model": name}, data=models.SAMPLE,
                                headers={"Content-Type": "application/json"}, timeout=120)
            elapsed = (time.perf_counter() - t) * 1000
            if resp.status_code != 200 or resp.text != "setosa":
                raise RuntimeError(f"model {name}: HTTP {resp.status_code} {resp.text[:300]}")
            return elapsed

        tree = DiskTree(cached.state_dir)

        def where(name: str) -> tuple[bool, bool]:
            """(on disk: the tree itself, in memory: the worker's own /v1/models view)."""
            rows = session.get(f"{cached.base}/v1/models/{name}", timeout=30).json()["model_version_status"]
            return tree.manifest(name, 1) is not None, any(r["memory"] for r in rows)

        first = names[:disk_cache_size]
        for n in first:  # disk: all of `first`; memory: the last cache_size of them
            post(n)
        out["memory_hit_ms"] = [post(first[-1]) for _ in range(50)]
        disk_hits = []
        log_mark = len(cached.log())
        for n in first * 6:  # cycling over more models than memory holds: every request misses memory, hits disk
            disk, memory = where(n)
            if disk and not memory:
                disk_hits.append(post(n))
            else:
                post(n)
            if len(disk_hits) >= 12:
                break
        out["disk_hit_ms"] = disk_hits
        # The worker's own "loaded in" times for those loads: lock, manifest and InferenceSession creation.
        out["disk_hit_load_ms"] = [float(x) * 1000 for x in
                                   re.findall(r"loaded in ([0-9.]+)s", cached.log()[log_mark:])]
        out["raw_session_ms"], out["raw_release_ms"] = models.session_timings_ms(model_file)
        hot = first[:cache_size]
        for n in hot:
            post(n)
        targets = {"single model": (single.base, models.SAMPLE, ["/"]),
                   "cached, 1 model": (cached.base, models.SAMPLE, [f"/?model={hot[0]}"]),
                   f"cached, hot set of {cache_size}": (cached.base, models.SAMPLE, [f"/?model={n}" for n in hot])}
        print(f"caching: {', '.join(targets)}", flush=True)
        evictions_before = len(cached.log().split("evicted from memory")) - 1
        raw = rounds(targets, rounds=n_rounds, duration=duration)
        out["throughput"] = {k: summarize(v) for k, v in raw.items()}
        out["ort_rotation_cpu_us"] = models.session_rotation_cpu_us(model_file)
        out["hot_set_evictions"] = len(cached.log().split("evicted from memory")) - 1 - evictions_before
        # The scan: every other model once, in order (each a full miss from S3), watching the bounds.
        scan = []
        worker = cached.worker_pids()[0]
        for n in names[disk_cache_size:]:
            disk, memory = where(n)
            ms = post(n)
            status = session.get(cached.base + "/v1/models", timeout=30).json()["models"]
            rows = [v for m in status for v in m["model_version_status"]]
            scan.append({"model": n, "full_miss": not disk and not memory, "ms": ms,
                         "memory": sum(v["memory"] for v in rows), "disk": sum(v["disk"] for v in rows),
                         "worker_rss_mib": psutil.Process(worker).memory_info().rss / 2**20})
        out["scan"] = scan
        out["full_miss_ms"] = [s["ms"] for s in scan if s["full_miss"]]
        print(f"caching: memory hit {statistics.median(out['memory_hit_ms']):.2f} ms, disk hit "
              f"{statistics.median(disk_hits):.2f} ms, full miss {statistics.median(out['full_miss_ms']):.1f} ms, "
              f"InferenceSession {out['raw_session_ms']:.2f} ms", flush=True)
        return out
    finally:
        cached.stop()
        single.stop()


# -- 3. reloads --------------------------------------------------------------------------------------------------
def reloads(work: Path, s3, *, processes: int = 2, every: float = 3.0, n_rounds: int = 2,
            duration: float = 12.0) -> dict:
    client = s3.client()
    bucket = f"reload-{int(time.time())}"
    client.create_bucket(Bucket=bucket)
    src = work / "reload-src"
    a_bytes = models.iris_onnx(src / "a" / "model.onnx").read_bytes()
    client.put_object(Bucket=bucket, Key="a/1/model.onnx", Body=a_bytes)
    heavy = [models.heavy_onnx(src / f"b{i}" / "model.onnx", seed=i).read_bytes() for i in range(2)]
    client.put_object(Bucket=bucket, Key="b/1/model.onnx", Body=heavy[1])
    r = replica(work, "replica-reload", env=s3.env, processes_per_replica=processes, threads_per_process=1,
                poll_interval=1.0,
                models={"paths": [{"name": "a", "model_path": f"s3://{bucket}/a/"},
                                  {"name": "b", "model_path": f"s3://{bucket}/b/"}]})
    version = [1]
    b_results = {"ok": 0, "failed": 0}

    def publisher(stop: threading.Event) -> None:
        """A new version of B every `every` seconds; the one before the previous is deleted."""
        while not stop.wait(every):
            version[0] += 1
            v = version[0]
            client.put_object(Bucket=bucket, Key=f"b/{v}/model.onnx", Body=heavy[v % 2])
            if v > 2:
                client.delete_object(Bucket=bucket, Key=f"b/{v - 2}/model.onnx")

    def b_client(stop: threading.Event) -> None:
        """Model B itself, 20 requests a second: its answers must not fail while its versions change."""
        s = requests.Session()
        while not stop.wait(0.05):
            try:
                ok = s.post(r.base + "/", params={"model": "b"}, data=models.SAMPLE,
                            headers={"Content-Type": "application/json"}, timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            b_results["ok" if ok else "failed"] += 1

    try:
        r.start().wait_ready()
        base = (r.base, models.SAMPLE, ["/?model=a"])
        load.run(*base, duration=2, connections=CONNECTIONS)
        raw: dict[str, list[dict]] = {"steady": [], "B reloading": []}
        reloads_seen = 0
        for i in range(n_rounds):
            for name in raw:
                stop = threading.Event()
                threads = [threading.Thread(target=b_client, args=(stop,))]
                if name == "B reloading":
                    threads.append(threading.Thread(target=publisher, args=(stop,)))
                    before = version[0]
                for t in threads:
                    t.start()
                res = load.run(*base, duration=duration, connections=CONNECTIONS).as_dict()
                stop.set()
                for t in threads:
                    t.join()
                if name == "B reloading":
                    reloads_seen += version[0] - before
                raw[name].append(res)
                print(f"  round {i + 1}/{n_rounds} {name:<12} {res['rps']:8.0f} req/s  p50 {res['p50_ms']:6.2f} ms  "
                      f"p99 {res['p99_ms']:7.2f} ms  failed {res['failed']}", flush=True)
        loaded = [v for v in r.get("/v1/models/b").json()["model_version_status"] if v["state"] == "AVAILABLE"]
        return {"results": {k: summarize(v) for k, v in raw.items()}, "versions_published": reloads_seen,
                "b_latest_loaded": max((int(v["version"]) for v in loaded), default=0), "b_last": version[0],
                "b_requests": b_results, "every": every, "processes": processes, "duration": duration,
                "rounds": n_rounds, "b_mib": len(heavy[0]) / 2**20,
                "b_session_ms": models.session_timings_ms(src / "b0" / "model.onnx", repeat=5)[0]}
    finally:
        r.stop()


# -- 4. catalogue scale (scripts/bench_catalogue.py) ---------------------------------------------------------------
def scale(work: Path, s3, sizes: list[int]) -> tuple[list[dict], SimpleNamespace]:
    from scripts import bench_catalogue

    args = SimpleNamespace(models=sizes, upload_threads=32, poll_interval=2.0, polls=3, misses=8)
    return [bench_catalogue.bench_one(s3, work, n, args) for n in sizes], args


# -- 5. memory per worker ----------------------------------------------------------------------------------------
def memory(work: Path) -> dict:
    """Worker RSS of an idle replica and after 200 requests, for the ONNX and the TensorFlow predictor."""
    onnx_dir = work / "mem-onnx" / "iris"
    models.iris_onnx(onnx_dir / "1" / "model.onnx")
    tf_dir = work / "mem-tf" / "iris"
    models.tensorflow_iris(tf_dir / "1")
    tf_predictor = (models.ROOT / "examples" / "tensorflow" / "predictor.py").read_text()
    out = {}
    for kind, kw in (("onnx", {"model_path": str(onnx_dir)}),
                     ("tensorflow", {"type": "tensorflow", "predictor": tf_predictor,
                                     "models": {"paths": [{"name": "iris", "model_path": str(tf_dir)}]}})):
        r = replica(work, f"replica-mem-{kind}", processes_per_replica=1, threads_per_process=1, **kw)
        try:
            r.start().wait_ready(timeout=180)
            idle = worker_rss_mib(r)
            s = requests.Session()
            for _ in range(200):
                resp = s.post(r.base + "/", data=models.SAMPLE, headers={"Content-Type": "application/json"},
                              timeout=60)
                if resp.status_code != 200 or "setosa" not in resp.text:
                    raise RuntimeError(f"{kind}: HTTP {resp.status_code} {resp.text[:300]}")
            out[kind] = {"worker_idle_mib": idle[0], "worker_mib": worker_rss_mib(r)[0],
                         "supervisor_mib": psutil.Process(r.proc.pid).memory_info().rss / 2**20,
                         "total_mib": tree_rss_mib(r.proc.pid)}
            print(f"memory: {kind} worker {out[kind]['worker_mib']:.0f} MiB", flush=True)
        finally:
            r.stop()
    return out


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
