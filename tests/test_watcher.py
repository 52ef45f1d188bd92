"""The upstream watcher (DESIGN.md sections 5 and 6) against a local directory upstream; no servers."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from replica.disktree import DiskTree
from replica.spec import load_spec
from supervisor.catalogue import Catalogue
from supervisor.upstream import ChangedDuringDownload, LocalUpstream, UpstreamError
from supervisor.watcher import Watcher
from tests.helpers import read_state, sync
from tests.replica_proc import wait_for

_MTIME = [1_600_000_000_000_000_000]


def put(path: Path, data: bytes | str = b"x") -> Path:
    """Write a file with a fresh, strictly increasing mtime (so a rewrite is always seen as a change)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    _MTIME[0] += 1_000_000_000
    os.utime(path, ns=(_MTIME[0], _MTIME[0]))
    return path


class Env:
    """A spec over tmp directories, a state dir, and a factory for watchers over them."""

    def __init__(self, tmp_path: Path, predictor: dict, ptype: str = "python"):
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        (tmp_path / "predictor.py").write_text("")
        spec = {"name": "m", "predictor": {"type": ptype, "path": "predictor.py", **predictor}}
        (tmp_path / "api.yaml").write_text(yaml.safe_dump(spec))
        self.predictor = load_spec(tmp_path / "api.yaml").predictor
        self.upstream_cls = LocalUpstream

    def watcher(self, upstream_cls=None) -> Watcher:
        cls = upstream_cls or self.upstream_cls
        upstreams = [(s, cls(s.url)) for s in self.predictor.sources]
        w = Watcher(DiskTree(self.state), Catalogue(self.predictor, upstreams), poll_interval=0.01,
                    download_threads=2)
        w.start()
        return w

    def installed_file(self, name: str, version: int, key: str) -> Path:
        return self.state / "models" / name / str(version) / key

    def tmp_leftovers(self) -> list[Path]:
        return list((self.state / "tmp").iterdir())


@pytest.fixture
def single(tmp_path):
    """model_path -> tmp/up/m (python predictor: any file is a model); the model is named after the API."""
    up = tmp_path / "up" / "m"
    put(up / "1" / "a.bin", "one")
    put(up / "2" / "b.bin", "two")
    put(up / "2" / "sub" / "c.bin", "three")
    env = Env(tmp_path, {"model_path": "up/m"})
    env.up = up
    return env


@pytest.fixture
def many(tmp_path):
    """models.dir -> tmp/up (python predictor)."""
    up = tmp_path / "up"
    put(up / "alpha" / "1" / "w.bin", "alpha1")
    put(up / "beta" / "model.bin", "beta")  # unversioned: version 1
    env = Env(tmp_path, {"models": {"dir": "up"}})
    env.up = up
    return env


# -- first sync -----------------------------------------------------------------------------------------

def test_first_sync_installs_every_version_with_manifest(single):
    w = single.watcher()
    assert not w.ready
    sync(w)
    assert w.ready
    assert single.installed_file("m", 1, "a.bin").read_text() == "one"
    assert single.installed_file("m", 2, "b.bin").read_text() == "two"
    assert single.installed_file("m", 2, "sub/c.bin").read_text() == "three"
    listing = w.catalogue.models["m"].listing
    for version in (1, 2):
        manifest = json.loads((single.state / "models" / "m" / f"{version}.manifest.json").read_text())
        assert manifest["name"] == "m" and manifest["version"] == version
        assert manifest["fingerprint"] == listing.versions[version].fingerprint
        assert manifest["source"].endswith(f"/up/m/{version}/")
    manifest2 = DiskTree(single.state).manifest("m", 2)
    assert sorted(f[0] for f in manifest2["files"]) == ["b.bin", "sub/c.bin"]
    assert DiskTree(single.state).installed() == {"m": {v: listing.versions[v].fingerprint for v in (1, 2)}}
    assert w.bytes_downloaded == len("one") + len("two") + len("three")
    assert single.tmp_leftovers() == []
    status = w.status()
    assert set(status) == {"m"} and status["m"]["error"] is None
    for v in ("1", "2"):
        assert status["m"]["versions"][v]["disk"] is True
        assert status["m"]["versions"][v]["upstream"] is True
        assert status["m"]["versions"][v]["error"] is None


def test_models_dir_installs_each_child(many):
    w = many.watcher()
    sync(w)
    assert many.installed_file("alpha", 1, "w.bin").read_text() == "alpha1"
    assert many.installed_file("beta", 1, "model.bin").read_text() == "beta"
    assert sorted(w.status()) == ["alpha", "beta"]


def test_one_listing_per_root_per_pass(many):
    for i in range(5):
        put(many.up / f"extra{i}" / "1" / "f.bin", str(i))
    w = many.watcher()
    for passes in (1, 2, 3):
        sync(w)
        (_, upstream), = w.catalogue.roots
        assert upstream.list_calls == passes
        assert w.catalogue.list_calls == passes


def test_second_pass_without_changes_downloads_nothing(single):
    w = single.watcher()
    sync(w)
    before = w.bytes_downloaded
    inode = single.installed_file("m", 1, "a.bin").stat().st_ino
    sync(w)
    assert w.bytes_downloaded == before
    assert single.installed_file("m", 1, "a.bin").stat().st_ino == inode


# -- changes ----------------------------------------------------------------------------------------------

def test_changed_file_is_downloaded_again(single):
    w = single.watcher()
    sync(w)
    old_fp = DiskTree(single.state).manifest("m", 1)["fingerprint"]
    before = w.bytes_downloaded
    put(single.up / "1" / "a.bin", "ONE")  # same size, new mtime
    sync(w)
    assert single.installed_file("m", 1, "a.bin").read_text() == "ONE"
    assert DiskTree(single.state).manifest("m", 1)["fingerprint"] != old_fp
    assert w.bytes_downloaded == before + 3  # only the changed version
    assert single.tmp_leftovers() == []


def test_new_version_is_added(single):
    w = single.watcher()
    sync(w)
    put(single.up / "3" / "new.bin", "new")
    sync(w)
    assert single.installed_file("m", 3, "new.bin").read_text() == "new"
    assert sorted(w.installed["m"]) == [1, 2, 3]


def test_removed_version_is_removed(single):
    w = single.watcher()
    sync(w)
    shutil.rmtree(single.up / "2")
    sync(w)
    assert not (single.state / "models" / "m" / "2").exists()
    assert single.installed_file("m", 1, "a.bin").exists()
    assert set(w.installed["m"]) == {1}
    assert "2" not in w.status()["m"]["versions"]
    assert single.tmp_leftovers() == []


def test_removed_model_in_models_dir_is_removed(many):
    w = many.watcher()
    sync(w)
    shutil.rmtree(many.up / "beta")
    sync(w)
    assert not (many.state / "models" / "beta").exists()
    assert "beta" not in w.status()
    assert many.installed_file("alpha", 1, "w.bin").exists()


# -- invalid upstream versions keep the last good copy ---------------------------------------------------

@pytest.fixture
def onnx(tmp_path):
    up = tmp_path / "up" / "m"
    put(up / "1" / "model.onnx", "onnx-v1")
    env = Env(tmp_path, {"model_path": "up/m"}, ptype="onnx")
    env.up = up
    return env


def test_invalid_new_version_is_not_installed(onnx):
    put(onnx.up / "2" / "a.onnx", "a")
    put(onnx.up / "2" / "b.onnx", "b")
    w = onnx.watcher()
    sync(w)
    assert onnx.installed_file("m", 1, "model.onnx").exists()
    assert not (onnx.state / "models" / "m" / "2").exists()
    v2 = w.status()["m"]["versions"]["2"]
    assert v2["disk"] is False and v2["upstream"] is True
    assert "exactly one .onnx" in v2["error"] and "a.onnx" in v2["error"]
    assert "last good copy" not in v2["error"]
    assert w.status()["m"]["versions"]["1"]["error"] is None


def test_version_turning_invalid_keeps_last_good_copy(onnx):
    w = onnx.watcher()
    sync(w)
    good = onnx.installed_file("m", 1, "model.onnx")
    inode = good.stat().st_ino
    put(onnx.up / "1" / "second.onnx", "x")  # now two .onnx files: invalid
    sync(w)
    assert good.read_text() == "onnx-v1" and good.stat().st_ino == inode
    assert not onnx.installed_file("m", 1, "second.onnx").exists()
    v1 = w.status()["m"]["versions"]["1"]
    assert v1["disk"] is True
    assert "exactly one .onnx" in v1["error"] and "serving the last good copy" in v1["error"]
    state = read_state(onnx.state)
    assert "exactly one .onnx" in state["models"]["m"]["versions"]["1"]["error"]
    # valid again -> the error goes away (the original file is unchanged, so nothing is downloaded)
    (onnx.up / "1" / "second.onnx").unlink()
    before = w.bytes_downloaded
    sync(w)
    assert w.status()["m"]["versions"]["1"]["error"] is None
    assert w.bytes_downloaded == before


def test_invalid_changed_version_is_not_half_replaced(onnx):
    w = onnx.watcher()
    sync(w)
    (onnx.up / "1" / "model.onnx").unlink()
    put(onnx.up / "1" / "readme.txt", "no model here")
    sync(w)
    assert onnx.installed_file("m", 1, "model.onnx").read_text() == "onnx-v1"
    assert not onnx.installed_file("m", 1, "readme.txt").exists()


def test_mixed_layout_keeps_everything(single):
    w = single.watcher()
    sync(w)
    put(single.up / "stray.bin", "restructure in progress")
    sync(w)
    assert sorted(w.installed["m"]) == [1, 2]
    assert single.installed_file("m", 2, "b.bin").exists()
    m = w.status()["m"]
    assert "mixes integer version folders" in m["error"] and "serving the last good copy" in m["error"]


def test_empty_model_root_keeps_last_good_copy(single):
    w = single.watcher()
    sync(w)
    shutil.rmtree(single.up)
    single.up.mkdir()
    sync(w)
    assert sorted(w.installed["m"]) == [1, 2]
    assert w.status()["m"]["error"].startswith("no model files upstream")


# -- listing errors never remove anything ---------------------------------------------------------------

def test_listing_error_removes_nothing(single):
    w = single.watcher()
    sync(w)
    single.up.rename(single.up.with_name("moved"))
    sync(w)
    assert sorted(w.installed["m"]) == [1, 2]
    assert single.installed_file("m", 1, "a.bin").read_text() == "one"
    url = w.catalogue.predictor.sources[0].url
    assert "not a directory" in w.catalogue.root_errors[url]
    state = read_state(single.state)
    assert "<model_path of m> is not a directory" in state["root_errors"]["<model_path of m>"]  # no local path
    assert state["ready"] is True  # it was ready; an outage does not make it unready
    assert sorted(state["models"]["m"]["versions"]) == ["1", "2"]
    # back again: the error clears and nothing is downloaded again
    single.up.with_name("moved").rename(single.up)
    before = w.bytes_downloaded
    sync(w)
    assert w.catalogue.root_errors == {}
    assert read_state(single.state)["root_errors"] == {}
    assert w.bytes_downloaded == before


def test_listing_error_of_models_dir_removes_nothing(many):
    w = many.watcher()
    sync(w)
    many.up.rename(many.tmp / "gone")
    sync(w)
    assert sorted(w.installed) == ["alpha", "beta"]
    assert many.installed_file("beta", 1, "model.bin").exists()
    assert w.catalogue.root_errors


def test_listing_error_on_first_pass_is_not_ready(single):
    single.up.rename(single.up.with_name("moved"))
    w = single.watcher()
    sync(w)
    assert not w.ready
    state = read_state(single.state)
    assert state["ready"] is False and state["root_errors"]


def test_unexpected_listing_exception_is_a_root_error(single):
    class Broken(LocalUpstream):
        def list(self):
            raise RuntimeError("boom")

    w = single.watcher()
    sync(w)
    w2 = single.watcher(Broken)
    sync(w2)
    assert "RuntimeError: boom" in next(iter(w2.catalogue.root_errors.values()))
    assert sorted(w2.installed["m"]) == [1, 2]


def test_download_error_is_reported_and_retried(single):
    calls = []

    class Failing(LocalUpstream):
        def fetch(self, obj, dest, progress=None):
            calls.append(obj.key)
            if len(calls) == 1:
                raise UpstreamError("network down", "network down")
            return super().fetch(obj, dest, progress)

    w = single.watcher(Failing)
    w.download_threads = 1
    sync(w)
    failed = [v for v, s in w.status()["m"]["versions"].items() if s["error"]]
    assert len(failed) == 1 and "network down" in w.status()["m"]["versions"][failed[0]]["error"]
    assert single.tmp_leftovers() == []
    # tried again once its backoff (one poll interval after a first failure) has passed
    wait_for(lambda: (sync(w), sorted(w.installed["m"]) == [1, 2])[1], timeout=5, interval=0.01,
             message="the failed version downloaded on a later pass")
    assert all(s["error"] is None for s in w.status()["m"]["versions"].values())


# -- warm restart ------------------------------------------------------------------------------------------

def test_warm_restart_reuses_matching_versions(single):
    sync(single.watcher())
    inode = single.installed_file("m", 2, "b.bin").stat().st_ino
    w = single.watcher()
    assert w.installed.keys() == {"m"}
    sync(w)
    assert w.bytes_downloaded == 0
    assert single.installed_file("m", 2, "b.bin").stat().st_ino == inode
    assert w.ready


def test_warm_restart_downloads_only_what_changed_and_removes_what_went(single):
    sync(single.watcher())
    put(single.up / "1" / "a.bin", "uno!")
    shutil.rmtree(single.up / "2")
    w = single.watcher()
    sync(w)
    assert w.bytes_downloaded == 4
    assert single.installed_file("m", 1, "a.bin").read_text() == "uno!"
    assert not (single.state / "models" / "m" / "2").exists()


def test_warm_restart_with_unreachable_upstream_serves_disk(single):
    sync(single.watcher())
    single.up.rename(single.up.with_name("moved"))
    w = single.watcher()
    sync(w)
    assert w.ready  # copies from the previous run are served
    assert sorted(w.installed["m"]) == [1, 2]
    assert read_state(single.state)["models"]["m"]["versions"]["1"]["disk"] is True


def test_warm_restart_clears_interrupted_downloads(single):
    sync(single.watcher())
    junk = single.state / "tmp" / "m-1-crashed"
    put(junk / "model" / "half.bin", "half")
    w = single.watcher()
    assert single.tmp_leftovers() == []
    sync(w)
    assert w.bytes_downloaded == 0


# -- unsafe names in models.dir ----------------------------------------------------------------------------

def test_unsafe_child_name_is_skipped_with_error(many):
    put(many.up / "bad name" / "1" / "w.bin", "bad")
    put(many.up / "bad.dot" / "w.bin", "bad")
    w = many.watcher()
    sync(w)
    assert sorted(p.name for p in (many.state / "models").iterdir()) == ["alpha", "beta"]
    status = w.status()
    for bad in ("bad name", "bad.dot"):
        assert "unsafe model name" in status[bad]["error"]
        assert status[bad]["versions"] == {}
    assert status["alpha"]["error"] is None
    assert "unsafe model name" in read_state(many.state)["models"]["bad name"]["error"]
    assert w.ready  # the good models are served


def test_hidden_children_of_models_dir_are_ignored(many):
    put(many.up / ".git" / "config", "x")
    put(many.up / "loose-file.txt", "x")
    w = many.watcher()
    sync(w)
    assert sorted(w.status()) == ["alpha", "beta"]


# -- changes during a download ---------------------------------------------------------------------------

def test_changed_during_download_installs_nothing_then_retries(single):
    raised = []

    class FlakyOnce(LocalUpstream):
        def fetch(self, obj, dest, progress=None):
            if not raised and obj.key.startswith("2/"):
                raised.append(obj.key)
                raise ChangedDuringDownload(obj.key)
            return super().fetch(obj, dest, progress)

    w = single.watcher(FlakyOnce)
    sync(w)
    assert raised
    assert not (single.state / "models" / "m" / "2").exists()  # no partial version
    assert single.installed_file("m", 1, "a.bin").exists()  # other versions are unaffected
    assert single.tmp_leftovers() == []
    v2 = w.status()["m"]["versions"]["2"]
    assert v2["disk"] is False and "changed upstream during download" in v2["error"]
    assert w.next_delay() <= 1.0  # retried soon, not after a full poll interval
    sync(w)
    assert single.installed_file("m", 2, "sub/c.bin").read_text() == "three"
    assert w.status()["m"]["versions"]["2"]["error"] is None


def test_real_change_during_download_is_fetched_again_with_new_content(single):
    touched = []

    class Racing(LocalUpstream):
        def fetch(self, obj, dest, progress=None):
            if not touched and obj.key == "2/b.bin":
                touched.append(obj.key)
                put(self.root / obj.key, "TWO")  # rewritten between the listing and the download
            return super().fetch(obj, dest, progress)

    w = single.watcher(Racing)
    sync(w)
    assert touched and not (single.state / "models" / "m" / "2").exists()
    sync(w)
    assert single.installed_file("m", 2, "b.bin").read_text() == "TWO"
    manifest = DiskTree(single.state).manifest("m", 2)
    assert manifest["fingerprint"] == w.catalogue.models["m"].listing.versions[2].fingerprint


def test_changed_during_download_keeps_previous_copy(single):
    w = single.watcher()
    sync(w)
    put(single.up / "1" / "a.bin", "NEW")

    class AlwaysChanging(LocalUpstream):
        def fetch(self, obj, dest, progress=None):
            raise ChangedDuringDownload(obj.key)

    w2 = single.watcher(AlwaysChanging)
    sync(w2)
    assert single.installed_file("m", 1, "a.bin").read_text() == "one"
    assert "serving the last good copy" in w2.status()["m"]["versions"]["1"]["error"]


# -- several sources ---------------------------------------------------------------------------------------

def test_two_paths_entries_with_the_same_model_path(tmp_path):
    up = tmp_path / "up" / "shared"
    put(up / "1" / "w.bin", "w")
    env = Env(tmp_path, {"models": {"paths": [{"name": "a", "model_path": "up/shared"},
                                              {"name": "b", "model_path": "up/shared"}]}})
    w = env.watcher()
    sync(w)
    assert sorted(w.status()) == ["a", "b"]
    assert env.installed_file("a", 1, "w.bin").exists() and env.installed_file("b", 1, "w.bin").exists()
    assert w.catalogue.complete and w.ready


def test_one_root_failing_keeps_the_other_roots_models(tmp_path):
    put(tmp_path / "up" / "a" / "1" / "w.bin", "a")
    put(tmp_path / "up" / "b" / "1" / "w.bin", "b")
    env = Env(tmp_path, {"models": {"paths": [{"name": "a", "model_path": "up/a"},
                                              {"name": "b", "model_path": "up/b"}]}})
    w = env.watcher()
    sync(w)
    (tmp_path / "up" / "a").rename(tmp_path / "a-moved")
    shutil.rmtree(tmp_path / "up" / "b" / "1")
    put(tmp_path / "up" / "b" / "2" / "w.bin", "b2")
    sync(w)
    assert sorted(w.installed) == ["a", "b"]
    assert sorted(w.installed["a"]) == [1]  # unlisted root: untouched
    assert sorted(w.installed["b"]) == [2]  # listed root: reconciled
    assert not w.catalogue.complete


# -- the state feed --------------------------------------------------------------------------------------------

def test_publish_writes_the_state_feed(single):
    put(single.up / "3" / "x.bin", "x")
    w = single.watcher()
    sync(w)
    state = read_state(single.state)
    for key in ("ready", "models", "root_errors", "list_calls", "last_poll", "last_success", "bytes_downloaded"):
        assert key in state, key
    assert state["ready"] is True
    assert state["root_errors"] == {}
    assert state["list_calls"] == 1
    assert state["bytes_downloaded"] == w.bytes_downloaded > 0
    assert isinstance(state["last_poll"], float) and isinstance(state["last_success"], float)
    m = state["models"]["m"]
    assert m["error"] is None
    assert sorted(m["versions"]) == ["1", "2", "3"]
    fps = w.catalogue.models["m"].listing.versions
    for v, info in m["versions"].items():
        assert {"upstream", "disk", "fingerprint", "error"} <= set(info)
        assert info == {**info, "upstream": True, "disk": True, "fingerprint": fps[int(v)].fingerprint,
                        "error": None}


def test_publish_before_any_pass(single):
    w = single.watcher()
    w.publish()
    state = read_state(single.state)
    assert state["ready"] is False and state["models"] == {} and state["last_poll"] is None


# -- errors shown are current ----------------------------------------------------------------------------

def test_invalid_version_shows_its_reason_not_an_old_download_error(onnx):
    failing = []

    class FailOnce(LocalUpstream):
        def fetch(self, obj, dest, progress=None):
            if not failing:
                failing.append(obj.key)
                raise UpstreamError("network down", "network down")
            return super().fetch(obj, dest, progress)

    put(onnx.up / "2" / "model.onnx", "v2")
    w = onnx.watcher(FailOnce)
    w.download_threads = 1
    sync(w)
    failed = failing[0].split("/")[0]
    assert "network down" in w.status()["m"]["versions"][failed]["error"]
    put(onnx.up / failed / "extra.onnx", "x")  # that version becomes invalid upstream
    sync(w)
    assert "exactly one .onnx" in w.status()["m"]["versions"][failed]["error"]


def test_download_error_clears_when_upstream_returns_to_the_copy_on_disk(single):
    w = single.watcher()
    sync(w)
    original = single.up / "1" / "a.bin"
    st = original.stat()
    put(original, "NEW")

    class Failing(LocalUpstream):
        def fetch(self, obj, dest, progress=None):
            raise UpstreamError("network down", "network down")

    w.catalogue.roots = [(s, Failing(u.url)) for s, u in w.catalogue.roots]
    sync(w)
    assert "network down" in w.status()["m"]["versions"]["1"]["error"]
    original.write_text("one")
    os.utime(original, ns=(st.st_atime_ns, st.st_mtime_ns))  # upstream reverted: same as the copy on disk
    sync(w)
    assert w.status()["m"]["versions"]["1"]["error"] is None


# -- a reload that changes the model roots ---------------------------------------------------------------------

def reload_roots(env: Env, w: Watcher, predictor: dict, upstream_cls=LocalUpstream) -> Catalogue:
    """What a SIGHUP that changes the model paths does: a catalogue over the new roots, listed once, that
    replaces the watcher's."""
    spec = {"name": "m", "predictor": {"type": "python", "path": "predictor.py", **predictor}}
    (env.tmp / "api.yaml").write_text(yaml.safe_dump(spec))
    pred = load_spec(env.tmp / "api.yaml").predictor
    catalogue = Catalogue(pred, [(s, upstream_cls(s.url)) for s in pred.sources], previous=w.catalogue)
    catalogue.refresh()
    w.catalogue = catalogue
    return catalogue


def test_new_roots_failing_their_first_listing_keep_the_common_models(many):
    w = many.watcher()
    sync(w)
    new = many.tmp / "up-new"  # the models move there; it is not readable yet
    catalogue = reload_roots(many, w, {"models": {"dir": "up-new"}})
    assert catalogue.root_errors and not catalogue.complete
    assert sorted(catalogue.models) == ["alpha", "beta"]  # still declared: the new root may hold them
    sync(w)
    assert sorted(w.installed) == ["alpha", "beta"]
    assert w.fetch_version("alpha", 1).error is None  # not "not upstream"
    assert all(v["upstream"] for m in w.status().values() for v in m["versions"].values())
    # the new root lists: it holds alpha only, so beta really went
    new.mkdir()
    put(new / "alpha" / "1" / "w.bin", "alpha1")
    sync(w)
    assert w.catalogue.complete and sorted(w.catalogue.models) == ["alpha"]
    assert sorted(w.installed) == ["alpha"]


def test_only_an_unlisted_paths_root_keeps_its_own_model(tmp_path):
    put(tmp_path / "up" / "a" / "1" / "w.bin", "a")
    put(tmp_path / "up" / "b" / "1" / "w.bin", "b")
    env = Env(tmp_path, {"models": {"paths": [{"name": "a", "model_path": "up/a"},
                                              {"name": "b", "model_path": "up/b"}]}})
    w = env.watcher()
    sync(w)
    # b moves to a root that does not list yet; a stays where it is; c is new
    put(tmp_path / "up" / "c" / "1" / "w.bin", "c")
    catalogue = reload_roots(env, w, {"models": {"paths": [{"name": "a", "model_path": "up/a"},
                                                           {"name": "b", "model_path": "up/b-moved"},
                                                           {"name": "c", "model_path": "up/c"}]}})
    assert sorted(catalogue.models) == ["a", "b", "c"]
    assert catalogue.models["a"].upstream.url.endswith("up/a")
    sync(w)
    assert sorted(w.installed) == ["a", "b", "c"]
    # a spec that drops b, with every root listing: b goes at once
    reload_roots(env, w, {"models": {"paths": [{"name": "a", "model_path": "up/a"}]}})
    sync(w)
    assert sorted(w.installed) == ["a"]


def test_pass_under_way_keeps_its_catalogue_when_a_reload_replaces_it(many):
    w = many.watcher()
    sync(w)
    swapped = []

    class Swapping(LocalUpstream):
        """Lists as usual, then a reload replaces the catalogue while the pass goes on."""

        def list(self):
            objects = super().list()
            if not swapped:
                swapped.append(reload_roots(many, w, {"models": {"paths": [
                    {"name": "alpha", "model_path": "up/alpha"}]}}))
            return objects

    w.catalogue = Catalogue(w.catalogue.predictor, [(s, Swapping(s.url)) for s in many.predictor.sources],
                            previous=w.catalogue)
    sync(w)
    assert w.synced_catalogue is not swapped[0]  # that pass reconciled with the catalogue it started with
    assert sorted(w.installed) == ["alpha", "beta"]
    sync(w)
    assert w.synced_catalogue is swapped[0]
    assert sorted(w.installed) == ["alpha"]


# -- downloads run beside the passes ---------------------------------------------------------------------------

def _blocking_upstream(gate, started, prefix: str, report: bool = True):
    """Downloads under `prefix` hold until `gate` is set; with `report`, they report a chunk meanwhile."""
    class Blocking(LocalUpstream):
        def fetch(self, obj, dest, progress=None):
            if obj.key.startswith(prefix):
                started.set()
                while not gate.wait(0.05):
                    if report and progress is not None:
                        progress(0)  # raises Stopped once the replica stops
            return super().fetch(obj, dest, progress)
    return Blocking


def _pass_returns(w, timeout: float = 5.0) -> None:
    """Run one pass on a thread: it must end without waiting for a held download (a pass that waited would
    otherwise hang the test instead of failing it)."""
    import threading

    t = threading.Thread(target=w.sync_once, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the pass waited for a download"


def _held_download(many) -> tuple:
    """A watcher over `many` whose first pass has returned with alpha's download held open: (watcher, gate);
    setting the gate lets the download go on."""
    import threading

    gate, started = threading.Event(), threading.Event()
    w = many.watcher(_blocking_upstream(gate, started, "alpha/"))
    _pass_returns(w)  # returns while alpha's download is held
    assert started.wait(5)
    return w, gate


def test_a_slow_download_delays_no_pass_and_no_other_model(many):
    w, gate = _held_download(many)
    try:
        assert w.wait_for_downloads(0.2) is False
        wait_for(lambda: 1 in w.installed.get("beta", {}), timeout=5, interval=0.01, message="beta on disk")
        assert "alpha" not in w.installed
        put(many.up / "beta" / "model.bin", "beta, again")
        _pass_returns(w)  # the next pass: beta's update lands, alpha's download is not started a second time
        wait_for(lambda: (many.state / "models" / "beta" / "1" / "model.bin").read_text() == "beta, again",
                 timeout=5, interval=0.01, message="beta's update on disk")
        wait_for(lambda: list(w._queued) == [("alpha", 1)], timeout=5, interval=0.01,
                 message="only alpha's download still under way")  # beta's ends just after its install
        assert w.versions.state(("alpha", 1)).value == "downloading"
        assert read_state(many.state)["models"]["beta"]["versions"]["1"]["disk"] is True
    finally:
        gate.set()
    assert w.wait_for_downloads(5)
    assert (many.state / "models" / "alpha" / "1" / "w.bin").read_text() == "alpha1"
    assert read_state(many.state)["models"]["alpha"]["versions"]["1"]["disk"] is True


def test_not_ready_until_the_first_syncs_downloads_end(many):
    w, gate = _held_download(many)
    try:
        assert w.ready is False and read_state(many.state)["ready"] is False
    finally:
        gate.set()
    assert w.wait_for_downloads(5)
    assert w.ready is True and read_state(many.state)["ready"] is True


def test_stopping_ends_a_download_and_leaves_the_version_at_rest(many):
    w, _ = _held_download(many)
    w.stop_event.set()
    assert w.wait_for_downloads(5), "a stopping replica ends its downloads at their next chunk"
    assert w.versions.get(("alpha", 1)) is None and "alpha" not in w.installed
    assert many.tmp_leftovers() == []


def test_the_heartbeat_is_the_loops_while_a_download_hangs(many):
    import threading
    import time

    gate, started = threading.Event(), threading.Event()
    w = many.watcher(_blocking_upstream(gate, started, "alpha/", report=False))  # no byte arrives
    w.poll_interval = 60.0  # one pass, then a long wait
    stop = threading.Event()
    loop = threading.Thread(target=w.run, args=(stop,), daemon=True)
    loop.start()
    heartbeat = DiskTree(many.state).heartbeat_file
    try:
        assert started.wait(5)
        wait_for(heartbeat.exists, timeout=5, interval=0.01)
        first = heartbeat.stat().st_mtime_ns
        wait_for(lambda: heartbeat.stat().st_mtime_ns > first, timeout=3, interval=0.05,
                 message="the heartbeat touched by the waiting loop while the download hangs")
    finally:
        stop.set()
        gate.set()
        loop.join(5)
    assert not loop.is_alive()


def test_a_restart_with_versions_on_disk_is_ready_before_any_listing(many):
    sync(many.watcher())

    class Hanging(LocalUpstream):
        def list(self):
            raise AssertionError("ready must not wait for a listing")

    w = many.watcher(Hanging)  # start() adopts the copies on disk
    assert w.ready is True
    w.publish()
    assert read_state(many.state)["ready"] is True
