"""A miss as a pipeline: the version it evicts is unloaded while the new one is fetched, and the new one's load
waits until the evicted one has left memory (workers/caching.py)."""

from __future__ import annotations

import json
import threading

import requests

from replica.disktree import DiskTree
from tests.helpers import write_api
from tests.replica_proc import wait_for

# The unload hook blocks until the test releases it, and each load writes down which unloads had finished.
PREDICTOR = """
import json
import time
from pathlib import Path


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.marks = Path(config["marks"])

    def load_model(self, model_path):
        model = json.loads(Path(model_path, "model.json").read_text())
        done = sorted(p.name for p in self.marks.glob("unloaded-*"))
        (self.marks / f"load-{model['name']}").write_text(json.dumps(done))
        return model

    def unload_model(self, model):
        (self.marks / f"unloading-{model['name']}").touch()
        deadline = time.monotonic() + 60
        while not (self.marks / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        (self.marks / f"unloaded-{model['name']}").touch()

    def predict(self, payload, query_params):
        return self.client.get_model(query_params["model"])
"""


def test_the_evicted_version_unloads_while_the_new_one_is_fetched(replica, tmp_path):
    models, marks = tmp_path / "models", tmp_path / "marks"
    marks.mkdir()
    for name in ("a", "b"):
        (models / name).mkdir(parents=True)
        (models / name / "model.json").write_text(json.dumps({"name": name}))
    spec = write_api(tmp_path / "api", PREDICTOR, type="python", config={"marks": str(marks)},
                     models={"dir": str(models), "cache_size": 1, "disk_cache_size": 2})
    r = replica(spec)
    assert requests.post(r.base + "/", params={"model": "a"}, json={}, timeout=30).json() == {"name": "a"}
    answer: dict = {}
    miss = threading.Thread(target=lambda: answer.update(
        resp=requests.post(r.base + "/", params={"model": "b"}, json={}, timeout=60)))
    miss.start()
    try:
        wait_for((marks / "unloading-a").exists, timeout=30, message="a's unload under way")
        # a's unload is still blocked, and b is fetched meanwhile, but not loaded.
        tree = DiskTree(r.state_dir)
        wait_for(lambda: tree.manifest("b", 1) is not None, timeout=30, message="b on disk while a unloads")
        assert not (marks / "load-b").exists()
    finally:
        (marks / "release").touch()
        miss.join(60)
    assert answer["resp"].status_code == 200 and answer["resp"].json() == {"name": "b"}
    assert json.loads((marks / "load-b").read_text()) == ["unloaded-a"]
