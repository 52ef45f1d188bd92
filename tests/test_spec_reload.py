"""SIGHUP under pressure: signals that arrive during a reload, and reloads that change where models come from.

The real-replica tests start `replica serve` on local model folders and send real signals; the unit tests
cover the coalescing of reload requests on its own.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from scripts.model_factory import IRIS_BIAS, IRIS_WEIGHTS, write_python_linear
from supervisor.spec_reload import Ask, ReloadRequests, SpecReloader
from tests.helpers import write_api
from tests.replica_proc import ReplicaProcess, wait_for
from tests.test_process_model import TAGGED, X

# -- a storm of SIGHUPs while the spec file changes ----------------------------------------------------------------


def replace_atomically(path: Path, text: str) -> None:
    """What an editor or a config tool does: a reload reads either the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def tag_spec_texts(folder: Path, *tags: str) -> list[str]:
    """The spec file's text for each tag (the spec differs only in `config`, so a prediction says which serves)."""
    write_python_linear(folder / "models" / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    texts = []
    for tag in tags:
        spec = write_api(folder, TAGGED, type="python", name="iris", config={"tag": tag},
                         models={"paths": [{"name": "iris", "model_path": "models/iris"}]})
        texts.append(spec.read_text())
    return texts


def serving_tag(r: ReplicaProcess) -> str:
    return r.post("/", json={"x": X}, timeout=10).json()["tag"]


def reloads_idle(r: ReplicaProcess) -> bool:
    """Every reload that started has ended (each one logs "checking <file>" at its start, "reload done" at its end)."""
    log = r.log()
    return log.count(f"checking {r.spec}") == log.count("reload done")


def sighup_storm(r: ReplicaProcess, texts: list[str], signals: int = 50, gap: float = 0.01) -> str:
    """Send `signals` SIGHUPs, rewriting the spec file before each one with the texts in turn; return the last."""
    text = texts[0]
    for i in range(signals):
        text = texts[i % len(texts)]
        replace_atomically(r.spec, text)
        r.proc.send_signal(signal.SIGHUP)
        time.sleep(gap)  # the storm lasts about as long as one reload, so nearly every signal lands during one
    return text


@pytest.mark.parametrize("signals", [50])
def test_sighup_storm_serves_the_spec_file_of_the_last_signal(tmp_path, replica, signals):
    first, a, b = tag_spec_texts(tmp_path, "first", "a", "b")
    replace_atomically(tmp_path / "api.yaml", first)
    r = replica(tmp_path / "api.yaml")
    assert serving_tag(r) == "first"
    last = sighup_storm(r, [a, b], signals)
    assert last == b
    wait_for(lambda: reloads_idle(r) and serving_tag(r) == "b", timeout=30,
             message="the last spec file served once the reloads end")
    log = r.log()
    assert "send it again" not in log, log[-3000:]
    reloads = log.count(f"checking {r.spec}")
    follow_ups = log.count("read again once it ends")
    assert 1 < reloads < signals and follow_ups == reloads - 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    wait_for(lambda: len(r.worker_pids()) == 1, timeout=30, message="the replaced workers gone")
    assert all(serving_tag(r) == "b" for _ in range(5))


# -- a reload that changes model roots keeps serving the models in both specs ---------------------------------------

CACHING_PREDICTOR = """
import json
import os


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client

    def load_model(self, model_path):
        with open(os.path.join(model_path, "model.json")) as f:
            return json.load(f)

    def predict(self, payload, query_params):
        return self.client.get_model(query_params["model"])
"""


def write_model(root: Path, name: str) -> None:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    (root / name / "1" / "model.json").write_text(f'{{"name": "{name}"}}')


def caching_spec(folder: Path, models: dict) -> Path:
    """One memory slot, so every request for the other model is a miss that asks the supervisor's catalogue."""
    return write_api(folder, CACHING_PREDICTOR, type="python", name="moving",
                     models={**models, "cache_size": 1, "disk_cache_size": 4})


class Alternating:
    """A client asking for each model in turn until stopped, recording every answer that is not a 200."""

    def __init__(self, r: ReplicaProcess, names: list[str]):
        self.r, self.names = r, names
        self.ok = 0
        self.failed: list[tuple[str, int, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            name = self.names[i % len(self.names)]
            i += 1
            try:
                resp = requests.post(self.r.base + "/", params={"model": name}, json={}, timeout=30)
            except requests.RequestException as e:
                self.failed.append((name, 0, str(e)))
                continue
            if resp.status_code == 200 and resp.json().get("name") == name:
                self.ok += 1
            else:
                self.failed.append((name, resp.status_code, resp.text[:200]))

    def __enter__(self) -> "Alternating":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def moved_dir(tmp_path: Path) -> tuple[dict, dict]:
    """`models.dir` moves to a copy of itself that also holds a new model."""
    for name in ("x", "z"):
        write_model(tmp_path / "models-a", name)
    shutil.copytree(tmp_path / "models-a", tmp_path / "models-b")
    write_model(tmp_path / "models-b", "y")
    return {"dir": "models-a"}, {"dir": "models-b"}


def second_root(tmp_path: Path) -> tuple[dict, dict]:
    """`models.paths` gains a second root."""
    for name in ("x", "z", "y"):
        write_model(tmp_path / "models", name)
    paths = [{"name": n, "model_path": f"models/{n}"} for n in ("x", "z")]
    return {"paths": paths}, {"paths": [*paths, {"name": "y", "model_path": "models/y"}]}


@pytest.mark.parametrize("change", [moved_dir, second_root])
def test_sighup_changing_model_roots_serves_common_models_throughout(tmp_path, replica, change):
    before, after = change(tmp_path)
    spec = caching_spec(tmp_path, before)
    r = replica(spec, poll_interval=1.0)
    with Alternating(r, ["x", "z"]) as load:
        wait_for(lambda: load.ok > 10, timeout=30, message="the client served")
        caching_spec(tmp_path, after)
        r.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload done" in r.log(), timeout=60, message="the reload done")
        ok = load.ok
        wait_for(lambda: load.ok > ok + 10, timeout=30, message="the client served after the reload")
    assert load.failed == [], (load.failed[:5], r.log()[-3000:])
    assert r.post("/", params={"model": "y"}, json={}).json() == {"name": "y"}


# -- the coalescing on its own ------------------------------------------------------------------------------------

def test_requests_during_a_reload_collapse_into_one_follow_up():
    q = ReloadRequests()
    assert q.request() is Ask.START
    assert q.request() is Ask.QUEUED
    assert all(q.request() is Ask.COALESCED for _ in range(48))
    assert q.finished() is True  # the follow-up runs now ...
    assert q.running
    assert q.finished() is False  # ... and nothing after it
    assert not q.running
    assert q.request() is Ask.START  # idle again: the next signal starts a reload at once


def test_a_request_during_the_follow_up_queues_another():
    q = ReloadRequests()
    q.request(), q.request()
    assert q.finished() is True
    assert q.request() is Ask.QUEUED  # the follow-up already read the file: this signal needs one more
    assert q.finished() is True
    assert q.finished() is False


class CountingReloader(SpecReloader):
    """A SpecReloader whose reload only records that it ran, holding until the test lets it end."""

    def __init__(self):
        api = type("Api", (), {"spec_file": "api.yaml"})()
        quiet = type("Quiet", (), {"notify": lambda self, message: None})()
        super().__init__(api, None, None, None, quiet, threading.Event(), lambda: None)
        self.runs = 0
        self.release = threading.Semaphore(0)
        self.started = threading.Semaphore(0)

    def _reload_spec(self) -> None:
        self.runs += 1
        self.started.release()
        assert self.release.acquire(timeout=10)
        if self.runs == 1:
            raise RuntimeError("an unexpected bug in one reload")  # must not wedge the ones after it


def test_fifty_signals_during_a_reload_make_exactly_one_more(caplog):
    caplog.set_level(logging.INFO, logger="supervisor.spec_reload")
    reloader = CountingReloader()
    reloader.request()
    assert reloader.started.acquire(timeout=10)
    for _ in range(49):
        reloader.request()
    reloader.release.release()  # the first reload ends (with an error); the follow-up starts
    assert reloader.started.acquire(timeout=10)
    reloader.release.release()
    reloader._thread.join(timeout=10)
    assert not reloader._thread.is_alive() and reloader.runs == 2
    assert not reloader.requests.running
    assert caplog.text.count("read again once it ends") == 1
    assert "reload failed unexpectedly" in caplog.text
    reloader.request()  # idle: a new signal starts a new reload
    assert reloader.started.acquire(timeout=10)
    reloader.release.release()
    reloader._thread.join(timeout=10)
    assert reloader.runs == 3
