"""A warm restart with model caching: the versions that were in memory when the replica stopped are loaded
again right after it is ready, together, from the disk copies (nothing is downloaded), before any request."""

from __future__ import annotations

import json
import re

import requests

from tests.helpers import write_api
from tests.replica_proc import wait_for

# Each load notes when it started and ended, to show the three ran together.
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
        started = time.time()
        time.sleep(1.0)  # a model that takes a while to load
        with open(self.marks / "loads.jsonl", "a") as f:
            f.write(json.dumps({"name": model["name"], "start": started, "end": time.time()}) + "\\n")
        return model

    def predict(self, payload, query_params):
        return self.client.get_model(query_params["model"])
"""


def _in_memory(r) -> set[str]:
    return {m["name"] for m in r.get("/v1/models").json()["models"]
            for v in m["model_version_status"] if v["memory"]}


def _loads(marks) -> list[dict]:
    path = marks / "loads.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_versions_in_memory_come_back_after_a_restart_without_download(replica, tmp_path):
    models, marks, state = tmp_path / "models", tmp_path / "marks", tmp_path / "state"
    marks.mkdir()
    for name in ("a", "b", "c", "d"):
        (models / name).mkdir(parents=True)
        (models / name / "model.json").write_text(json.dumps({"name": name}))
    spec = write_api(tmp_path / "api", PREDICTOR, type="python", config={"marks": str(marks)},
                     models={"dir": str(models), "cache_size": 3, "disk_cache_size": 4})
    first = replica(spec, state_dir=state)
    for name in ("d", "a", "b", "c"):  # d is evicted by c: on disk, not in memory
        assert requests.post(first.base + "/", params={"model": name}, json={}, timeout=60).json() == {"name": name}
    assert _in_memory(first) == {"a", "b", "c"}
    first.stop()
    (marks / "loads.jsonl").unlink()

    second = replica(spec, state_dir=state)
    wait_for(lambda: _in_memory(second) == {"a", "b", "c"}, timeout=30, message="a, b and c back in memory")
    loads = _loads(marks)
    assert sorted(x["name"] for x in loads) == ["a", "b", "c"]
    assert max(x["start"] for x in loads) < min(x["end"] for x in loads), loads  # they overlapped
    metrics = second.get("/metrics").text
    assert re.search(r"^replica_upstream_bytes_downloaded_total 0\.0$", metrics, re.M), "something was downloaded"
    assert "bringing back into memory" in second.log()
    # Served from memory: no further load.
    for name in ("a", "b", "c"):
        assert requests.post(second.base + "/", params={"model": name}, json={}, timeout=30).json() == {"name": name}
    assert len(_loads(marks)) == 3
