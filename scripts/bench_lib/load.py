"""Load generation in a separate process: wrk (C, one thread, keep-alive) with a Lua script, or locust's
FastHttpUser headless (`scripts/locustfile.py`) where wrk is not installed. Both report requests/s, p50/p99
latency and failed requests (connection errors, timeouts and non-2xx answers).

A body is JSON text or raw bytes (a V2 request with the binary tensor extension: a JSON header, then the
tensors' bytes), sent with the headers given (Content-Type: application/json unless they say otherwise)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LUA = r"""
wrk.method = "POST"
wrk.body = %(body)s
%(headers)s
local paths = {%(paths)s}
-- A request() function for every target, one path or several, so that wrk spends the same CPU per request
-- whatever it measures (it shares the cores with the server).
request = function()
  return wrk.format(nil, paths[math.random(#paths)])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, ' ..
    '"mean_us": %%f, "max_us": %%d, "failed": %%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int
    tool: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def generator() -> str:
    """The load generator this machine has: "wrk" when installed, else "locust"."""
    return "wrk" if shutil.which("wrk") else "locust"


def run(base: str, body: str | bytes, paths: list[str], *, duration: float, connections: int,
        tool: str | None = None, headers: dict[str, str] | None = None) -> LoadResult:
    """POST `body` to `base` + a path picked at random per request from `paths`, with `connections` concurrent
    keep-alive connections for `duration` seconds."""
    tool = tool or generator()
    body = body.encode() if isinstance(body, str) else body
    headers = {"Content-Type": "application/json", **(headers or {})}
    if tool == "wrk":
        return _wrk(base, body, headers, paths, duration, connections)
    return _locust(base, body, headers, paths, duration, connections)


def lua_string(data: bytes) -> str:
    """`data` as a quoted Lua string, byte for byte: everything but printable ASCII as a three-digit decimal
    escape. A long bracket ([==[...]==]) would not do for raw tensor bytes: Lua turns the CR and LF bytes in
    one into a plain newline, and skips a newline that starts it."""
    plain = set(range(0x20, 0x7f)) - {ord('"'), ord("\\")}
    return '"' + "".join(chr(b) if b in plain else f"\\{b:03d}" for b in data) + '"'


def _wrk(base: str, body: bytes, headers: dict[str, str], paths: list[str], duration: float,
         connections: int) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % {"body": lua_string(body), "paths": ", ".join(json.dumps(p) for p in paths),
                       "headers": "\n".join(f"wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode())}"
                                            for k, v in headers.items())})
        script = f.name
    try:
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s", script, base]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    finally:
        os.unlink(script)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    r = json.loads(line.split(" ", 1)[1])
    return LoadResult(rps=r["requests"] / (r["duration_us"] / 1e6), p50_ms=r["p50_us"] / 1000,
                      p99_ms=r["p99_us"] / 1000, requests=r["requests"], failed=r["failed"], tool="wrk")


def _locust(base: str, body: bytes, headers: dict[str, str], paths: list[str], duration: float,
            connections: int) -> LoadResult:
    locust = Path(sys.executable).parent / "locust"
    with tempfile.TemporaryDirectory(prefix="bench-locust-") as tmp:
        Path(tmp, "body").write_bytes(body)  # a file: raw tensor bytes cannot travel in the environment
        env = {**os.environ, "BENCH_BODY_FILE": f"{tmp}/body", "BENCH_HEADERS": json.dumps(headers),
               "BENCH_PATHS": json.dumps(paths)}
        cmd = [str(locust), "-f", str(ROOT / "scripts" / "locustfile.py"), "--headless", "--host", base,
               "-u", str(connections), "-r", str(connections), "-t", f"{max(1, round(duration))}s",
               "--csv", f"{tmp}/run", "--only-summary", "--loglevel", "WARNING", "BenchUser"]
        subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 120)
        with open(f"{tmp}/run_stats.csv") as f:
            row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    n = int(row["Request Count"])
    return LoadResult(rps=float(row["Requests/s"]), p50_ms=float(row["50%"]), p99_ms=float(row["99%"]),
                      requests=n, failed=int(row["Failure Count"]), tool="locust")
