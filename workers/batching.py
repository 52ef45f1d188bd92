"""Server-side batching (`predictor.server_side_batching`): concurrent requests of one worker process run as one.

Requests that may share a run carry the same key (for the ONNX and TensorFlow clients: the model's name and
version, the loaded version object itself, the signature, and each input's trailing shape and dtype). The first
request of a key leads its batch: it waits until `max_batch_size` requests have joined or `batch_interval` has
passed since it arrived, whichever comes first, closes the batch (later requests open the next one), runs it in
its own thread and hands each member its own result. Followers only wait. No extra thread is needed, and the run
happens in a request thread, as an unbatched run does.

Every member already pinned the loaded version in the key in its own request scope, so the version cannot be
unloaded while the batch runs, and a batch never mixes versions: a reload between two batches gives the next
batch a new key. A member whose input cannot be stacked never joins a batch (see `stackable`); a failed batched
run is retried one member at a time (`run_stacked`), so one bad input fails only its own request.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

# (key, batch size, seconds each member waited in the queue before the run started)
Observer = Callable[[Hashable, int, list[float]], None]


@dataclass(frozen=True)
class Failure:
    """A member's outcome when its part of the batch raised: re-raised in that member's own thread."""

    error: BaseException


class _Batch:
    __slots__ = ("items", "arrived", "full", "done", "results")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.arrived: list[float] = []
        self.full = threading.Event()  # the leader need not wait for the interval
        self.done = threading.Event()  # the results are in
        self.results: list[Any] = []


class Batcher:
    """One worker's batch queues, one per key; thread-safe."""

    def __init__(self, max_batch_size: int, batch_interval: float, observe: Observer | None = None):
        if max_batch_size < 1 or batch_interval <= 0:
            raise ValueError("max_batch_size must be >= 1 and batch_interval > 0")
        self.max_batch_size = max_batch_size
        self.batch_interval = batch_interval
        self._observe = observe
        self._lock = threading.Lock()
        self._open: dict[Hashable, _Batch] = {}

    def submit(self, key: Hashable, item: Any, run: Callable[[list[Any]], Sequence[Any]]) -> Any:
        """Join (or open) the batch of `key` and return this item's result, raising its error.

        `run(items)` gets the batch's items in arrival order and returns one outcome per item, in the same
        order: a value, or a `Failure` for an item whose part failed. If `run` itself raises, every member
        gets that error."""
        now = time.perf_counter()
        with self._lock:
            batch = self._open.get(key)
            leader = batch is None
            if leader:
                batch = self._open[key] = _Batch()
            index = len(batch.items)
            batch.items.append(item)
            batch.arrived.append(now)
            if len(batch.items) >= self.max_batch_size:
                del self._open[key]  # full: the next request of this key opens a new batch
                batch.full.set()
        if leader:
            self._lead(key, batch, run)
        else:
            batch.done.wait()  # each follower waits on its own batch: no wake-up of unrelated threads
        outcome = batch.results[index]
        if isinstance(outcome, Failure):
            raise outcome.error
        return outcome

    def _lead(self, key: Hashable, batch: _Batch, run: Callable[[list[Any]], Sequence[Any]]) -> None:
        remaining = batch.arrived[0] + self.batch_interval - time.perf_counter()
        if remaining > 0:
            batch.full.wait(remaining)
        with self._lock:
            if self._open.get(key) is batch:
                del self._open[key]
        items = batch.items  # nobody appends once the batch has left _open
        started = time.perf_counter()
        results: Sequence[Any] = [Failure(RuntimeError("the batch did not run"))] * len(items)
        try:
            out = run(items)
            if len(out) != len(items):
                raise RuntimeError(f"a batch of {len(items)} requests produced {len(out)} results")
            results = out
        except Exception as e:
            results = [Failure(e)] * len(items)
        finally:  # whatever happened, every member gets an outcome: none waits forever
            batch.results = list(results)
            batch.done.set()
        if self._observe is not None:
            try:
                self._observe(key, len(items), [started - t for t in batch.arrived])
            except Exception:
                log.exception("could not record a batch's metrics")


def stackable(arrays: Mapping[str, np.ndarray], batch_dims: Mapping[str, bool]) -> bool:
    """Whether a request's inputs can be stacked with others along axis 0: every input has at least one
    dimension, the model declares that dimension variable (a batch dimension), and all inputs have the same
    number of rows. A model input whose first dimension is fixed, or a scalar input, runs alone."""
    if not all(a.ndim >= 1 and batch_dims.get(name, False) for name, a in arrays.items()):
        return False
    return len({a.shape[0] for a in arrays.values()}) <= 1


def stack_key(arrays: Mapping[str, np.ndarray]) -> tuple:
    """What inputs must share to be stacked: per input, its name, trailing shape and dtype."""
    return tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(arrays.items()))


def run_stacked(items: list[Mapping[str, np.ndarray]], run_once: Callable[[dict[str, np.ndarray]], Any]) -> list:
    """Run `items` (each {input name: array with a batch dimension of >= 1 rows}) as one call of `run_once`,
    concatenated along axis 0, and split its outputs back by each item's rows.

    `run_once` returns a sequence of arrays (ONNX's output order) or a mapping of name -> array (a TensorFlow
    signature). The outputs are split only when every output's first dimension is the total row count; otherwise
    the model does not map rows to rows and each item runs alone. If the batched call raises, each item runs
    alone, so only the item that caused the error gets it (as a `Failure`)."""
    if len(items) == 1:
        return [_alone(items[0], run_once)]
    sizes = [len(next(iter(item.values()))) if item else 0 for item in items]
    offsets = np.cumsum([0] + sizes)
    total = int(offsets[-1])
    try:
        stacked = {name: np.concatenate([item[name] for item in items]) for name in items[0]}
        out = run_once(stacked)
    except Exception:
        return [_alone(item, run_once) for item in items]
    arrays = list(out.values()) if isinstance(out, Mapping) else list(out)
    if not all(np.ndim(a) >= 1 and len(a) == total for a in arrays):
        return [_alone(item, run_once) for item in items]
    return [_slice(out, int(offsets[i]), int(offsets[i + 1])) for i in range(len(items))]


def _slice(out: Any, start: int, stop: int) -> Any:
    if isinstance(out, Mapping):
        return {k: v[start:stop] for k, v in out.items()}
    return [v[start:stop] for v in out]


def _alone(item: Mapping[str, np.ndarray], run_once: Callable[[dict[str, np.ndarray]], Any]) -> Any:
    try:
        return run_once(dict(item))
    except Exception as e:
        return Failure(e)
