"""The state feed: a publish writes only what changed, and a worker reads only what changed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from replica.disktree import DiskTree
from replica.feed import FeedReader, FeedWriter, facts, snapshot
from replica.spec import load_spec
from supervisor.catalogue import Catalogue
from supervisor.upstream import LocalUpstream
from supervisor.watcher import Watcher
from workers.state_feed import StateView
from tests.helpers import sync


def catalogue(n: int, disk: set[str] = frozenset(), error: dict | None = None) -> dict:
    """n models of one version each, as FeedWriter.publish takes them."""
    error = error or {}
    return {f"m{i}": (None, [(f"m{i}", 1, True, f"m{i}" in disk, "fp" if f"m{i}" in disk else None,
                              error.get(f"m{i}"), None)]) for i in range(n)}


def rows(versions: list[tuple]) -> list[tuple]:
    """Version rows as read, without the change number that wrote them."""
    return [v[:-1] for v in versions]


def publish(writer: FeedWriter, facts: dict, models: dict) -> int:
    return writer.publish(facts, models, live=set(models))


def test_a_publish_writes_and_a_reader_reads_only_the_rows_that_changed(tmp_path):
    writer = FeedWriter(tmp_path / "feed.sqlite")
    reader = FeedReader(tmp_path / "feed.sqlite")
    everything = catalogue(1000)
    assert publish(writer, {"ready": True}, everything) == 1000
    first = reader.changes()
    assert first.reset and first.models == [] and len(first.versions) == 1000
    assert reader.changes() is None  # nothing moved: nothing to read

    assert writer.publish({"ready": True}, {}, live=set(everything)) == 0  # nothing changed: nothing written
    assert reader.changes() is None
    assert writer.publish({"ready": True}, {"m7": catalogue(1000, disk={"m7"})["m7"]}, live=set(everything)) == 1
    change = reader.changes()
    assert not change.reset and change.models == []
    assert rows(change.versions) == [("m7", 1, True, True, "fp", None, None, False)]
    assert change.versions[0][-1] == writer.seq  # each row says which change wrote it

    # only the models given, as after a fetch: no other model is marked gone
    assert writer.publish({"ready": True}, {"m3": (None, [("m3", 1, True, False, None, "boom", None)])}) == 1
    assert rows(reader.changes().versions) == [("m3", 1, True, False, None, "boom", None, False)]
    # a model's rows are all its rows: a version left out has left
    assert writer.publish({"ready": True}, {"m3": (None, [("m3", 2, True, False, None, None, None)])}) == 2
    assert sorted(rows(reader.changes().versions)) == [("m3", 1, True, False, None, "boom", None, True),
                                                 ("m3", 2, True, False, None, None, None, False)]


def _local_watcher(tmp_path: Path, models: int) -> tuple[Watcher, Path]:
    """A caching watcher over a local models.dir of `models` one-version models, started."""
    up = tmp_path / "up"
    for i in range(models):
        (up / f"m{i:02d}" / "1").mkdir(parents=True)
        (up / f"m{i:02d}" / "1" / "w.bin").write_text(str(i))
    (tmp_path / "predictor.py").write_text("")
    (tmp_path / "api.yaml").write_text("name: a\npredictor:\n  type: python\n  path: predictor.py\n"
                                       "  models:\n    dir: up\n")
    predictor = load_spec(tmp_path / "api.yaml").predictor
    watcher = Watcher(DiskTree(tmp_path / "state"),
                      Catalogue(predictor, [(s, LocalUpstream(s.url)) for s in predictor.sources]), prefetch=False)
    watcher.start()
    return watcher, up


def test_a_watcher_pass_over_an_unchanged_catalogue_writes_no_rows(tmp_path):
    """The supervisor side: only models whose listing, disk copies or errors changed reach the feed."""
    watcher, up = _local_watcher(tmp_path, 50)
    sync(watcher)
    reader = FeedReader(watcher.tree.feed_file)
    assert len(reader.changes().versions) == 50
    sync(watcher)
    change = reader.changes()  # the facts moved (last poll), no row did
    assert change is not None and change.models == [] and change.versions == []
    (up / "m07" / "2").mkdir()
    (up / "m07" / "2" / "w.bin").write_text("new")
    sync(watcher)
    written = reader.changes().versions  # the rows of the model that changed, and only those
    assert {row[0] for row in written} == {"m07"} and ("m07", 2) in {row[:2] for row in written}


def test_a_publish_that_failed_is_written_by_the_next(tmp_path):
    watcher, up = _local_watcher(tmp_path, 3)
    sync(watcher)
    reader = FeedReader(watcher.tree.feed_file)
    reader.changes()
    (up / "new" / "1").mkdir(parents=True)
    (up / "new" / "1" / "w.bin").write_text("new")
    write, failed = watcher.feed.publish, []

    def full_once(*args, **kwargs):  # the runtime folder's filesystem was full for one write
        if not failed:
            failed.append(True)
            raise sqlite3.OperationalError("database or disk is full")
        return write(*args, **kwargs)

    watcher.feed.publish = full_once
    with pytest.raises(sqlite3.OperationalError):
        sync(watcher)
    assert reader.changes() is None
    sync(watcher)
    assert [row[:2] for row in reader.changes().versions] == [("new", 1)]


def test_what_left_becomes_a_tombstone_and_comes_back(tmp_path):
    writer = FeedWriter(tmp_path / "feed.sqlite")
    reader = FeedReader(tmp_path / "feed.sqlite")
    publish(writer, {}, catalogue(3))
    reader.changes()
    writer.publish({}, {}, live=set(catalogue(2)))  # m2 left
    change = reader.changes()
    assert change.models == [] and rows(change.versions) == [("m2", 1, True, False, None, None, None, True)]
    assert sorted(snapshot(tmp_path / "feed.sqlite")["models"]) == ["m0", "m1"]
    writer.publish({}, {"m2": catalogue(3)["m2"]}, live=set(catalogue(3)))
    assert rows(reader.changes().versions) == [("m2", 1, True, False, None, None, None, False)]


def test_a_model_error_comes_and_goes(tmp_path):
    writer = FeedWriter(tmp_path / "feed.sqlite")
    view = StateView(DiskTree(tmp_path, runtime=tmp_path))
    publish(writer, {}, {**catalogue(1), "bad": ("no model files upstream", [])})
    assert view.refresh() and view.model("bad") == {"error": "no model files upstream", "versions": {}}
    assert snapshot(tmp_path / "feed.sqlite")["models"]["bad"]["error"] == "no model files upstream"
    publish(writer, {}, {"m0": ("listing failed", catalogue(1)["m0"][1])})
    assert view.refresh() and "bad" not in view.models and view.model("m0")["error"] == "listing failed"
    publish(writer, {}, catalogue(1))
    assert view.refresh() and view.model("m0")["error"] is None and view.version_info("m0", 1)["upstream"]


def test_a_restarted_supervisor_starts_readers_over(tmp_path):
    publish(FeedWriter(tmp_path / "feed.sqlite"), {"ready": True}, catalogue(5))
    view = StateView(DiskTree(tmp_path, runtime=tmp_path))
    assert view.refresh() and len(view.models) == 5 and view.ready
    publish(FeedWriter(tmp_path / "feed.sqlite"), {"ready": False}, catalogue(2))
    assert view.refresh() and sorted(view.models) == ["m0", "m1"] and not view.ready


def test_the_worker_view_is_replaced_not_changed_in_place(tmp_path):
    writer = FeedWriter(tmp_path / "feed.sqlite")
    view = StateView(DiskTree(tmp_path, runtime=tmp_path))
    publish(writer, {"control_socket": "/x.sock"}, catalogue(3, disk={"m1"}))
    view.refresh()
    models, disk = view.models, view.on_disk()
    assert disk == {"m1": {1: "fp"}} and view.control_socket == "/x.sock"
    publish(writer, {}, catalogue(3, disk={"m2"}, error={"m0": "bad"}))
    assert view.refresh()
    assert disk == {"m1": {1: "fp"}} and models["m0"]["versions"]["1"]["error"] is None  # the old copies stand
    assert view.on_disk() == {"m2": {1: "fp"}}
    assert view.version_info("m0", 1)["error"] == "bad" and view.upstream_versions("m0") == []
    assert view.upstream_versions("m1") == [1]
    publish(writer, {}, catalogue(2))  # m2 left upstream and disk together
    assert view.refresh() and "m2" not in view.models and view.on_disk() == {}


def test_facts_before_the_feed_exists(tmp_path):
    assert facts(tmp_path / "feed.sqlite") == {}
    assert snapshot(tmp_path / "feed.sqlite") is None
    assert FeedReader(tmp_path / "feed.sqlite").changes() is None
