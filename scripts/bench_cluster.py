"""Cluster benchmark: memory hit rate and cache misses for 1, 2 and 3 replicas, model-affinity routing against
round robin, the same workload for every row. Writes its section of docs/benchmarks.md (and docs/bench/).

    .venv/bin/python scripts/bench_cluster.py            # about 2-3 minutes
    .venv/bin/python scripts/bench_cluster.py --no-doc   # print the section only

Every row starts fresh replicas (cache_size 3, examples/cluster/api.yaml, ONNX iris models in a local
SeaweedFS) behind the real HAProxy, and sends the same seeded uniform random sequence of requests over 9
models; hits and misses are read from each replica's /metrics before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from deploy.haproxy.config import Server  # noqa: E402
from scripts.run_cluster import BUCKET, SPEC, upload_models  # noqa: E402
from tests.haproxy_proc import HAProxyProcess  # noqa: E402
from tests.replica_proc import ReplicaProcess  # noqa: E402
from tests.s3server import SeaweedS3  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = ROOT / "docs" / "bench" / "cluster.md"
BEGIN, END = "<!-- bench_cluster: begin -->", "<!-- bench_cluster: end -->"
SAMPLE = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def counters(replica: ReplicaProcess) -> dict[str, float]:
    found = {"hits": 0.0, "misses": 0.0}
    for family in text_string_to_metric_families(replica.get("/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == "replica_cache_hits_total":
                found["hits"] += s.value
            elif s.name == "replica_cache_misses_total":
                found["misses"] += s.value
    return found


def run_row(work: Path, s3: SeaweedS3, replicas: int, routing: str, sequence: list[str], clients: int,
            balance_factor: int = 200) -> dict:
    folder = Path(tempfile.mkdtemp(dir=work))
    started = [ReplicaProcess(SPEC, folder / f"state-{i}", env=s3.env, poll_interval=5.0).start()
               for i in range(1, replicas + 1)]
    haproxy = None
    try:
        for r in started:
            r.wait_ready()
        haproxy = HAProxyProcess(folder / "haproxy", [Server(f"r{i}", f"127.0.0.1:{r.port}")
                                                      for i, r in enumerate(started, start=1)],
                                 round_robin=routing == "round robin",
                                 balance_factor=balance_factor).start().wait_ready()
        before = [counters(r) for r in started]
        answered: dict[str, Counter] = defaultdict(Counter)
        failures = []
        lock = threading.Lock()

        def client(part: list[str]) -> None:
            session = requests.Session()
            for name in part:
                resp = session.post(haproxy.base + "/", params={"model": name}, json=SAMPLE, timeout=60)
                with lock:
                    if resp.status_code != 200:
                        failures.append(resp.status_code)
                    answered[name][resp.headers.get("X-Replica", "")] += 1

        parts = [sequence[i::clients] for i in range(clients)]
        threads = [threading.Thread(target=client, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        after = [counters(r) for r in started]
    finally:
        if haproxy is not None:
            haproxy.stop()
        for r in started:
            r.stop()
    hits = sum(a["hits"] - b["hits"] for a, b in zip(after, before))
    misses = sum(a["misses"] - b["misses"] for a, b in zip(after, before))
    away = sum(sum(c.values()) - max(c.values()) for c in answered.values())
    return {"replicas": replicas, "routing": routing, "clients": clients, "requests": len(sequence),
            "balance_factor": balance_factor if routing == "affinity" else None,
            "hits": int(hits), "misses": int(misses), "hit_rate": hits / max(1, hits + misses),
            "away_from_home": away, "failed": len(failures), "req_per_s": len(sequence) / seconds}


def section(data: dict) -> str:
    def rows(selected: list[dict]) -> str:
        return "\n".join(
            f"| {r['replicas']} | {r['routing']} | {r['balance_factor'] or '-'} | {r['clients']} | {r['hit_rate']:.2f} | "
            f"{r['misses']:,} | {r['away_from_home'] if r['routing'] != 'round robin' else '-'} | {r['failed']} | "
            f"{r['req_per_s']:,.0f} |" for r in selected)

    header = ("| replicas | routing | balance factor | clients | memory hit rate | misses | away from home | failed | "
              "req/s |\n|---|---|---|---|---|---|---|---|---|")
    main_rows = [r for r in data["rows"] if r.get("sweep") is None]
    sweep_rows = [r for r in data["rows"] if r.get("sweep")]
    return f"""{BEGIN}
## Scaling out: model affinity against round robin

Generated by `scripts/bench_cluster.py` (not part of `make bench`), run {data['started']} on {data['machine']}.
{data['models']} ONNX iris models in SeaweedFS; each replica has `cache_size: 3` (examples/cluster/api.yaml); the
same seeded uniform random sequence of {data['requests']:,} requests over the {data['models']} models for every
row, sent through HAProxy (deploy/haproxy/config.py: consistent hashing on the model name with
`hash-balance-factor {data['balance_factor']}`, or `balance roundrobin`) by 1 or {data['clients'][-1]} concurrent
keep-alive clients. Fresh replicas per row, so the first request for each model is a miss everywhere. *Away from
home*: requests not answered by the replica that answered most of their model's requests (bounded load
spilling them to the next replica on the ring).

{header}
{rows(main_rows)}

Bounded load against affinity, 3 replicas and {data['clients'][-1]} clients (the same sequence):

{header}
{rows(sweep_rows)}

- With affinity, N replicas hold N x `cache_size` models: at 3 replicas the 9 models nearly fit (what is left
  beyond the 9 cold misses comes from the hash giving one replica more than 3 of these 9 names); round robin
  leaves every replica cycling through all 9, about 1/3 hits whatever the number of replicas.
- Bounded load spills a request to the next replica whenever its home already has more than
  factor/100 x the average requests in flight; with a few requests in flight, two or three meeting on one
  replica is enough, and on a cache with no headroom each spill can evict a model on the second replica. At
  a factor of 300 with 3 replicas nothing spills (a replica may take all 3 replicas' average), which also
  means a lone hammered model never spills. The default, 200, is the middle: a model with 4 or more requests
  in flight and nothing else running spills to its second replica. Give `cache_size` headroom above the
  models a replica is home to, or raise the factor when the catalogue's traffic is even.
{END}
"""


def splice(doc: str, text: str) -> str:
    if BEGIN in doc and END in doc:
        return doc[:doc.index(BEGIN)] + text.strip() + doc[doc.index(END) + len(END):]
    return doc.rstrip() + "\n\n" + text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=9)
    p.add_argument("--requests", type=int, default=900)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--balance-factor", type=int, default=200, help="hash-balance-factor of the main table")
    p.add_argument("--sweep", type=int, nargs="*", default=[150, 300], help="more factors, 3 replicas")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args()
    rng = random.Random(16)
    names = [f"m{i:02d}" for i in range(args.models)]
    sequence = [rng.choice(names) for _ in range(args.requests)]
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    s3 = SeaweedS3(work / "seaweedfs", buckets=[BUCKET])
    data = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "models": args.models,
            "requests": args.requests, "clients": args.clients, "balance_factor": args.balance_factor,
            "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", "rows": []}
    try:
        s3.start()
        s3.wait_ready(timeout=60)
        upload_models(s3, args.models)
        for replicas in (1, 2, 3):
            for routing in ("affinity", "round robin"):
                for clients in args.clients:
                    row = run_row(work, s3, replicas, routing, sequence, clients, args.balance_factor)
                    data["rows"].append(row)
                    print(json.dumps(row))
        for factor in args.sweep:
            row = {**run_row(work, s3, 3, "affinity", sequence, args.clients[-1], factor), "sweep": True}
            data["rows"].append(row)
            print(json.dumps(row))
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = section(data)
    if args.no_doc:
        print(text)
        return 0
    SECTION.parent.mkdir(parents=True, exist_ok=True)
    SECTION.write_text(text)
    (SECTION.parent / "cluster.json").write_text(json.dumps(data, indent=1))
    DOC.write_text(splice(DOC.read_text(), text))
    print(f"written {DOC.relative_to(ROOT)} and {SECTION.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
