"""The limit stacks' part of figure 1 in docs/benchmarks.md: per wrk connection count, each 2-process target's
req/s (median and worst round), p50/p99, CPU per request, and the ratios the issue sets for the replica,
each said to be met or missed from this run's numbers (nothing here is written by hand)."""

from __future__ import annotations

from dataclasses import dataclass

from scripts.bench_lib import figures, stacks
from scripts.bench_lib.markdown import fmt_ratio, table

N = stacks.WORKERS
REPLICA = f"replica p{N}"


@dataclass(frozen=True)
class RatioTarget:
    """replica pN / `other` at least (or, `strict`, above) `bound`: over the median of per-round ratios, or
    (`worst`) over the lowest per-round ratio."""

    other: str
    title: str
    bound: float
    worst: bool = False
    strict: bool = False

    @property
    def stack(self) -> str | None:
        """The limit stack `other` is, if it is one (its note says why it was not measured)."""
        name = self.other.rsplit(" p", 1)[0]
        return name if name in stacks.STACKS else None

    def text(self, connections: int) -> str:
        how = "worst round" if self.worst else "median of rounds"
        return f"-c{connections}: replica p{N} / {self.title} ({how}) {'>' if self.strict else '>='} {self.bound:g}x"

    def measure(self, results: dict) -> float:
        return (figures.worst_ratio if self.worst else figures.ratio)(results, REPLICA, self.other)

    def met(self, x: float) -> bool:
        return x > self.bound if self.strict else x >= self.bound


TARGETS = [
    RatioTarget(f"granian p{N}", "granian raw WSGI", 0.5),
    RatioTarget(f"sync floor p{N}", f"plain `gunicorn -w {N}` + Flask", 1.0, worst=True),
    RatioTarget(f"triton p{N}", "Triton", 1.0, strict=True),
]
OTHERS = [f"floor p{N}", f"sync floor p{N}", f"mlserver p{N}", *(f"{s} p{N}" for s in stacks.STACKS)]


def measured(hot: dict) -> bool:
    """Whether this run measured the limit-stacks figure (stacks asked for, or more than one connection count)."""
    return bool(hot.get("stacks", {}).get("requested") or hot.get("more_connections"))


def why_missing(hot: dict, name: str) -> str:
    stack = name.rsplit(" p", 1)[0]
    if stack == "mlserver":
        return hot["notes"].get("mlserver", "MLServer not run (--no-mlserver)")
    return hot["notes"].get("stacks", {}).get(stack, "not in this run")


def targets(hot: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each of the issue's limit-stack ratios at each connection count."""
    if not measured(hot):
        return []
    rows: list[tuple[str, str, bool | None]] = []
    for c in figures.connection_levels(hot):
        r = figures.at_connections(hot, c)
        for t in TARGETS:
            if REPLICA in r and t.other in r:
                x = t.measure(r)
                rows.append((t.text(c), fmt_ratio(x), t.met(x)))
            else:
                rows.append((t.text(c), "not measured: " + (why_missing(hot, t.other) if REPLICA in r
                                                           else f"{REPLICA} not in this run"), None))
    return rows


def _cpu(v: dict) -> str:
    return f"{v['cpu_us_per_request']:,.0f}" if "cpu_us_per_request" in v else "n/a"


def level_table(hot: dict, c: int) -> str:
    r = figures.at_connections(hot, c)
    rows = []
    for name in [REPLICA, *OTHERS]:
        if name not in r:
            continue
        v = r[name]
        vs = "1.00x" if name == REPLICA else (fmt_ratio(figures.ratio(r, REPLICA, name)) if REPLICA in r else "n/a")
        rows.append([name, f"{v['rps']:,.0f}", f"{v.get('worst_rps', min(x['rps'] for x in v['rounds'])):,.0f}",
                     f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}", _cpu(v), vs, str(v["failed"])])
    return table(["target", "req/s (median)", "req/s (worst round)", "p50 ms", "p99 ms", "CPU µs / request",
                  f"replica p{N} / target", "failed"], rows)


def describe(hot: dict) -> str:
    v = hot.get("stacks", {}).get("versions", {})
    ver = {name: v.get(name, stacks.STACKS[name].version) for name in stacks.STACKS}
    return f"""- *granian p{N}*: {ver['granian']}, a Rust HTTP server, running a raw WSGI callable
  (`scripts/stack_apps/wsgi_app.py`, no framework), `--interface wsgi --workers {N}`, its defaults otherwise:
  the most a WSGI app (which the replica's Flask app is) can get out of a server.
- *uvicorn p{N}*: {ver['uvicorn']} with `--http httptools --loop uvloop --workers {N}`, no access log, a raw
  ASGI callable (`scripts/stack_apps/asgi_app.py`; `session.run` on the event loop).
- *litserve p{N}*: {ver['litserve']}, `workers_per_device={N}` on CPU (two inference worker processes behind its
  own FastAPI/uvicorn API servers, as many as workers by default) and `fast_queue=True` (ZeroMQ, its fastest
  hand-over), POST /predict; it answers JSON (`"setosa"`).
- *triton p{N}*: Triton Inference Server from {ver['triton']} (the `tritonserver` its wheel ships, run on CPU),
  Triton's own REST API (KServe v2 JSON, FP32 [1, 4] in, a BYTES label out: the JSON is decoded and encoded
  by Triton's C++ front), {N} model instances (two Python backend stub processes; PyTriton calls both
  instances' functions, each with its own session, from threads of one Python process), no dynamic batching.
- Each stack runs from its own virtualenv with exact pins (`scripts/bench_lib/stacks.py`) and the same
  onnxruntime as the replica, and does the replica's work per request: decode the JSON body, one
  `session.run`, answer the label (`scripts/stack_apps/iris.py`; the raw apps answer `setosa` as text/plain,
  as the replica and the floor do).
- *CPU µs / request*: user + system CPU time of every process of the server (master, workers, helpers; for
  the replica its supervisor too) during the round, divided by the requests answered in it; median of rounds.
  wrk's own CPU is not in it."""


def section(hot: dict) -> str:
    """The subsection of figure 1 with the limit stacks, or "" when this run did not measure them."""
    if not measured(hot):
        return ""
    missing = [f"- **{name}: not measured**: {why}" for name, why in hot["notes"].get("stacks", {}).items()]
    levels = figures.connection_levels(hot)
    parts = [f"""
### Limit stacks, {N} processes each

The {N}-process targets of the figure beside other ways to serve the same model, at wrk
{' and '.join(f'`-c{c}`' for c in levels)}, all in the same {hot['rounds']} interleaved rounds of {hot['duration']:g} s
(round by round: every target at -c{levels[0]}, then every target at the next count).

{describe(hot)}
""" + ("\n".join(missing) + "\n" if missing else "")]
    for c in levels:
        parts.append(f"\n{c} connections:\n\n{level_table(hot, c)}\n")
    parts.append(verdict(hot))
    return "".join(parts)


def verdict(hot: dict) -> str:
    """The issue's ratios, each with whether this run meets it, and what the missed ones ask for."""
    lines = ["", "The issue's targets for the replica in this run:", ""]
    for text, value, ok in targets(hot):
        lines.append(f"- {text}: **{value}**, {'n/a' if ok is None else ('met' if ok else 'missed')}")
    missed = [(t, c) for c in figures.connection_levels(hot) for t in TARGETS
              if REPLICA in figures.at_connections(hot, c) and t.other in figures.at_connections(hot, c)
              and not t.met(t.measure(figures.at_connections(hot, c)))]
    for t, c in missed:
        r = figures.at_connections(hot, c)
        line = f"\nMissed at -c{c}: replica p{N} / {t.title} is {fmt_ratio(t.measure(r))} against {t.bound:g}x."
        cpu = [r[k].get("cpu_us_per_request") for k in (REPLICA, t.other)]
        if None not in cpu:
            line += (f" CPU per request: replica p{N} {cpu[0]:,.0f} µs, {t.title} {cpu[1]:,.0f} µs "
                     f"({cpu[0] / cpu[1]:.2f}x).")
        if t.worst:
            per_round = {k: " / ".join(f"{x['rps']:,.0f}" for x in r[k]["rounds"]) for k in (REPLICA, t.other)}
            line += " Per round, req/s: " + "; ".join(f"{k} {v}" for k, v in per_round.items()) + "."
        lines.append(line)
    if hot["rounds"] < 3:
        lines.append(f"\nOnly {hot['rounds']} rounds: the worst-round ratios and the medians are rough; "
                     "`make bench` runs 5.")
    return "\n".join(lines) + "\n"
