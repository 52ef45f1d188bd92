"""Pieces of the benchmark suite (`scripts/bench.py`): load generation, the servers under test, plots."""
