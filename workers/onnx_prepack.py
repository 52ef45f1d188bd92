"""Pre-packing an ONNX version after it serves: a version answers from a session that maps its weights as
they lie on disk, and a second session with its weights pre-packed takes over once it is built.

onnxruntime's pre-packing copies every weight of a MatMul or convolution into the layout its kernels read
fastest: runs are faster with it, but it costs a copy of every weight at session creation, which for a
version of mapped weights (supervisor/onnx_weights.py) is nearly all of the load's time. Done in the load,
a disk hit, a miss and a restart all wait for it; skipped, every later run pays. Done here, a version
serves as soon as its weights are mapped, at the unpacked speed, and runs at the packed speed from the
moment the packed session exists: the swap is one dictionary item, so a run already under way finishes on
the session it started on, and the first session is freed with the last run that holds it.

One thread per worker packs, one version at a time, in the order the versions loaded: pre-packing is CPU
work, and on a small machine several at once would only slow the requests being served. A version that
leaves memory before its turn is skipped; one that leaves while it is packed is dropped once packed. A
version that fails to pack (a kernel that refuses, memory) keeps serving from the session it has, and the
failure is logged. The packed session is built from the same disk copy the version loaded, as a load reads
one: under the version's shared lock, and only while its manifest still has the fingerprint it had at the
load. A copy replaced meanwhile (a new upload of the same version) is not packed: its new copy is loaded.
The build is marked as a load is (replica/quarantine.py), so a pre-packing that kills its worker quarantines
the version instead of killing every worker that loads it after.

Where the replica bounds memory in bytes (`cache_memory`), the packed copies must be in what a load
measures, so the replica pre-packs in the load there and does not use this; it does not either where the
session runs on a GPU (two sessions would hold the device's memory twice) or where the predictor's
`onnx_session_config` sets `session.disable_prepacking` itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from typing import Callable

from replica.disktree import DiskTree
from replica.quarantine import LoadMarks

log = logging.getLogger(__name__)

PREPACKING_KEY = "session.disable_prepacking"


class OnnxModel(dict):
    """What an ONNX version's load returns (its session, inputs and outputs): a dict, as the client has always
    handed to predictors, that the packer can refer to weakly and update in place."""


def deferred(entries: dict[str, str], providers: list[str], cache_memory: int | None) -> bool:
    """Whether this API's sessions are pre-packed after they serve (see the module's doc for when not)."""
    return cache_memory is None and PREPACKING_KEY not in entries and providers == ["CPUExecutionProvider"]


class Packer:
    """The worker's pre-packing thread. `add` queues a version that serves from an unpacked session together
    with how to build its packed one; the thread builds it from the same disk copy and swaps it in while the
    version is still held."""

    def __init__(self, tree: DiskTree, marks: LoadMarks) -> None:
        self._tree, self._marks = tree, marks
        self._queue: queue.Queue[tuple[weakref.ref, str, int, str, Callable[[], object]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0

    def add(self, model: OnnxModel, name: str, version: int, build: Callable[[], object]) -> None:
        """Queue `model`, just loaded from the disk copy of `name` `version` (under its shared lock, so its
        manifest is that copy's): `build()` makes its packed session, which replaces `model["session"]` if the
        model is still referenced once built."""
        manifest = self._tree.manifest(name, version)
        fingerprint = manifest["fingerprint"] if manifest else ""
        with self._lock:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="onnx-prepack", daemon=True)
                self._thread.start()
        self._queue.put((weakref.ref(model), name, version, fingerprint, build))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Until nothing is queued or being packed (True), or `timeout` seconds (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                self._pack(*item)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _pack(self, ref: weakref.ref, name: str, version: int, fingerprint: str,
              build: Callable[[], object]) -> None:
        label = f"model {name} version {version}"
        if ref() is None:
            return  # left memory before its turn
        started = time.monotonic()
        try:
            with self._tree.read_lock(name, version):
                manifest = self._tree.manifest(name, version)
                if not fingerprint or manifest is None or manifest["fingerprint"] != fingerprint:
                    log.info("%s: its copy on disk changed before it was pre-packed; it is not packed", label)
                    return
                with self._marks.loading(name, version, fingerprint):
                    session = build()
        except Exception as e:  # the version keeps its unpacked session
            log.warning("%s: pre-packing failed, it goes on serving unpacked: %s", label, e)
            return
        model = ref()
        if model is None:
            return  # left memory while it was packed: the packed session goes with this frame
        model["session"] = session
        log.info("%s: pre-packed in %.2f s; runs use the packed session from now on", label,
                 time.monotonic() - started)
