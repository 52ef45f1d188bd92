"""The V2 figure's section of docs/benchmarks.md and its targets, from what `v2_figure.measure` returns: each
target said to be met, missed or not measured from this run's numbers (nothing here is written by hand)."""

from __future__ import annotations

from dataclasses import dataclass

from scripts.bench_lib import figures
from scripts.bench_lib.markdown import fmt_ratio, table
from scripts.bench_lib.v2_figure import (CORTEX, MLSERVER_JSON, REPLICA_BINARY, REPLICA_JSON, TRITON_BINARY,
                                         TRITON_JSON)

ORDER = [REPLICA_BINARY, REPLICA_JSON, CORTEX, MLSERVER_JSON, TRITON_BINARY, TRITON_JSON]
PEER = {MLSERVER_JSON: "mlserver", TRITON_JSON: "triton", TRITON_BINARY: "triton"}
JSON_PEERS = {CORTEX: "the Cortex route", MLSERVER_JSON: "MLServer", TRITON_JSON: "Triton (V2 JSON)"}


@dataclass(frozen=True)
class Target:
    """The replica's V2 binary route / `other` at least (or, `strict`, above) 1x, over the median of per-round
    ratios."""

    other: str
    title: str
    strict: bool

    @property
    def text(self) -> str:
        return f"V2: replica V2 binary {'ahead of' if self.strict else 'at least as fast as'} {self.title}"

    def met(self, x: float) -> bool:
        return x > 1 if self.strict else x >= 1


TARGETS = [
    Target(CORTEX, "its Cortex JSON route (POST /)", strict=False),
    Target(MLSERVER_JSON, "MLServer (V2 JSON: its REST front has no binary extension)", strict=True),
    Target(TRITON_BINARY, "Triton (V2 binary)", strict=True),
]


def why_missing(data: dict, name: str) -> str:
    peer = PEER.get(name)
    if peer is None:
        return f"{name} not in this run"
    return data["notes"].get(peer, f"{peer} left out of this run (--no-mlserver, --no-stack triton)")


def targets(data: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each of the figure's targets."""
    r = data["results"]
    rows: list[tuple[str, str, bool | None]] = []
    for t in TARGETS:
        if REPLICA_BINARY in r and t.other in r:
            x = figures.ratio(r, REPLICA_BINARY, t.other)
            worst = figures.worst_ratio(r, REPLICA_BINARY, t.other)
            rows.append((t.text, f"{fmt_ratio(x)} (worst round {fmt_ratio(worst)})", t.met(x)))
        else:
            why = why_missing(data, t.other if REPLICA_BINARY in r else REPLICA_BINARY)
            rows.append((t.text, "not measured: " + why, None))
    return rows


def level_table(data: dict) -> str:
    r = data["results"]
    rows = []
    for name in [n for n in ORDER if n in r]:
        v = r[name]
        vs = fmt_ratio(figures.ratio(r, REPLICA_BINARY, name)) if REPLICA_BINARY in r else "n/a"
        cpu = f"{v['cpu_us_per_request']:,.0f}" if "cpu_us_per_request" in v else "n/a"
        rows.append([name, f"{v['rps']:,.0f}", f"{v['worst_rps']:,.0f}", f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}",
                     cpu, vs, str(v["failed"])])
    return table(["target", "req/s (median)", "req/s (worst round)", "p50 ms", "p99 ms", "CPU µs / request",
                  "V2 binary / target", "failed"], rows)


def section(data: dict, title: str = "## V2 inference protocol (KServe V2)") -> str:
    n = data["processes"]
    notes = data["notes"]
    missing = [f"- **{peer}: not measured**: {notes[peer]}" for peer in ("mlserver", "triton") if peer in notes]
    lines = [f"""{title}

The replica's Open Inference Protocol route, `POST /v2/models/iris/infer`, as JSON and with the binary tensor
extension, beside its own Cortex route and beside MLServer and Triton answering the same V2 request:
`{data['tool']}` with one thread, {data['connections']} keep-alive connections, {data['rounds']} interleaved rounds of
{data['duration']:g} s per target after a warm-up; medians over rounds, the worst round beside them, and the ratio
is the median of per-round ratios.

- The request: the iris sample as one FP32 [1, 4] tensor named `input`, no outputs named, so every output comes
  back: FP32 `scores` [1, 3] and INT64 `label` [1], the ONNX session's own. *V2 JSON*: {data['json_bytes']} bytes of
  JSON. *V2 binary*: {data['binary_bytes']} bytes, the JSON header (`binary_data_size` per input,
  `binary_data_output: true`) then the tensor's 16 raw bytes, with `Inference-Header-Content-Length`; the outputs
  come back as raw bytes after the answer's JSON header.
- *replica*: `replica serve`, `processes_per_replica: {n}`, `threads_per_process: 1`, the model through
  `model_path` (so it is named after the API, `iris`); the V2 route runs the onnxruntime session with the
  request's tensors. *Cortex JSON (POST /)*: the same replica, the examples' ONNX predictor, the JSON of
  `examples/onnx/sample.json` in and the label out (`setosa`).
- *MLServer*: MLServer {notes.get('mlserver_version', '')} with `parallel_workers: {n}` and the general ONNX runtime
  of `scripts/mlserver_runtime/runtime.py` (`ONNXTensorRuntime`: every input decoded with its datatype, every
  output encoded back). Its REST front has no binary tensor extension, so it is measured with JSON only.
- *Triton*: Triton Inference Server from {notes.get('triton_version', 'nvidia-pytriton')}
  (`scripts/stack_apps/triton_app.py` in its `tensors` mode: {n} model instances, each a Python function with its
  own session answering both outputs), as JSON and binary both ways; the tensors are decoded and encoded by
  Triton's C++ front.
- Every answer is checked against onnxruntime (names, datatypes, shapes, values) before the rounds. *CPU µs /
  request*: user + system CPU of every process of the server (the replica's supervisor too) during its rounds,
  per answered request; wrk's own is not in it.
""" + ("\n".join(missing) + "\n" if missing else ""), level_table(data), "", "Targets in this run:", ""]
    for text, value, ok in targets(data):
        lines.append(f"- {text}: **{value}**, {'n/a' if ok is None else ('met' if ok else 'missed')}")
    r = data["results"]
    beside = [f"{fmt_ratio(figures.ratio(r, REPLICA_JSON, other))} {title}" for other, title in JSON_PEERS.items()
              if REPLICA_JSON in r and other in r]
    if beside:
        lines.append("- Beside them, the replica's V2 JSON: " + ", ".join(beside) + ".")
    if data["rounds"] < 3:
        lines.append(f"\nOnly {data['rounds']} round(s): the medians and worst rounds are rough; `make bench` runs 5.")
    return "\n".join(lines) + "\n"
