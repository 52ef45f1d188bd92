"""What the supervisor publishes about the catalogue and the disk tree, as a worker reads it.

The supervisor writes state.json; a worker re-reads it only when its stat (mtime, size, inode) changed, so a
request or a sync tick costs one `stat` when nothing moved.
"""

from __future__ import annotations

from replica.disktree import DiskTree


class StateView:
    def __init__(self, tree: DiskTree):
        self.tree = tree
        self.state: dict = {}
        self._key: tuple | None = None

    def refresh(self) -> bool:
        """Re-read the state when it changed; return whether it did."""
        try:
            st = self.tree.state_file.stat()
        except FileNotFoundError:
            return False
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == self._key:
            return False
        state = self.tree.read_state()
        if state is None:
            return False
        self._key = key
        self.state = state
        return True

    @property
    def ready(self) -> bool:
        return bool(self.state.get("ready"))

    @property
    def control_socket(self) -> str | None:
        return self.state.get("control_socket")

    @property
    def models(self) -> dict[str, dict]:
        return self.state.get("models", {})

    def model(self, name: str) -> dict | None:
        return self.models.get(name)

    def version_info(self, name: str, version: int) -> dict:
        return self.models.get(name, {}).get("versions", {}).get(str(version), {})

    def on_disk(self) -> dict[str, dict[int, str]]:
        """name -> version -> fingerprint of every version the supervisor has on disk."""
        out: dict[str, dict[int, str]] = {}
        for name, m in self.models.items():
            for v, info in m.get("versions", {}).items():
                if info.get("disk") and info.get("fingerprint"):
                    out.setdefault(name, {})[int(v)] = info["fingerprint"]
        return out

    def upstream_versions(self, name: str) -> list[int]:
        """The versions of `name` upstream holds without a layout error (what caching can bring in)."""
        versions = self.models.get(name, {}).get("versions", {})
        return [int(v) for v, i in versions.items() if i.get("upstream") and not i.get("error")]
