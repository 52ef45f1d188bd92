"""Small helpers shared by the tests: write an API spec and its predictor into a folder, pause processes."""

from __future__ import annotations

import contextlib
import textwrap
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import psutil
import yaml

if TYPE_CHECKING:
    from tests.replica_proc import ReplicaProcess


def write_api(
    folder: Path,
    predictor_source: str,
    *,
    type: str,
    name: str = "test-api",
    model_path: str | Path | None = None,
    models: dict | None = None,
    config: dict | None = None,
    spec_file: str = "api.yaml",
    predictor_file: str = "predictor.py",
    **predictor_keys: Any,
) -> Path:
    """Write `predictor.py` (dedented) and a one-API Cortex-style spec into `folder`; return the spec's path.

    `predictor_keys` go into the spec's `predictor` mapping as they are (processes_per_replica=3, ...).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / predictor_file).write_text(textwrap.dedent(predictor_source).lstrip())
    predictor: dict[str, Any] = {"type": type, "path": predictor_file}
    if model_path is not None:
        predictor["model_path"] = str(model_path)
    if models is not None:
        predictor["models"] = models
    if config is not None:
        predictor["config"] = config
    predictor.update(predictor_keys)
    spec = folder / spec_file
    spec.write_text(yaml.safe_dump([{"name": name, "kind": "RealtimeAPI", "predictor": predictor}], sort_keys=False))
    return spec


def write_spec(folder: Path, text: str, spec_file: str = "api.yaml") -> Path:
    """Write a spec as literal YAML text (dedented), for specs a dict cannot express, such as wrong keys."""
    spec = Path(folder) / spec_file
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(textwrap.dedent(text).lstrip())
    return spec


@contextlib.contextmanager
def serving(spec: Path, state_dir: Path, **kw: Any) -> Iterator["ReplicaProcess"]:
    """A real replica for a module-scoped fixture: started, ready, and stopped by PID at the end.

    Function-scoped tests use the `replica` fixture of conftest.py instead.
    """
    from tests.replica_proc import ReplicaProcess

    r = ReplicaProcess(spec, state_dir, **kw).start()
    try:
        r.wait_ready()
        yield r
    finally:
        r.stop()


def put_objects(client, bucket: str, objects: dict[str, bytes], threads: int = 16) -> None:
    """PutObject every `key -> body` of `objects` from a thread pool (fast uploads of many tiny models).

    Give `client` a `max_pool_connections` of at least `threads` (SeaweedS3.client(config=...)).
    """
    from concurrent.futures import ThreadPoolExecutor

    def put(item):
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(put, objects.items()))


@contextlib.contextmanager
def paused(pids: Iterable[int]) -> Iterator[None]:
    """Suspend these processes (SIGSTOP) for the block, then resume them.

    gunicorn's workers share one listening socket and the kernel hands each new connection to whichever worker
    is scheduled first; on busy cores one worker can lose every race for many seconds. Pausing the others is
    how a test makes a given worker answer."""
    procs = [psutil.Process(p) for p in pids]
    for p in procs:
        p.suspend()
    try:
        yield
    finally:
        for p in procs:
            p.resume()


class BackgroundLoad:
    """Client threads, each running `self.client(index)` until the `with` block ends: a test's load loop is
    bounded by its block (`client` checks `stop_event`), and every thread is joined on the way out."""

    join_timeout = 60.0

    def __init__(self, clients: int):
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(clients)]

    def client(self, index: int) -> None:
        raise NotImplementedError

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(self.join_timeout)


def read_state(state_dir: Path) -> dict:
    """What the supervisor of `state_dir` published (its state feed as one document: the facts, plus `models`:
    name -> error and versions by number); {} before the first publish."""
    from replica.disktree import DiskTree
    from replica.feed import snapshot

    return snapshot(DiskTree(state_dir).feed_file) or {}


def sync(watcher) -> None:
    """One watcher pass and the downloads it started: the pass itself never waits for them (DESIGN.md 7a),
    a test that checks the disk after a pass does."""
    watcher.sync_once()
    assert watcher.wait_for_downloads(30), "the pass's downloads did not end in 30 s"
