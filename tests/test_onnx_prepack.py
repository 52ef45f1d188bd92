"""ONNX versions serve from a session that maps their weights and run on a pre-packed one once it is built
(workers/onnx_prepack.py): the same outputs before and after, one version packed at a time, nothing packed
for a version that left memory or whose disk copy was replaced, and pre-packing in the load where it must be
measured or was set."""

from __future__ import annotations

import gc
import json
import logging
import os
import threading

import numpy as np
import onnxruntime as ort
import pytest

from replica.disktree import DiskTree
from replica.quarantine import MARK_SUFFIX, LoadMarks
from replica.spec import load_spec
from supervisor.onnx_weights import rewrite
from tests.helpers import serving, write_api
from tests.replica_proc import wait_for
from tests.test_onnx_weights import PREDICTOR, _mlp
from workers.onnx_client import SESSION_CONFIG, onnx_loader
from workers.onnx_prepack import PREPACKING_KEY, OnnxModel, Packer, deferred
from workers.registry import ModelRegistry
from workers.runtime import framework_loader

CPU = ["CPUExecutionProvider"]


def _prepacking_disabled(session) -> bool:
    try:
        return session.get_session_options().get_session_config_entry(PREPACKING_KEY) == "1"
    except RuntimeError:  # onnxruntime: "does not have configuration with key", its default (packing)
        return False


def _tree(tmp_path) -> DiskTree:
    tree = DiskTree(tmp_path / "state", runtime=tmp_path / "run")
    tree.prepare()
    return tree


def _install(tree: DiskTree, name: str, fingerprint: str, onnx: bool = False) -> None:
    """Version 1 of `name` into the tree as the supervisor installs it: with `onnx`, a model whose weights are
    in `model.onnx.weights`, mapped by the graph."""
    staging = tree.new_staging_dir(name, 1)
    if onnx:
        _mlp(staging / "model.onnx", [256, 512, 512, 8], seed=3)
        rewrite(staging / "model.onnx")
    tree.install(staging, name, 1, {"fingerprint": fingerprint, "files": []})


def test_a_version_serves_unpacked_then_runs_packed_with_the_same_outputs(tmp_path):
    tree = _tree(tmp_path)
    _install(tree, "m", "a", onnx=True)
    version = tree.version_dir("m", 1)
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    want = ort.InferenceSession(str(version / "model.onnx"), providers=CPU).run(None, {"x": x})[0]
    packer = Packer(tree, LoadMarks(tree.workers_dir))
    with tree.read_lock("m", 1):  # as the worker loads
        model = onnx_loader(CPU, SESSION_CONFIG, packer)(str(version), "m", 1)
    first = model["session"]
    assert isinstance(model, OnnxModel)
    np.testing.assert_allclose(first.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)
    assert packer.wait_idle(timeout=60)
    packed = model["session"]
    assert packed is not first and _prepacking_disabled(first) and not _prepacking_disabled(packed)
    np.testing.assert_allclose(packed.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)
    assert packed.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_versions_pack_one_at_a_time_in_the_order_they_loaded(tmp_path):
    tree = _tree(tmp_path)
    for i in range(4):
        _install(tree, f"m{i}", "a")
    packer, order, running, most = Packer(tree, LoadMarks(tree.workers_dir)), [], [0], [0]
    lock = threading.Lock()

    def build(label):
        def go():
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            order.append(label)
            threading.Event().wait(0.02)
            with lock:
                running[0] -= 1
            return f"packed {label}"
        return go

    models = [OnnxModel(session=f"unpacked {i}") for i in range(4)]
    for i, model in enumerate(models):
        packer.add(model, f"m{i}", 1, build(str(i)))
    assert packer.wait_idle(timeout=10)
    assert order == ["0", "1", "2", "3"] and most[0] == 1
    assert [m["session"] for m in models] == [f"packed {i}" for i in range(4)]


def test_a_version_that_left_memory_is_not_packed_or_is_dropped_once_packed(tmp_path):
    tree = _tree(tmp_path)
    for name in ("held", "gone", "leaving"):
        _install(tree, name, "a")
    packer, gate, built = Packer(tree, LoadMarks(tree.workers_dir)), threading.Event(), []
    held = OnnxModel(session="unpacked")
    packer.add(held, "held", 1, lambda: gate.wait(10) and "packed held")  # holds the thread until the gate opens
    gone = OnnxModel(session="unpacked")
    packer.add(gone, "gone", 1, lambda: built.append("gone") or "packed gone")
    del gone
    gc.collect()
    gate.set()
    assert packer.wait_idle(timeout=10)
    assert built == [] and held["session"] == "packed held"

    leaving = OnnxModel(session="unpacked")
    refs = []

    def build_and_leave():
        refs.clear()  # the last strong reference goes while it packs
        return object()

    refs.append(leaving)
    packer.add(leaving, "leaving", 1, build_and_leave)
    del leaving
    assert packer.wait_idle(timeout=10)
    assert refs == []


def test_a_copy_replaced_on_disk_before_its_turn_is_not_packed(tmp_path, caplog):
    """A new upload of the same version replaces its disk copy: the record loaded from the old copy keeps its
    session, and nothing is built from the new files for it (the new copy gets a load of its own)."""
    tree = _tree(tmp_path)
    _install(tree, "blocker", "a")
    _install(tree, "m", "a")
    packer, gate, built = Packer(tree, LoadMarks(tree.workers_dir)), threading.Event(), []
    blocker = OnnxModel(session="x")
    packer.add(blocker, "blocker", 1, lambda: gate.wait(10) and "packed")
    model = OnnxModel(session="unpacked")
    packer.add(model, "m", 1, lambda: built.append("m") or "packed from the new copy")
    _install(tree, "m", "b")  # the supervisor installs a new copy of m version 1
    with caplog.at_level(logging.INFO, logger="workers.onnx_prepack"):
        gate.set()
        assert packer.wait_idle(timeout=10)
    assert built == [] and model["session"] == "unpacked"
    assert "model m version 1: its copy on disk changed before it was pre-packed; it is not packed" in caplog.text


def test_a_pack_is_marked_as_a_load_for_the_quarantine(tmp_path):
    """Should pre-packing kill the worker, the master finds the version in the worker's load marks and
    quarantines it, as it does for a load that kills its worker."""
    tree = _tree(tmp_path)
    _install(tree, "m", "a")
    packer, seen = Packer(tree, LoadMarks(tree.workers_dir)), []
    marks = tree.workers_dir / f"{os.getpid()}{MARK_SUFFIX}"
    model = OnnxModel(session="unpacked")
    packer.add(model, "m", 1, lambda: seen.append(json.loads(marks.read_text())) or "packed")
    assert packer.wait_idle(timeout=10)
    assert seen == [[{"name": "m", "version": 1, "fingerprint": "a"}]] and not marks.exists()
    assert model["session"] == "packed"


def test_a_failed_pack_keeps_the_version_serving_and_is_logged(tmp_path, caplog):
    tree = _tree(tmp_path)
    _install(tree, "m", "a")
    packer = Packer(tree, LoadMarks(tree.workers_dir))
    model = OnnxModel(session="unpacked")

    def refuse():
        raise RuntimeError("out of memory")

    with caplog.at_level(logging.WARNING, logger="workers.onnx_prepack"):
        packer.add(model, "m", 1, refuse)
        assert packer.wait_idle(timeout=10)
    assert model["session"] == "unpacked"
    assert "model m version 1: pre-packing failed, it goes on serving unpacked: out of memory" in caplog.text


@pytest.mark.parametrize("entries,providers,cache_memory,want", [
    (SESSION_CONFIG, CPU, None, True),
    (SESSION_CONFIG, CPU, 1 << 30, False),  # a byte budget measures the packed copies in the load
    ({**SESSION_CONFIG, PREPACKING_KEY: "1"}, CPU, None, False),  # the predictor chose: never packed
    ({**SESSION_CONFIG, PREPACKING_KEY: "0"}, CPU, None, False),  # the predictor chose: packed in the load
    (SESSION_CONFIG, ["CUDAExecutionProvider", "CPUExecutionProvider"], None, False),  # two sessions on a GPU
])
def test_when_packing_waits_until_a_version_serves(entries, providers, cache_memory, want):
    assert deferred(entries, providers, cache_memory) is want


def test_a_byte_budget_or_a_trial_load_packs_in_the_load(tmp_path):
    tree = _tree(tmp_path)
    _install(tree, "m", "a", onnx=True)
    version = tree.version_dir("m", 1)
    budget = load_spec(write_api(tmp_path, PREDICTOR, type="onnx", spec_file="budget.yaml", processes_per_replica=1,
                                 models={"dir": str(tree.models), "cache_size": 2,
                                         "cache_memory": "512Mi", "disk_cache_size": 3})).predictor
    plain = load_spec(write_api(tmp_path, PREDICTOR, type="onnx", models={"dir": str(tree.models)})).predictor
    registry = ModelRegistry(tree, load=lambda *args: None)
    for loader in (framework_loader(budget, registry), framework_loader(plain)):  # a budget; a trial load
        with tree.read_lock("m", 1):
            assert not _prepacking_disabled(loader(str(version), "m", 1)["session"])
    with tree.read_lock("m", 1):
        assert _prepacking_disabled(framework_loader(plain, registry)(str(version), "m", 1)["session"])


def test_a_replica_answers_the_same_before_and_after_a_version_is_packed(tmp_path):
    models = tmp_path / "models"
    embedded = _mlp(models / "m" / "1" / "model.onnx", [256, 1024, 1024, 8], seed=5)
    x = np.random.default_rng(6).standard_normal((2, 256)).astype(np.float32)
    want = ort.InferenceSession(str(embedded), providers=CPU).run(None, {"x": x})[0]
    spec = write_api(tmp_path, PREDICTOR, type="onnx", models={"dir": "models"})
    with serving(spec, tmp_path / "state") as r:
        answers = [r.post("/?model=m", json=x.tolist())]
        wait_for(lambda: "model m version 1: pre-packed in" in r.log(), timeout=60, message="the version packed")
        answers.append(r.post("/?model=m", json=x.tolist()))
        for resp in answers:
            assert resp.status_code == 200, resp.text
            np.testing.assert_allclose(resp.json()["y"], want, rtol=1e-5, atol=1e-6)
