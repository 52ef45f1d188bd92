"""Markdown pieces the benchmark documents share (docs/benchmarks.md)."""

from __future__ import annotations


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"
