"""The versions in the workers' memory, kept in the state directory, so a restart brings them back.

With model caching the disk cache knows which versions the workers hold (each `ensure` holds one, each
`release` lets it go), and that is exactly what is in memory. It is written down whenever it changes, and a
restart publishes what it last said, among the versions still on disk, for the workers to load again right
after they are ready (workers/caching.py): no version is downloaded for it, and none waits for a request.

Right after readiness rather than before it: readiness means the replica answers, and it can (a request for a
version that is still being brought back shares that bring-in); holding readiness for an optional warm-up would
keep a restarted replica out of its load balancer for as long as its largest model takes to load, and a version
that fails to load would hold it out for nothing.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

Key = tuple[str, int]
FILE_NAME = "in-memory.json"


class WarmSet:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / FILE_NAME
        self._last: list[Key] | None = None

    def previous(self) -> list[Key]:
        """What was in memory when the last run stopped, most recently used first ([] when unknown)."""
        try:
            doc = json.loads(self.path.read_text())
            return [(str(n), int(v)) for n, v in doc["versions"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s cannot be read (%s); nothing is loaded ahead of requests", self.path.name, e)
            return []

    def record(self, held: list[Key]) -> None:
        """Write down what the workers hold now, most recently used first, when it changed."""
        if held == self._last:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"versions": [list(k) for k in held]}))
            os.replace(tmp, self.path)
        except OSError as e:  # the state directory's own trouble: the tree guard reports it
            log.debug("could not write %s: %s", self.path.name, e)
            return
        self._last = list(held)
