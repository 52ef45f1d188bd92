"""Parallel ranged downloads (supervisor/ranged.py) against the real SeaweedFS: a file in many parts arrives byte
for byte with the digest every later check recomputes, a file replaced upstream between two of its parts is
detected and fetched again, parts in flight never pass the process-wide bound, a stopping replica ends every
part, a stalled part fails the download with the stall reason, a download gets its share of the bound even
while another holds every slot, a full state disk is the disk's error before any byte is fetched, and a part
of another length than asked for is the upstream's error.

The part size is made small (monkeypatched) so that a few MiB make many parts; the download client is wrapped
to count the GETs in flight, from the request until its body is closed, independently of the pool.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from pathlib import Path

import pytest
from botocore.response import StreamingBody

from replica.disktree import DiskTree
from replica.spec import ModelSource, PredictorSpec
from supervisor import ranged
from supervisor.catalogue import Catalogue
from supervisor.part_pool import PartPool
from supervisor.s3_client import make_s3_client
from supervisor.upstream import LocalDiskError, S3Upstream, Stopped, UpstreamError, fetch_files
from supervisor.watcher import Watcher
from tests.helpers import read_state, sync
from tests.replica_proc import wait_for
from tests.throttle_proxy import ThrottleProxy

MiB = 1 << 20


class CountingClient:
    """A download client that counts its GETs in flight and keeps every Range asked for."""

    def __init__(self, inner):
        self.inner = inner
        self.meta = inner.meta  # the stall timeout is the client's read timeout
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.ranges: list[str | None] = []

    def get_object(self, **args):
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.ranges.append(args.get("Range"))
        try:
            resp = self.inner.get_object(**args)
        except BaseException:
            self._ended()
            raise
        resp["Body"] = _Counted(resp["Body"], self._ended)
        return resp

    def _ended(self) -> None:
        with self.lock:
            self.in_flight -= 1


class _Counted:
    """A response body that tells its client once it is closed; everything else is the body's."""

    def __init__(self, body, ended):
        self.body, self.ended, self.closed = body, ended, False

    def __getattr__(self, name: str):
        return getattr(self.body, name)

    def close(self) -> None:
        self.body.close()
        if not self.closed:
            self.closed = True
            self.ended()


class ChangingClient(CountingClient):
    """Replaces the object with `change()` once the first ranged part has been read whole, and holds every
    other part until it has: those are asked for after the change, so the file would mix two versions."""

    def __init__(self, inner, change):
        super().__init__(inner)
        self.change = change
        self.armed = True
        self.first: str | None = None
        self.changed = threading.Event()

    def get_object(self, **args):
        if not self.armed or args.get("Range") is None:
            return super().get_object(**args)
        with self.lock:
            first = self.first is None
            if first:
                self.first = args["Range"]
        if not first:
            assert self.changed.wait(30)
            return super().get_object(**args)
        resp = super().get_object(**args)
        data = b"".join(resp["Body"].iter_chunks(MiB))
        resp["Body"].close()
        self.change()
        self.armed = False
        self.changed.set()
        resp["Body"] = StreamingBody(io.BytesIO(data), len(data))
        return resp


def s3_env(s3, monkeypatch) -> None:
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)


def watcher_on(upstream: S3Upstream, state: Path, tmp_path: Path) -> Watcher:
    source = ModelSource(url=upstream.url, name="m")
    catalogue = Catalogue(PredictorSpec(type="python", path=tmp_path / "predictor.py", sources=(source,)),
                          [(source, upstream)])
    watcher = Watcher(DiskTree(state), catalogue, poll_interval=10.0)
    watcher.start()
    return watcher


def test_a_file_in_many_parts_arrives_whole_with_the_digest_later_checks_use(s3, s3_client, bucket, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(ranged, "PART_SIZE", MiB)
    big = os.urandom(40 * MiB + 12345)  # 41 parts, the last one short
    s3_client.upload_fileobj(io.BytesIO(big), bucket, "m/1/weights.bin")  # a multipart upload: ETag "<md5>-N"
    s3_client.put_object(Bucket=bucket, Key="m/1/config.json", Body=b'{"small": true}')
    s3_env(s3, monkeypatch)
    client = CountingClient(make_s3_client())
    upstream = S3Upstream(f"s3://{bucket}/m/", make_s3_client(), client)
    assert any("-" in o.tag for o in upstream.list())

    watcher = watcher_on(upstream, tmp_path / "state", tmp_path)
    sync(watcher)
    tree = watcher.tree
    assert (tree.model_path("m", 1) / "weights.bin").read_bytes() == big
    assert (tree.model_path("m", 1) / "config.json").read_bytes() == b'{"small": true}'
    digests = {key: sha for key, _, _, sha in tree.manifest("m", 1)["files"]}
    assert digests == {"weights.bin": hashlib.sha256(big).hexdigest(),
                       "config.json": hashlib.sha256(b'{"small": true}').hexdigest()}
    assert tree.damaged("m", 1) is None  # the disk copy's own check agrees with the digest taken on the way
    ranges = sorted(r for r in client.ranges if r is not None)
    assert len(ranges) == 41 and f"bytes={40 * MiB}-{len(big) - 1}" in ranges
    assert client.ranges.count(None) == 1  # the small file is one plain GET
    assert client.in_flight == 0


def test_a_file_replaced_between_its_parts_is_fetched_again_with_the_new_content(s3, s3_client, bucket, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(ranged, "PART_SIZE", MiB)
    old, new = os.urandom(8 * MiB), os.urandom(8 * MiB)  # the same size: only the ETag tells them apart
    s3_client.put_object(Bucket=bucket, Key="m/1/weights.bin", Body=old)
    s3_env(s3, monkeypatch)
    client = ChangingClient(make_s3_client(),
                            lambda: s3_client.put_object(Bucket=bucket, Key="m/1/weights.bin", Body=new))
    watcher = watcher_on(S3Upstream(f"s3://{bucket}/m/", make_s3_client(), client), tmp_path / "state", tmp_path)

    sync(watcher)
    assert client.changed.is_set()
    error = read_state(watcher.tree.root)["models"]["m"]["versions"]["1"]["error"]
    assert "changed upstream during download" in error, error
    assert not watcher.tree.model_path("m", 1).exists()  # nothing of the mix was installed
    assert list(watcher.tree.tmp.iterdir()) == []
    assert watcher.next_delay() <= 1.0  # fetched again at once, not after a poll interval

    sync(watcher)
    assert (watcher.tree.model_path("m", 1) / "weights.bin").read_bytes() == new
    assert watcher.tree.manifest("m", 1)["files"][0][3] == hashlib.sha256(new).hexdigest()
    assert watcher.tree.damaged("m", 1) is None
    assert read_state(watcher.tree.root)["models"]["m"]["versions"]["1"]["error"] is None
    assert client.in_flight == 0


def test_parts_in_flight_never_pass_the_process_wide_bound(s3, s3_client, bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(ranged, "PART_SIZE", 256 << 10)
    monkeypatch.setattr(ranged, "PARTS", PartPool(3))
    objects = {f"m/1/{name}": os.urandom(MiB) for name in ("a.bin", "b.bin", "c.bin")}  # 4 parts each
    for key, body in objects.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    s3_env(s3, monkeypatch)
    # Each part trickles for about 0.2 s, so parts overlap whenever the bound lets them.
    with ThrottleProxy(s3.s3_port, mode="trickle", rate=1_000_000) as proxy:
        client = CountingClient(make_s3_client(endpoint_url=proxy.endpoint_url))
        upstream = S3Upstream(f"s3://{bucket}/m/", make_s3_client(), client)
        listed = {o.key: o for o in upstream.list()}
        version = [(listed["1/a.bin"], tmp_path / "a.bin"), (listed["1/b.bin"], tmp_path / "b.bin")]
        other = threading.Thread(target=upstream.fetch, args=(listed["1/c.bin"], tmp_path / "c.bin"))
        other.start()  # another download at the same time: the bound is the process's, not the version's
        fetch_files(upstream, version)
        other.join(30)
    assert not other.is_alive()
    for name in ("a.bin", "b.bin", "c.bin"):
        assert (tmp_path / name).read_bytes() == objects[f"m/1/{name}"]
    assert len(client.ranges) >= 12  # more when a part yielded its slot and asked for the rest of its range later
    assert client.peak == 3
    assert client.in_flight == 0


def test_a_download_that_starts_while_another_holds_every_slot_gets_one_at_its_next_read(s3, s3_client, bucket,
                                                                                          tmp_path, monkeypatch):
    monkeypatch.setattr(ranged, "PART_SIZE", 4 * MiB)
    monkeypatch.setattr(ranged, "PARTS", PartPool(4))
    s3_client.put_object(Bucket=bucket, Key="big/1/weights.bin", Body=os.urandom(16 * MiB))  # four parts
    small = os.urandom(200 << 10)
    s3_client.put_object(Bucket=bucket, Key="small/1/model.json", Body=small)
    s3_env(s3, monkeypatch)
    stop = threading.Event()

    def progress(nbytes: int) -> None:
        if stop.is_set():
            raise Stopped()

    # At 100 KB/s a connection, each part of the big file takes about 40 s.
    with ThrottleProxy(s3.s3_port, mode="trickle", rate=100_000) as proxy:
        client = CountingClient(make_s3_client(endpoint_url=proxy.endpoint_url))
        big = S3Upstream(f"s3://{bucket}/big/", make_s3_client(), client)
        other = S3Upstream(f"s3://{bucket}/small/", make_s3_client(), client)
        (big_obj,), (small_obj,) = big.list(), other.list()
        outcome: list[BaseException] = []

        def download() -> None:
            try:
                big.fetch(big_obj, tmp_path / "big", progress)
            except BaseException as e:  # the test's answer
                outcome.append(e)

        t = threading.Thread(target=download)
        t.start()
        try:
            wait_for(lambda: client.in_flight == 4 and proxy.slowed.is_set(), timeout=10, interval=0.05,
                     message="the big file holding every slot")
            started = time.monotonic()
            other.fetch(small_obj, tmp_path / "small")
            took = time.monotonic() - started
            assert t.is_alive()  # the big file is still under way, and gave up one slot for the small one
        finally:
            stop.set()
            t.join(10)
    assert not t.is_alive() and [type(e) for e in outcome] == [Stopped]
    assert (tmp_path / "small").read_bytes() == small
    assert took < 10, f"the small file waited {took:.1f} s for a slot"
    assert client.peak == 4 and client.in_flight == 0


def test_a_stopping_replica_ends_every_part_at_its_next_chunk(s3, s3_client, bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(ranged, "PART_SIZE", MiB)
    monkeypatch.setattr(ranged, "PARTS", PartPool(4))
    s3_client.put_object(Bucket=bucket, Key="m/1/weights.bin", Body=os.urandom(16 * MiB))
    s3_env(s3, monkeypatch)
    stop = threading.Event()

    def progress(nbytes: int) -> None:
        if stop.is_set():
            raise Stopped()

    # At 100 KB/s a part, four at a time, the whole file would take about 40 s.
    with ThrottleProxy(s3.s3_port, mode="trickle", rate=100_000) as proxy:
        client = CountingClient(make_s3_client(endpoint_url=proxy.endpoint_url))
        upstream = S3Upstream(f"s3://{bucket}/m/", make_s3_client(), client)
        (obj,) = upstream.list()
        outcome: list[BaseException] = []

        def download() -> None:
            try:
                upstream.fetch(obj, tmp_path / "weights.bin", progress)
            except BaseException as e:  # the test's answer
                outcome.append(e)

        t = threading.Thread(target=download)
        t.start()
        wait_for(lambda: client.peak == 4 and proxy.slowed.is_set(), timeout=10, interval=0.05,
                 message="four parts under way")
        stop.set()
        stopped_at = time.monotonic()
        t.join(10)
        assert not t.is_alive() and time.monotonic() - stopped_at < 5
    assert [type(e) for e in outcome] == [Stopped]
    assert client.in_flight == 0  # every part ended before fetch returned
    assert len(client.ranges) == 4  # the twelve parts waiting for the pool never started


def test_a_stalled_part_fails_the_download_with_the_stall_reason(s3, s3_client, bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(ranged, "PART_SIZE", 256 << 10)
    s3_client.put_object(Bucket=bucket, Key="m/1/weights.bin", Body=os.urandom(MiB))
    s3_env(s3, monkeypatch)
    with ThrottleProxy(s3.s3_port, mode="stall") as proxy:
        upstream = S3Upstream(f"s3://{bucket}/m/", make_s3_client(),
                              CountingClient(make_s3_client(endpoint_url=proxy.endpoint_url, read_timeout=1.0)))
        (obj,) = upstream.list()
        with pytest.raises(UpstreamError) as e:
            upstream.fetch(obj, tmp_path / "weights.bin")
        assert proxy.stalled.is_set()
    assert e.value.public == "the download stalled: no data for 1 s"
    assert upstream.download_client.in_flight == 0


def test_a_full_state_disk_fails_before_any_byte_is_fetched(s3, s3_client, bucket, small_fs, monkeypatch):
    s3_client.put_object(Bucket=bucket, Key="m/1/weights.bin", Body=b"\0" * (20 * MiB))  # the disk holds 16 MiB
    s3_env(s3, monkeypatch)
    client = CountingClient(make_s3_client())
    upstream = S3Upstream(f"s3://{bucket}/m/", make_s3_client(), client)
    (obj,) = upstream.list()
    with pytest.raises(LocalDiskError) as e:
        upstream.fetch(obj, small_fs / "weights.bin")
    assert "the state directory's disk refused the download" in e.value.public
    assert client.ranges == []


def test_a_part_of_another_length_than_asked_is_the_upstreams_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ranged, "PART_SIZE", 4)
    data = b"0123456789"

    def parts(start: int, end: int | None):
        yield data[start:end]

    def short_last_part(start: int, end: int | None):
        yield data[start:min(end, 9)]  # the last part comes back one byte short

    with pytest.raises(UpstreamError) as e:
        ranged.fetch("w.bin", len(data), tmp_path / "w.bin", short_last_part)
    assert "bytes 8-9 came back as another length" in str(e.value)
    assert ranged.fetch("w.bin", len(data), tmp_path / "w.bin", parts) == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "w.bin").read_bytes() == data


def test_downloads_run_below_the_serving_threads_priority(tmp_path, monkeypatch):
    """Every thread that downloads (the parts, and each file's thread, which hashes it) runs DOWNLOAD_NICE nicer, so
    a worker's requests take the CPU first while a download runs on the same machine."""
    monkeypatch.setattr(ranged, "PART_SIZE", 4)
    monkeypatch.setattr(ranged, "PARTS", PartPool(2, nice=ranged.DOWNLOAD_NICE))
    seen: list[int] = []
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    class Local:
        def fetch(self, obj, dest, progress=None):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

            def parts(start: int, end: int | None):
                seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
                yield obj.data[start:end]

            ranged.fetch(obj.key, len(obj.data), dest, parts)
            return None

    class Obj:
        def __init__(self, key: str, data: bytes):
            self.key, self.data, self.size = key, data, len(data)

    files = [(Obj(f"f{i}", b"0123456789"), tmp_path / f"f{i}") for i in range(2)]
    fetch_files(Local(), files)
    assert len(seen) == 2 + 2 * 3 and set(seen) == {min(base + ranged.DOWNLOAD_NICE, 19)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller's thread as it was
