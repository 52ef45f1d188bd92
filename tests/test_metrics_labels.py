"""`--metrics-model-labels`: with a big catalogue, per-model series can be turned down to the counters, or off."""

from __future__ import annotations

import json

import pytest

from tests.helpers import write_api
from tests.predictors import json_predictor

PREDICTOR = json_predictor("""
def predict(self, query_params):
    return self.client.get_model(query_params["model"])
""")


@pytest.mark.parametrize("setting", ["all", "counters", "none"])
def test_the_model_label_setting_decides_which_series_name_the_model(replica, tmp_path, setting):
    models = tmp_path / "models"
    for name in ("alpha", "beta"):
        (models / name).mkdir(parents=True)
        (models / name / "model.json").write_text(json.dumps({"name": name}))
    spec = write_api(tmp_path / "api", PREDICTOR, type="python", models={"dir": str(models)})
    r = replica(spec, extra_args=("--metrics-model-labels", setting))
    for name in ("alpha", "beta", "alpha"):
        assert r.post(f"/?model={name}", json={}).status_code == 200
    lines = [ln for ln in r.get("/metrics").text.splitlines() if not ln.startswith("#")]
    counters = [ln for ln in lines if ln.startswith("replica_requests_total{")]
    histograms = [ln for ln in lines if ln.startswith("replica_request_duration_seconds_bucket{")]
    named = [ln for ln in lines if 'model="alpha"' in ln or 'model="beta"' in ln]
    assert ('model="alpha"' in "".join(counters)) == (setting != "none")
    assert ('model="alpha"' in "".join(histograms)) == (setting == "all")
    if setting == "none":
        assert named == [] and any('code="200"' in ln and ln.endswith(" 3.0") for ln in counters), counters
    else:
        assert any('model="alpha"' in ln and ln.endswith(" 2.0") for ln in counters), counters


def test_an_unknown_label_setting_is_refused_at_start(replica, tmp_path):
    spec = write_api(tmp_path / "api", PREDICTOR, type="python", models={"dir": str(tmp_path)})
    r = replica(spec, wait=False, extra_args=("--metrics-model-labels", "some"))
    assert r.wait_exit(30) == 2
    assert "invalid choice: 'some'" in r.log()
