"""The state feed: what the supervisor knows about the catalogue, as rows that carry a change number.

One SQLite database (the standard library's, in WAL mode) in the runtime folder, next to the heartbeat. The
supervisor is its only writer; every worker reads it. Each model and each version is a row stamped with the
change number (`seq`) of the publish that last changed it. The writer is handed only the models that changed
(the supervisor tells them apart in memory) and writes their rows, and a worker asks "rows changed since seq
N" with one indexed query. A version that left is kept as a tombstone (`gone`) so that readers learn it.
A model is there when it has a version; a model row carries only a model's error (a tombstone: no error).
The top-level facts (first sync done, root errors, the control socket, counters) are one small JSON row.

Why the runtime folder: the feed is derived state that the supervisor rebuilds at every start (a new
`generation` tells readers to start over), so it need not survive a reboot; on the memory filesystem a full
or slow state disk never stops the supervisor from telling workers about errors, and WAL readers never
wait on a writer.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS top (id INTEGER PRIMARY KEY CHECK (id = 1), generation TEXT NOT NULL,
                                seq INTEGER NOT NULL, facts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, error TEXT, gone INTEGER NOT NULL,
                                   seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS models_seq ON models (seq);
CREATE TABLE IF NOT EXISTS versions (name TEXT NOT NULL, version INTEGER NOT NULL, upstream INTEGER NOT NULL,
                                     disk INTEGER NOT NULL, fingerprint TEXT, error TEXT, retry_at REAL,
                                     gone INTEGER NOT NULL, seq INTEGER NOT NULL,
                                     PRIMARY KEY (name, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS versions_seq ON versions (seq);
"""

SCHEMA_VERSION = 2  # a feed left by a run with another schema is rebuilt
_PUT_VERSION = "INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)"
_PUT_MODEL = "INSERT OR REPLACE INTO models VALUES (?, ?, 0, ?)"

# (name, version, upstream, disk, fingerprint on disk, error, retry_at). `retry_at` (wall clock) is set when the
# error is a failed fetch that the supervisor tries again then: the version is served once that succeeds. An
# error without it is a property of what upstream holds (an invalid layout).
VersionRow = tuple[str, int, bool, bool, "str | None", "str | None", "float | None"]


class FeedWriter:
    """The supervisor's side. Not thread-safe: the caller serialises publishes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError:  # a damaged file from an earlier run: it is derived, start afresh
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # derived data: a crash loses nothing a restart does not rebuild
        conn.execute("PRAGMA journal_size_limit=4194304")  # the first publish of a big catalogue leaves no big WAL
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            conn.executescript("DROP TABLE IF EXISTS top; DROP TABLE IF EXISTS models; DROP TABLE IF EXISTS versions;"
                               f"PRAGMA user_version = {SCHEMA_VERSION};")
        conn.executescript(SCHEMA)
        with _transaction(conn):  # readers of an earlier run see a new generation and start over
            conn.execute("DELETE FROM models")
            conn.execute("DELETE FROM versions")
            conn.execute("INSERT OR REPLACE INTO top (id, generation, seq, facts) VALUES (1, ?, 0, '{}')",
                         (uuid.uuid4().hex,))
        self.seq = 0
        # What readers have: each model's error and version numbers (the caller passes only the models whose
        # rows changed, so nothing else is needed). Version tuples are shared: most models have the same ones.
        self._errors: dict[str, str] = {}  # model -> its error
        self._versions: dict[str, tuple[int, ...]] = {}
        self._shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._facts = "{}"
        return conn

    def publish(self, facts: dict, changed: dict[str, tuple[str | None, list[VersionRow]]],
                live: set[str] | None = None) -> int:
        """Write the rows of the models in `changed`: each maps to its error and all its version rows (a version
        of it not among them left); with `live`, every model not in it left. Return the number of rows
        written."""
        seq = self.seq + 1
        model_rows, gone_models, version_rows, gone_versions = [], [], [], []
        items = list(changed.items())
        if live is not None:
            items += [(n, (None, [])) for n in (self._versions.keys() | self._errors.keys()) - live]
        new_versions: dict[str, tuple[int, ...]] = {}
        for name, (error, rows) in items:
            if error != self._errors.get(name):
                if error is None:
                    gone_models.append((seq, name))
                else:
                    model_rows.append((name, error, seq))
            now = tuple(sorted(row[1] for row in rows))
            version_rows += [(name, version, int(upstream), int(disk), fingerprint, err, retry_at, seq)
                             for _, version, upstream, disk, fingerprint, err, retry_at in rows]
            gone_versions += [(seq, name, v) for v in self._versions.get(name, ()) if v not in now]
            new_versions[name] = self._shapes.setdefault(now, now)
        text = json.dumps(facts, sort_keys=True)
        written = len(model_rows) + len(gone_models) + len(version_rows) + len(gone_versions)
        if written or text != self._facts:
            with _transaction(self._conn):
                self._conn.executemany(_PUT_MODEL, model_rows)
                self._conn.executemany("UPDATE models SET gone = 1, seq = ? WHERE name = ?", gone_models)
                self._conn.executemany(_PUT_VERSION, version_rows)
                self._conn.executemany("UPDATE versions SET gone = 1, seq = ? WHERE name = ? AND version = ?",
                                       gone_versions)
                self._conn.execute("UPDATE top SET seq = ?, facts = ?", (seq, text))
            self.seq, self._facts = seq, text
        for name, (error, _) in items:
            if error is None:
                self._errors.pop(name, None)
            else:
                self._errors[name] = error
            if new_versions[name]:
                self._versions[name] = new_versions[name]
            else:
                self._versions.pop(name, None)
        return written

    def close(self) -> None:
        self._conn.close()


@dataclass
class Changes:
    """What changed since the reader's last look; `reset` means forget everything first."""
    reset: bool
    facts: dict
    models: list[tuple[str, str | None, bool]] = field(default_factory=list)  # name, error, gone
    # name, version, upstream, disk, fingerprint, error, retry_at, gone, seq (the change that wrote the row)
    versions: list[tuple[str, int, bool, bool, str | None, str | None, float | None, bool, int]] = field(
        default_factory=list)


class FeedReader:
    """A worker's side: one connection, one cheap query when nothing changed. Not thread-safe."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._inode: int | None = None  # of the file the connection opened
        self.generation: str | None = None
        self.seq = -1

    def changes(self) -> Changes | None:
        """The rows changed since the last call, or None when nothing did (or the feed is not there yet)."""
        try:
            inode = os.stat(self.path).st_ino
        except OSError:
            inode = None
        if self._conn is not None and inode != self._inode:
            self.close()  # the file was removed or made anew (a runtime folder re-made): read the new one
        if inode is None:
            return None
        try:
            conn = self._connect()
            self._inode = inode
            with _transaction(conn):  # one snapshot for the top row and the rows it counts
                row = conn.execute("SELECT generation, seq, facts FROM top").fetchone()
                if row is None:
                    return None
                generation, seq, facts = row
                reset = generation != self.generation
                if not reset and seq == self.seq:
                    return None
                since = -1 if reset else self.seq
                models = conn.execute("SELECT name, error, gone FROM models WHERE seq > ?", (since,)).fetchall()
                versions = conn.execute("SELECT name, version, upstream, disk, fingerprint, error, retry_at, gone, "
                                        "seq FROM versions "
                                        "WHERE seq > ?", (since,)).fetchall()
        except sqlite3.Error:
            self.close()  # not created yet, or replaced by a restarted supervisor: reconnect next time
            return None
        self.generation, self.seq = generation, seq
        return Changes(reset, json.loads(facts), [(n, e, bool(g)) for n, e, g in models],
                       [(n, v, bool(u), bool(d), fp, e, r, bool(g), s) for n, v, u, d, fp, e, r, g, s in versions])

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, isolation_level=None,
                                         check_same_thread=False)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def facts(path: Path) -> dict:
    """The top-level facts alone (health checks, metrics): one small row, whatever the catalogue's size."""
    try:
        conn = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT facts FROM top").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return {}
    return json.loads(row[0]) if row else {}


def version_counts(path: Path) -> tuple[int, int]:
    """(versions on disk, versions with an error), counted in the feed (a scrape's figures)."""
    try:
        conn = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)
        try:
            disk, errors = conn.execute("SELECT total(disk), total(error IS NOT NULL) FROM versions "
                                        "WHERE gone = 0").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0, 0
    return int(disk), int(errors)


def snapshot(path: Path) -> dict | None:
    """Everything in the feed as one document (the facts, plus `models`: name -> error and versions by
    number), for tools and tests; None when there is no feed yet."""
    reader = FeedReader(path)
    changes = reader.changes()
    reader.close()
    if changes is None:
        return None
    models: dict[str, dict] = {n: {"error": e, "versions": {}} for n, e, gone in changes.models if not gone}
    for n, v, up, disk, fp, err, retry_at, gone, _ in changes.versions:
        if not gone:
            models.setdefault(n, {"error": None, "versions": {}})["versions"][str(v)] = {
                "upstream": up, "disk": disk, "fingerprint": fp, "error": err, "retry_at": retry_at}
    return {**changes.facts, "models": models}


class _transaction:
    """BEGIN/COMMIT on an autocommit connection (ROLLBACK on an error)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
