"""What the supervisor publishes about the catalogue and the disk tree, as a worker reads it.

The supervisor writes the state feed (replica.feed); a worker applies only the rows changed since its last
look, so a request or a sync tick costs one small query when nothing moved, and a cache miss costs the rows
of the models it touched, whatever the catalogue's size.

The views (`models`, `on_disk()`) are replaced, never changed in place: a caller that took one keeps a
consistent copy while another thread refreshes (a `/v1/models` rendering, say).
"""

from __future__ import annotations

import threading

from replica.disktree import DiskTree
from replica.feed import Changes, FeedReader


class StateView:
    def __init__(self, tree: DiskTree):
        self._reader = FeedReader(tree.feed_file)
        self._lock = threading.Lock()
        self.facts: dict = {}
        self._models: dict[str, dict] = {}  # name -> {"error", "versions": {"N": {upstream, disk, fingerprint, error}}}
        self._disk: dict[str, dict[int, str]] = {}  # name -> version -> fingerprint on disk

    @property
    def seq(self) -> int:
        """The change number this view has applied up to (-1 before the first look)."""
        return self._reader.seq

    def refresh(self) -> bool:
        """Apply what changed since the last look; return whether anything did."""
        with self._lock:
            changes = self._reader.changes()
            if changes is None:
                return False
            self._apply(changes)
            return True

    def _apply(self, changes: Changes) -> None:
        """Each version keeps the change number that wrote its row (`seq`): a worker compares it with the
        change number its view had when a version failed, to tell news written after that failure."""
        models = {} if changes.reset else dict(self._models)
        disk = {} if changes.reset else dict(self._disk)
        touched: dict[str, dict] = {}  # fresh copies of the models this change touches

        def fresh(name: str) -> dict:
            if name not in touched:
                old = models.get(name, {"error": None, "versions": {}})
                touched[name] = models[name] = {"error": old["error"], "versions": dict(old["versions"])}
            return touched[name]

        for name, error, gone in changes.models:  # a model row carries its error; a tombstone, none
            fresh(name)["error"] = None if gone else error
        for name, version, upstream, on_disk, fingerprint, error, retry_at, gone, seq in changes.versions:
            if not gone:
                fresh(name)["versions"][str(version)] = {"upstream": upstream, "disk": on_disk,
                                                         "fingerprint": fingerprint, "error": error,
                                                         "retry_at": retry_at, "seq": seq}
            elif name in models:
                fresh(name)["versions"].pop(str(version), None)
            fps = dict(disk.get(name, {}))
            if on_disk and fingerprint and not gone:
                fps[version] = fingerprint
            else:
                fps.pop(version, None)
            if fps:
                disk[name] = fps
            else:
                disk.pop(name, None)
        for name, m in touched.items():
            if not m["versions"] and m["error"] is None:
                del models[name]  # a model is there when it has a version or an error
        self.facts = changes.facts
        self._models = models
        self._disk = disk

    @property
    def ready(self) -> bool:
        return bool(self.facts.get("ready"))

    @property
    def control_socket(self) -> str | None:
        return self.facts.get("control_socket")

    @property
    def models(self) -> dict[str, dict]:
        return self._models

    def model(self, name: str) -> dict | None:
        return self._models.get(name)

    def version_info(self, name: str, version: int) -> dict:
        return self._models.get(name, {}).get("versions", {}).get(str(version), {})

    def on_disk(self) -> dict[str, dict[int, str]]:
        """name -> version -> fingerprint of every version the supervisor has on disk (do not change it)."""
        return self._disk

    def upstream_versions(self, name: str) -> list[int]:
        """The versions of `name` upstream holds without a layout error (what caching can bring in). A version
        whose fetch failed is among them: it is upstream, and a request for it learns why and when it is
        tried again (503), never that it does not exist."""
        versions = self._models.get(name, {}).get("versions", {})
        return [int(v) for v, i in versions.items()
                if i.get("upstream") and (not i.get("error") or i.get("retry_at") is not None)]
