"""The state feed: a publish writes only what changed, and a worker reads only what changed."""

from __future__ import annotations

from replica.disktree import DiskTree
from replica.feed import FeedReader, FeedWriter, facts, snapshot
from workers.state_feed import StateView


def catalogue(n: int, disk: set[str] = frozenset(), error: dict | None = None) -> dict:
    """n models of one version each, as FeedWriter.publish takes them."""
    error = error or {}
    return {f"m{i}": (None, [(f"m{i}", 1, True, f"m{i}" in disk, "fp" if f"m{i}" in disk else None,
                              error.get(f"m{i}"))]) for i in range(n)}


def publish(writer: FeedWriter, facts: dict, models: dict) -> int:
    return writer.publish(facts, models, live=set(models))


def test_a_publish_writes_and_a_reader_reads_only_the_rows_that_changed(tmp_path):
    writer = FeedWriter(tmp_path / "feed.sqlite")
    reader = FeedReader(tmp_path / "feed.sqlite")
    assert publish(writer, {"ready": True}, catalogue(1000)) == 1000
    first = reader.changes()
    assert first.reset and first.models == [] and len(first.versions) == 1000
    assert reader.changes() is None  # nothing moved: nothing to read

    assert publish(writer, {"ready": True}, catalogue(1000)) == 0  # same catalogue: nothing written
    assert reader.changes() is None
    assert publish(writer, {"ready": True}, catalogue(1000, disk={"m7"})) == 1
    change = reader.changes()
    assert not change.reset and change.models == []
    assert change.versions == [("m7", 1, True, True, "fp", None, False)]

    # only the models given, as after a fetch: no other model is marked gone
    assert writer.publish({"ready": True}, {"m3": (None, [("m3", 1, True, False, None, "boom")])}) == 1
    assert reader.changes().versions == [("m3", 1, True, False, None, "boom", False)]
    # a model's rows are all its rows: a version left out has left
    assert writer.publish({"ready": True}, {"m3": (None, [("m3", 2, True, False, None, None)])}) == 2
    assert sorted(reader.changes().versions) == [("m3", 1, True, False, None, "boom", True),
                                                 ("m3", 2, True, False, None, None, False)]


def test_what_left_becomes_a_tombstone_and_comes_back(tmp_path):
    writer = FeedWriter(tmp_path / "feed.sqlite")
    reader = FeedReader(tmp_path / "feed.sqlite")
    publish(writer, {}, catalogue(3))
    reader.changes()
    publish(writer, {}, catalogue(2))
    change = reader.changes()
    assert change.models == [] and change.versions == [("m2", 1, True, False, None, None, True)]
    assert sorted(snapshot(tmp_path / "feed.sqlite")["models"]) == ["m0", "m1"]
    publish(writer, {}, catalogue(3))
    assert [v[0] for v in reader.changes().versions] == ["m2"]


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
