"""The batched full collection after unloads: off the caller's thread, one for a burst, cycles freed."""

from __future__ import annotations

import gc
import threading
import weakref

from workers.collector import DeferredCollector


class _Cyclic:
    def __init__(self):
        self.me = self


def test_a_burst_of_unloads_shares_collections_run_off_the_callers_thread():
    collector = DeferredCollector(interval=0.5)
    callers = []
    real = gc.collect

    def recording(*args):
        callers.append(threading.current_thread().name)
        return real(*args)

    gc.disable()  # only the collector's own collections may free the cycles
    gc.collect = recording
    try:
        refs = []
        for _ in range(50):
            obj = _Cyclic()
            refs.append(weakref.ref(obj))
            del obj
            collector.request()
        assert collector.wait_idle(10)
    finally:
        gc.collect = real
        gc.enable()
    assert all(ref() is None for ref in refs)  # what the cycles held is gone
    assert callers and set(callers) == {"collector"}  # never on the thread that unloaded
    assert collector.collections <= 3  # 50 unloads, a collection or two
