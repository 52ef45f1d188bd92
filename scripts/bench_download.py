#!/usr/bin/env python
"""Benchmark: the supervisor's parallel ranged download beside one GET stream and the page cache.

SeaweedFS (`weed mini`, started here on 127.0.0.1) holds a 1 GiB and a 300 MiB object. In interleaved rounds,
for each object: one boto3 `get_object` stream read to /dev/null (what one connection carries); the
supervisor's fetch (`S3Upstream.fetch`: ranged parts in parallel, written with pwrite into a preallocated file
in a state directory, the sha256 taken on the way); the same fetch held to one part (one stream through the
same code, as the supervisor fetched before); and `cat` of the downloaded file to /dev/null (the page cache's
floor: no download lands faster than the file reads back). Median and worst round in MB/s (10^6 bytes a
second), and this process's CPU seconds per GiB for the three that run in it.

    .venv/bin/python scripts/bench_download.py --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from supervisor import ranged  # noqa: E402
from supervisor.part_pool import PartPool  # noqa: E402
from supervisor.s3_client import make_s3_client  # noqa: E402
from supervisor.upstream import S3Upstream  # noqa: E402
from tests.s3server import SeaweedS3  # noqa: E402

BUCKET = "bench"
OBJECTS = {"1 GiB": 1 << 30, "300 MiB": 300 << 20}
FIGURES = ("one GET stream", "parallel ranged fetch", "one-part fetch", "cat (page cache)")
STREAM_READ = 1 << 20


def upload_random(s3: SeaweedS3, work: Path, key: str, size: int) -> str:
    """Put `size` random bytes at `key` (a multipart upload, as large models are); their sha256."""
    src = work / "upload.bin"
    digest = hashlib.sha256()
    with open(src, "wb") as f:
        for _ in range(0, size, 16 << 20):
            block = os.urandom(min(16 << 20, size - f.tell()))
            digest.update(block)
            f.write(block)
    s3.client().upload_file(str(src), BUCKET, key)
    src.unlink()
    return digest.hexdigest()


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """Wall and this process's CPU seconds (every thread) of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def stream(client, key: str) -> None:
    with open(os.devnull, "wb") as sink:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        for chunk in body.iter_chunks(STREAM_READ):
            sink.write(chunk)


def fetch(upstream: S3Upstream, obj, dest: Path, digest: str, part_size: int) -> None:
    saved = ranged.PART_SIZE
    ranged.PART_SIZE = part_size
    try:
        written = upstream.fetch(obj, dest)
    finally:
        ranged.PART_SIZE = saved
    assert written.sha256 == digest, "the fetch's digest is not the object's"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--part-mib", type=int, default=ranged.PART_SIZE >> 20, help="the ranged fetch's part size")
    ap.add_argument("--parts-in-flight", type=int, default=ranged.PARTS_IN_FLIGHT)
    args = ap.parse_args()
    ranged.PARTS = PartPool(args.parts_in_flight, nice=ranged.DOWNLOAD_NICE)
    part_size = args.part_mib << 20
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    s3 = SeaweedS3(work / "seaweedfs", buckets=[BUCKET])
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {(o, f): [] for o in OBJECTS for f in FIGURES}
    try:
        s3.start()
        s3.wait_ready(timeout=60)
        digests = {name: upload_random(s3, work, name.replace(" ", ""), size) for name, size in OBJECTS.items()}
        os.environ.update(s3.env)
        download_client = make_s3_client(read_timeout=30.0)  # the supervisor's download client
        upstream = S3Upstream(f"s3://{BUCKET}/", make_s3_client(), download_client)
        listed = {o.key: o for o in upstream.list()}
        state = work / "state" / "tmp"
        state.mkdir(parents=True)
        for number in range(args.rounds):
            for name, size in OBJECTS.items():
                key = name.replace(" ", "")
                obj, dest = listed[key], state / key
                runs = {
                    "one GET stream": lambda: stream(download_client, key),
                    "parallel ranged fetch": lambda: fetch(upstream, obj, dest, digests[name], part_size),
                    "cat (page cache)": lambda: subprocess.run(["cat", str(dest)], stdout=subprocess.DEVNULL,
                                                               check=True),
                    "one-part fetch": lambda: fetch(upstream, obj, dest, digests[name], size + 1),
                }
                for figure, run in runs.items():
                    wall, cpu = timed(run)
                    rows[name, figure].append((size / wall / 1e6, cpu / (size / (1 << 30))))
                    print(f"round {number + 1} {name} {figure}: {size / wall / 1e6:.0f} MB/s", flush=True)
                dest.unlink()
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    print(f"\nparts of {args.part_mib} MiB, {args.parts_in_flight} in flight; median of {args.rounds} rounds, "
          f"worst in brackets\n")
    print("| object | download | MB/s | CPU s per GiB (this process) |")
    print("|---|---|---|---|")
    for (name, figure), runs in rows.items():
        rates = [rate for rate, _ in runs]
        cpu = "-" if figure.startswith("cat") else f"{statistics.median(c for _, c in runs):.2f}"
        print(f"| {name} | {figure} | {statistics.median(rates):,.0f} ({min(rates):,.0f}) | {cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
