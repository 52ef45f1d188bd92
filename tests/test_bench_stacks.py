"""The limit stacks of the hot-path benchmark, without their servers: the raw WSGI and ASGI apps do the
replica's work and answer what it answers; the report says met, missed or not measured from the numbers it
is given; a peer's virtualenv is reused while its pins stand."""

from __future__ import annotations

import asyncio
import importlib
import io
import sys

import pytest

from scripts.bench_lib import models, servers, stacks, stacks_report


@pytest.fixture
def apps(tmp_path, monkeypatch):
    """The stack apps' modules, imported as the servers import them (scripts/stack_apps on sys.path)."""
    monkeypatch.setenv("BENCH_ONNX_MODEL", str(models.iris_onnx(tmp_path / "model.onnx")))
    monkeypatch.syspath_prepend(str(stacks.APPS))
    for name in ("iris", "wsgi_app", "asgi_app"):
        sys.modules.pop(name, None)
    yield importlib.import_module("wsgi_app"), importlib.import_module("asgi_app")
    for name in ("iris", "wsgi_app", "asgi_app"):
        sys.modules.pop(name, None)


def test_raw_wsgi_app_answers_the_label(apps):
    wsgi, _ = apps
    body = models.SAMPLE.encode()
    seen = {}
    out = wsgi.app({"REQUEST_METHOD": "POST", "PATH_INFO": "/", "CONTENT_LENGTH": str(len(body)),
                    "wsgi.input": io.BytesIO(body)}, lambda status, headers: seen.update(status=status))
    assert seen["status"] == "200 OK" and b"".join(out) == b"setosa"
    wsgi.app({"REQUEST_METHOD": "POST", "PATH_INFO": "/", "CONTENT_LENGTH": "3", "wsgi.input": io.BytesIO(b"{x}")},
             lambda status, headers: seen.update(status=status))
    assert seen["status"].startswith("400")


def test_raw_asgi_app_answers_the_label(apps):
    _, asgi = apps
    sent: list[dict] = []
    chunks = [{"type": "http.request", "body": models.SAMPLE.encode()[:10], "more_body": True},
              {"type": "http.request", "body": models.SAMPLE.encode()[10:]}]

    async def receive():
        return chunks.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(asgi.app({"type": "http", "method": "POST", "path": "/"}, receive, send))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"setosa"


def _summary(rps: list[float], cpu: float = 100.0) -> dict:
    rounds = [{"rps": x, "p50_ms": 1.0, "p99_ms": 2.0, "failed": 0, "requests": int(x), "cpu_us_per_request": cpu}
              for x in rps]
    return {"rps": sorted(rps)[len(rps) // 2], "worst_rps": min(rps), "p50_ms": 1.0, "p99_ms": 2.0, "failed": 0,
            "requests": 1, "cpu_us_per_request": cpu, "rounds": rounds}


def _hot(results_8: dict, results_64: dict, notes: dict | None = None) -> dict:
    return {"results": results_8, "more_connections": {"64": results_64}, "connections": 8, "rounds": 3,
            "duration": 3.0, "processes": [2], "notes": {"stacks": notes or {}},
            "stacks": {"requested": list(stacks.STACKS), "workers": 2, "versions": {}}}


def test_report_says_met_missed_and_not_measured():
    r8 = {"replica p2": _summary([1000, 1000, 900]), "sync floor p2": _summary([950, 800, 1000]),
          "granian p2": _summary([1500, 1500, 1500]), "triton p2": _summary([900, 1100, 950])}
    r64 = {"replica p2": _summary([1000, 1000, 1000]), "sync floor p2": _summary([900, 900, 900]),
           "granian p2": _summary([2500, 2500, 2500], cpu=40)}
    hot = _hot(r8, r64, {"triton": "could not install nvidia-pytriton==0.7.0 (why)"})
    rows = {t: (m, ok) for t, m, ok in stacks_report.targets(hot)}
    assert rows["-c8: replica p2 / granian raw WSGI (median of rounds) >= 0.5x"] == ("0.67x", True)
    # worst round: round 3, 900 / 1000
    assert rows["-c8: replica p2 / plain `gunicorn -w 2` + Flask (worst round) >= 1x"] == ("0.90x", False)
    # per-round ratios 1.11, 0.91, 0.95: median 0.95, not above 1
    assert rows["-c8: replica p2 / Triton (median of rounds) > 1x"] == ("0.95x", False)
    assert rows["-c64: replica p2 / granian raw WSGI (median of rounds) >= 0.5x"] == ("0.40x", False)
    assert rows["-c64: replica p2 / plain `gunicorn -w 2` + Flask (worst round) >= 1x"] == ("1.11x", True)
    assert rows["-c64: replica p2 / Triton (median of rounds) > 1x"] == (
        "not measured: could not install nvidia-pytriton==0.7.0 (why)", None)
    text = stacks_report.section(hot)
    assert "**triton: not measured**: could not install" in text
    assert "Missed at -c64: replica p2 / granian raw WSGI is 0.40x against 0.5x" in text
    assert "| granian p2 | 2,500 | 2,500 | 1.00 | 2.00 | 40 | 0.40x | 0 |" in text


def test_report_is_empty_for_a_run_without_stacks():
    hot = {"results": {}, "connections": 8, "notes": {}, "more_connections": {},
           "stacks": {"requested": []}}
    assert stacks_report.targets(hot) == [] and stacks_report.section(hot) == ""
    assert stacks_report.targets({"results": {}, "connections": 8, "notes": {}}) == []  # an older results.json


def test_a_peer_venv_is_reused_while_its_pins_stand(tmp_path, monkeypatch):
    monkeypatch.setattr(servers, "VENV_DIR", tmp_path)
    py = tmp_path / "peer" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("")
    (tmp_path / "peer" / ".installed").write_text("a==1 b==2")
    monkeypatch.setattr(servers.subprocess, "run", lambda *a, **k: pytest.fail("nothing to install"))
    assert servers.ensure_venv("peer", ["a==1", "b==2"], tmp_path / "log") == (py, "")


def test_a_failed_install_says_what_pip_said(tmp_path, monkeypatch):
    monkeypatch.setattr(servers, "VENV_DIR", tmp_path)
    log = tmp_path / "install.log"

    def pip(cmd, **kw):
        if "venv" in cmd:
            (tmp_path / "peer" / "bin").mkdir(parents=True)
            (tmp_path / "peer" / "bin" / "python").write_text("")
            return
        kw["stdout"].write(b"Collecting x\n    x 1.0 depends on numpy<2.0.0\nERROR: ResolutionImpossible: ...\n")
        kw["stdout"].flush()
        raise servers.subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(servers.subprocess, "run", pip)
    py, why = servers.ensure_venv("peer", ["x==1.0", "numpy==2.4.6"], log)
    assert py is None
    assert "x 1.0 depends on numpy<2.0.0 ERROR: ResolutionImpossible" in why and "x==1.0 numpy==2.4.6" in why
    assert not (tmp_path / "peer" / ".installed").exists()
