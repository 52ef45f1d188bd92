"""Scaling out: three real replicas (cache_size 3 each) behind the real HAProxy with model-affinity routing.

Models live in SeaweedFS; HAProxy's config comes from deploy/haproxy/config.py. Which replica answered is
read from the X-Replica header HAProxy adds and cross-checked against each replica's own /metrics.
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import botocore.config
import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from deploy.haproxy.config import Server
from tests.haproxy_proc import HAProxyProcess, find_haproxy
from tests.helpers import BackgroundLoad, put_objects, write_api
from tests.replica_proc import ReplicaProcess, wait_for
from tests.predictors import json_predictor

pytestmark = pytest.mark.skipif(find_haproxy() is None, reason="haproxy is not installed and could not be "
                                "(make test installs it: apt-get install -y haproxy)")

PREDICTOR = json_predictor("""
def predict(self, payload, query_params):
    name = query_params["model"]
    model = self.client.get_model(name)
    if query_params.get("sleep"):
        time.sleep(float(query_params["sleep"]))
    return {"name": name, "model": model}
""")

NAMES = ("r1", "r2", "r3")
CATALOGUE = 30  # models in S3; the workload uses 9 of them, 3 homed on each replica
CACHE, DISK = 3, 6


def metric(replica: ReplicaProcess, name: str, **labels) -> float:
    """A counter from the replica's own /metrics, summed over the samples whose labels match."""
    text = replica.get("/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def hits_and_misses(replicas: dict[str, ReplicaProcess]) -> tuple[float, float]:
    hits = sum(metric(r, "replica_cache_hits_total") for r in replicas.values())
    misses = sum(metric(r, "replica_cache_misses_total") for r in replicas.values())
    return hits, misses


def kill_hard(replica: ReplicaProcess) -> None:
    """kill -9 the whole replica (supervisor, gunicorn, workers) at once, as a lost machine would be."""
    sup = psutil.Process(replica.proc.pid)
    family = [sup, *sup.children(recursive=True)]
    for p in family:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=10)
    replica.proc.wait(10)


class Cluster:
    def __init__(self, s3, folder):
        self.s3 = s3
        self.folder = folder
        self.bucket = f"cluster-{uuid.uuid4().hex[:12]}"
        client = s3.client(config=botocore.config.Config(max_pool_connections=16))
        client.create_bucket(Bucket=self.bucket)
        self.models = {f"m{i:02d}": {"name": f"m{i:02d}", "value": i} for i in range(CATALOGUE)}
        put_objects(client, self.bucket, {f"models/{n}/model.json": json.dumps(c).encode()
                                          for n, c in self.models.items()})
        self.spec = write_api(folder / "api", PREDICTOR, type="python", threads_per_process=8,
                              models={"dir": f"s3://{self.bucket}/models/", "cache_size": CACHE,
                                      "disk_cache_size": DISK})
        self.replicas = {n: self._replica(n) for n in NAMES}
        for r in self.replicas.values():
            r.start()
        for r in self.replicas.values():
            r.wait_ready()
        self.haproxy = HAProxyProcess(folder / "haproxy", [Server(n, f"127.0.0.1:{r.port}")
                                                           for n, r in self.replicas.items()],
                                      check_interval="300ms", fall=2, rise=2)
        self.haproxy.start().wait_ready()
        self.session = requests.Session()

    def _replica(self, name: str, port: int | None = None) -> ReplicaProcess:
        r = ReplicaProcess(self.spec, self.folder / f"state-{name}", env=self.s3.env, poll_interval=1.0)
        if port is not None:
            r.port = port
        return r

    def restart(self, name: str) -> ReplicaProcess:
        """A replica back on its old address and state directory, as a restarted pod of a StatefulSet."""
        old = self.replicas[name]
        old.stop()
        new = self._replica(name, old.port)
        self.replicas[name] = new
        new.start().wait_ready()
        return new

    def ask(self, model: str, session: requests.Session | None = None, **params) -> requests.Response:
        return (session or self.session).post(self.haproxy.base + "/", params={"model": model, **params},
                                              json={}, timeout=60)

    def stop(self) -> None:
        self.haproxy.stop()
        for r in self.replicas.values():
            r.stop()


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    c = Cluster(s3, tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def homes(cluster) -> dict[str, str]:
    """model -> the replica that answered it, asking every model of the catalogue 3 times, one at a time."""
    answered: dict[str, set[str]] = defaultdict(set)
    for name in cluster.models:
        for _ in range(3):
            resp = cluster.ask(name)
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"name": name, "model": cluster.models[name]}
            answered[name].add(resp.headers["X-Replica"])
    return {name: (seen.pop() if len(seen) == 1 else seen) for name, seen in answered.items()}


@pytest.fixture(scope="module")
def workload(homes) -> dict[str, str]:
    """9 models, 3 homed on each replica: the aggregate cache (3 x cache_size 3) holds them all."""
    by_home = defaultdict(list)
    for name, home in sorted(homes.items()):
        by_home[home].append(name)
    assert all(len(by_home[n]) >= CACHE for n in NAMES), f"a replica is home to fewer than 3 of 30 models: {by_home}"
    return {m: home for home in NAMES for m in by_home[home][:CACHE]}


def test_each_model_answered_by_one_home_replica(cluster, homes):
    split = {name: home for name, home in homes.items() if not isinstance(home, str)}
    assert not split, f"models answered by several replicas while all are healthy: {split}"
    assert set(homes.values()) == set(NAMES)
    # Each replica's own counters agree with the header HAProxy added: only the home counted the model.
    for name in list(cluster.models)[:6]:
        counts = {n: metric(r, "replica_requests_total", model=name) for n, r in cluster.replicas.items()}
        assert counts[homes[name]] >= 3 and sum(counts.values()) == counts[homes[name]], (name, counts)
    # /v1/models/NAME goes to the model's home as well, and so does the X-Model header.
    for name in list(cluster.models)[:3]:
        assert cluster.session.get(cluster.haproxy.base + f"/v1/models/{name}").headers["X-Replica"] == homes[name]
        resp = cluster.session.post(cluster.haproxy.base + "/predict", params={"model": name},
                                    headers={"X-Model": name}, json={})
        assert resp.headers["X-Replica"] == homes[name]
    # So do the Open Inference Protocol's and TF Serving's routes, which name the model in the path.
    for name in list(cluster.models)[:3]:
        for method, path in (("GET", f"/v2/models/{name}/ready"), ("POST", f"/v2/models/{name}/infer"),
                             ("POST", f"/v2/repository/models/{name}/load"), ("POST", f"/v1/models/{name}:predict")):
            resp = cluster.session.request(method, cluster.haproxy.base + path, json={})
            assert resp.headers["X-Replica"] == homes[name], (path, resp.status_code, resp.text)


def test_uniform_workload_hits_memory(cluster, workload):
    """9 models over 3 replicas with cache_size 3: >= 0.9 of requests are memory hits (round robin: ~1/3)."""
    models = sorted(workload)
    hits0, misses0 = hits_and_misses(cluster.replicas)
    rng = random.Random(16)
    requests_total = 360
    answered_by = Counter()
    for _ in range(requests_total):
        name = rng.choice(models)
        resp = cluster.ask(name)
        assert resp.status_code == 200, resp.text
        answered_by[(name, resp.headers["X-Replica"])] += 1
    hits1, misses1 = hits_and_misses(cluster.replicas)
    hits, misses = hits1 - hits0, misses1 - misses0
    assert hits + misses == requests_total
    assert hits / requests_total >= 0.9, f"hit rate {hits / requests_total:.2f} ({misses:.0f} misses)"
    assert all(workload[name] == replica for name, replica in answered_by), answered_by


class Record(NamedTuple):
    start: float
    end: float
    model: str
    status: int  # the HTTP status, or 0 when no complete answer came back
    replica: str  # X-Replica, or what went wrong


class Load(BackgroundLoad):
    """Client threads sending the workload through HAProxy, recording every answer."""

    def __init__(self, cluster: Cluster, models: list[str], clients: int = 2):
        super().__init__(clients)
        self.cluster = cluster
        self.models = models
        self.records: list[Record] = []

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        while not self.stop_event.is_set():
            name = rng.choice(self.models)
            start = time.time()
            try:
                resp = self.cluster.ask(name, session)
                ok = resp.status_code == 200 and resp.json()["name"] == name
                self.records.append(Record(start, time.time(), name, resp.status_code if ok else -resp.status_code,
                                           resp.headers.get("X-Replica", "")))
            except requests.RequestException as e:
                self.records.append(Record(start, time.time(), name, 0, repr(e)))


    def between(self, start: float, end: float) -> list[Record]:
        """The requests answered in [start, end)."""
        return [r for r in self.records if start <= r.end < end]


def probe(cluster: Cluster, models) -> dict[str, str]:
    """model -> the replica that answers it, one request at a time (no load: bounded load never spills)."""
    found = {}
    for name in models:
        resp = cluster.ask(name)
        assert resp.status_code == 200, resp.text
        found[name] = resp.headers["X-Replica"]
    return found


def test_replica_killed_under_load(cluster, workload):
    """kill -9 one replica under load: no request fails, only its models move, and they move back.

    A request in flight at the kill is retried by HAProxy on the next replica: the replica writes each answer in
    one send (workers.connections.CoalescedSocket), so a killed one has sent a whole answer or nothing, never a head
    without its body, which no proxy could retry."""
    victim = "r2"
    moved = {m for m, home in workload.items() if home == victim}
    with Load(cluster, sorted(workload)) as load:
        wait_for(lambda: len(load.records) > 50, timeout=30, message="load running")
        kill_hard(cluster.replicas[victim])
        wait_for(lambda: cluster.haproxy.server_status()[victim].startswith("DOWN"), timeout=20,
                 message="HAProxy marks the killed replica down")
        down_at = time.time()
        wait_for(lambda: len(load.between(down_at, time.time())) > 60, timeout=30, message="load while down")
    outage = probe(cluster, sorted(workload))
    with Load(cluster, sorted(workload)) as rejoin:  # the replica comes back under load
        wait_for(lambda: len(rejoin.records) > 20, timeout=30, message="load running")
        cluster.restart(victim)
        wait_for(lambda: cluster.haproxy.server_status()[victim] == "UP", timeout=30,
                 message="HAProxy puts the replica back")
        up_at = time.time()
        wait_for(lambda: len(rejoin.between(up_at, time.time())) > 60, timeout=30, message="load after return")
    back = probe(cluster, sorted(workload))
    records = load.records + rejoin.records
    failed = [r for r in records if r.status != 200]
    assert not failed, f"{len(failed)} of {len(records)} requests failed: {failed[:5]}"
    assert victim not in {r.replica for r in load.between(down_at, time.time())}
    assert {m: outage[m] for m in workload if m not in moved} == {m: workload[m] for m in workload if m not in moved}
    assert all(outage[m] != victim for m in moved), outage
    assert back == workload, back
    assert any(r.replica == victim for r in rejoin.between(up_at, time.time())), "the returned replica got no traffic"


@pytest.mark.slow
def test_replica_stopped_under_load_drains(cluster, workload):
    """SIGTERM (a rolling update, a pod deleted): the replica finishes what it has, HAProxy sends the rest
    elsewhere, and no request fails; back on the same state directory, it serves its models again."""
    victim = "r3"
    with Load(cluster, sorted(workload)) as load:
        wait_for(lambda: len(load.records) > 50, timeout=30, message="load running")
        assert cluster.replicas[victim].stop() == 0
        stopped_at = time.time()
        wait_for(lambda: len(load.between(stopped_at, time.time())) > 40, timeout=30, message="load after stop")
        cluster.restart(victim)
        wait_for(lambda: cluster.haproxy.server_status()[victim] == "UP", timeout=30,
                 message="HAProxy puts the replica back")
    failed = [r for r in load.records if r.status != 200]
    assert not failed, f"{len(failed)} of {len(load.records)} requests failed: {failed[:5]}"
    assert probe(cluster, sorted(workload)) == workload


def test_hammered_model_spills_to_a_second_replica(cluster, workload):
    """Bounded load: a model hammered beyond its home's share is answered by a second replica too."""
    hot = sorted(workload)[0]
    home = workload[hot]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda _: cluster.ask(hot, requests.Session(), sleep=0.5), range(24)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    served = Counter(a.headers["X-Replica"] for a in answers)
    assert served[home] == max(served.values()) and len(served) >= 2, served


def test_haproxy_soft_stop_drains_requests_in_flight(cluster, workload):
    """SIGUSR1 (what `systemctl stop haproxy` and the Kubernetes manifest send): HAProxy stops listening and
    the request in flight still gets its answer. Runs last: it stops this module's HAProxy."""
    name = sorted(workload)[0]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(cluster.ask, name, requests.Session(), sleep=1.5)
        # Any replica: after the spill test the home may be briefly out of the ring, and the request goes on.
        wait_for(lambda: any(metric(r, "replica_requests_in_flight") >= 1 for r in cluster.replicas.values()),
                 timeout=10, message="the slow request reached a replica")
        cluster.haproxy.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: _refused(cluster.haproxy.base), timeout=10, message="HAProxy stops accepting")
        resp = pending.result(30)
    assert resp.status_code == 200 and resp.json()["name"] == name
    assert cluster.haproxy.proc.wait(40) == 0  # within hard-stop-after (30 s), whatever idle clients remain


def _refused(url: str) -> bool:
    try:
        requests.get(url + "/readyz", timeout=2)
    except requests.ConnectionError:
        return True
    return False
