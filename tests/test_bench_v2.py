"""The V2 benchmark figure without its servers: the report says met, missed or not measured from the numbers it
is given, and the load generator sends a binary V2 request byte for byte."""

from __future__ import annotations

import http.server
import shutil
import threading

import numpy as np
import pytest

from scripts.bench_lib import load, v2, v2_figure, v2_report


def _summary(rps: list[float]) -> dict:
    rounds = [{"rps": x, "p50_ms": 1.0, "p99_ms": 2.0, "failed": 0, "requests": int(x), "cpu_us_per_request": 100.0}
              for x in rps]
    return {"rps": sorted(rps)[len(rps) // 2], "worst_rps": min(rps), "p50_ms": 1.0, "p99_ms": 2.0, "failed": 0,
            "requests": 1, "cpu_us_per_request": 100.0, "rounds": rounds}


def _data(results: dict, notes: dict | None = None) -> dict:
    return {"results": results, "notes": notes or {}, "processes": 2, "rounds": 3, "duration": 3.0,
            "connections": 8, "tool": "wrk", "json_bytes": 142, "binary_bytes": 155}


def test_report_says_met_missed_and_not_measured():
    data = _data({v2_figure.REPLICA_BINARY: _summary([1000, 1000, 900]),
                  v2_figure.REPLICA_JSON: _summary([800, 800, 800]),
                  v2_figure.CORTEX: _summary([950, 1000, 1000]),
                  v2_figure.MLSERVER_JSON: _summary([500, 500, 500])},
                 {"triton": "could not install nvidia-pytriton==0.7.0 (why)"})
    rows = {t: (m, ok) for t, m, ok in v2_report.targets(data)}
    # per-round ratios 1.05, 1.00, 0.90: median 1.00 is at least as fast; the worst round is reported beside it
    assert rows["V2: replica V2 binary at least as fast as its Cortex JSON route (POST /)"] == (
        "1.00x (worst round 0.90x)", True)
    assert rows["V2: replica V2 binary ahead of MLServer (V2 JSON: its REST front has no binary extension)"] == (
        "2.00x (worst round 1.80x)", True)
    assert rows["V2: replica V2 binary ahead of Triton (V2 binary)"] == (
        "not measured: could not install nvidia-pytriton==0.7.0 (why)", None)
    text = v2_report.section(data)
    assert "| MLServer, V2 JSON | 500 | 500 | 1.00 | 2.00 | 100 | 2.00x | 0 |" in text
    assert "**triton: not measured**: could not install" in text


def test_report_without_the_replicas_binary_route_names_it():
    data = _data({v2_figure.CORTEX: _summary([1000]), v2_figure.MLSERVER_JSON: _summary([500])})
    assert {m for _, m, _ in v2_report.targets(data)} == {f"not measured: {v2_figure.REPLICA_BINARY} not in this run"}


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make wrk)")
def test_wrk_sends_a_binary_request_byte_for_byte():
    """Raw float32 bytes hold CR, LF, NUL, quotes and backslashes, which a Lua long string would not keep."""
    seen: list[tuple] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            seen.append((self.headers.get("Content-Type"), self.headers.get(v2.HEADER_LENGTH),
                         self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    tricky = np.frombuffer(bytes([13, 10, 0, 34, 92, 10, 13, 255, 37, 93, 61, 61, 93, 10, 1, 2]), dtype=np.float32)
    body, headers = v2.binary_request({"input": tricky.reshape(1, 4)}, binary_outputs=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        result = load.run(f"http://127.0.0.1:{server.server_address[1]}", body, ["/v2/models/iris/infer"],
                          duration=1, connections=1, headers=headers, tool="wrk")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert result.failed == 0 and seen
    assert set(seen) == {(headers["Content-Type"], headers[v2.HEADER_LENGTH], body)}
