"""PNG plots for docs/bench/ (matplotlib, Agg backend)."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _bars_with_latency(results: dict, title: str, path: Path) -> Path:
    names = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.barh(names, [results[n]["rps"] for n in names], color="#4C72B0")
    ax1.set_xlabel("requests / s (higher is better)")
    ax1.invert_yaxis()
    y = range(len(names))
    ax2.barh([i - 0.2 for i in y], [results[n]["p50_ms"] for n in names], height=0.4, label="p50", color="#55A868")
    ax2.barh([i + 0.2 for i in y], [results[n]["p99_ms"] for n in names], height=0.4, label="p99", color="#C44E52")
    ax2.set_yticks(list(y), names)
    ax2.invert_yaxis()
    ax2.set_xlabel("latency, ms (lower is better)")
    ax2.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def hot_path(fig: dict, path: Path) -> Path:
    return _bars_with_latency(fig["results"], f"Hot path: small ONNX model, wrk {fig['connections']} connections", path)


def reloads(fig: dict, path: Path) -> Path:
    return _bars_with_latency(fig["results"], f"Model A while model B gets a new version every {fig['every']:g} s", path)


def caching(fig: dict, path: Path) -> Path:
    labels = ["memory hit", "disk hit\n(miss in memory)", "full miss\n(from S3)", "raw InferenceSession\ncreation"]
    values = [statistics.median(fig["memory_hit_ms"]), statistics.median(fig["disk_hit_ms"]),
              statistics.median(fig["full_miss_ms"]), fig["raw_session_ms"]]
    fig_, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    bars = ax1.bar(labels, values, color=["#55A868", "#4C72B0", "#C44E52", "#8172B2"])
    ax1.bar_label(bars, fmt="%.1f ms")
    ax1.set_ylabel("median latency, ms")
    ax1.set_title("One request, end to end")
    tp = fig["throughput"]
    ax2.bar(list(tp), [v["rps"] for v in tp.values()], color="#4C72B0")
    ax2.set_ylabel("requests / s")
    ax2.set_title("Throughput")
    ax2.tick_params(axis="x", labelsize=8)
    fig_.tight_layout()
    fig_.savefig(path, dpi=110)
    plt.close(fig_)
    return path


def scan(fig: dict, path: Path) -> Path:
    rows = fig["scan"]
    x = range(1, len(rows) + 1)
    f, ax = plt.subplots(figsize=(9, 3.8))
    ax.step(x, [r["memory"] for r in rows], where="post", label="versions in memory", color="#4C72B0")
    ax.step(x, [r["disk"] for r in rows], where="post", label="versions on disk", color="#55A868")
    ax.axhline(fig["cache_size"], ls="--", color="#4C72B0", lw=1, label=f"cache_size {fig['cache_size']}")
    ax.axhline(fig["disk_cache_size"], ls=":", color="#55A868", lw=1, label=f"disk_cache_size {fig['disk_cache_size']}")
    ax.set_xlabel("request (each for a model not requested before)")
    ax.set_ylabel("versions")
    ax.set_ylim(0, fig["disk_cache_size"] + 2)
    ax2 = ax.twinx()
    ax2.plot(x, [r["worker_rss_mib"] for r in rows], color="#C44E52", marker=".", label="worker RSS")
    ax2.set_ylabel("worker RSS, MiB")
    ax2.set_ylim(0, max(r["worker_rss_mib"] for r in rows) * 1.3)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower left", fontsize=8, ncol=3)
    ax.set_title("Resident models during a scan of the catalogue")
    f.tight_layout()
    f.savefig(path, dpi=110)
    plt.close(f)
    return path
