"""The spec hand-off to workers (replica/spec_codec.py): JSON that round-trips every field, never a pickle."""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import textwrap

import pytest

from replica.spec import ApiSpec, BatchingSpec, ModelSource, PredictorSpec, load_spec
from replica.spec_codec import SpecDecodeError, decode_value, encode_value, spec_from_json, spec_to_json

CONFIG_YAML = """
plain: {a: 1, b: [1, 2.5, "x", null, true]}
big: 123456789012345678901234567890
floats: [.nan, .inf, -.inf, 1.0e-300, 0.1]
when: 2001-12-14t21:59:43.10-05:00
naive: 2001-12-14 21:59:43
day: 2002-12-14
blob: !!binary aGVsbG8=
members: !!set {x, y}
ordered: !!omap [{one: 1}, {two: 2}]
pairs: !!pairs [{k: 1}, {k: 2}]
7: int key
2.5: float key
true: bool key
null: null key
2020-01-01: date key
"$map": a key that looks like a tag
nested: {"$tuple": [1, 2]}
empty: {}
"""


def _spec(tmp_path, predictor_extra: str, models: str) -> ApiSpec:
    (tmp_path / "predictor.py").write_text("class PythonPredictor:\n    pass\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "m").mkdir()
    config = textwrap.indent(CONFIG_YAML.strip(), "      ")
    (tmp_path / "api.yaml").write_text(f"""
- name: everything
  kind: RealtimeAPI
  predictor:
    type: python
    path: predictor.py
    python_path: lib
    processes_per_replica: 1
    threads_per_process: 8
    log_level: debug
    env: {{GREETING: "hi there", EMPTY: ""}}
{predictor_extra}
{models}
    config:
{config}
  autoscaling: {{max_replica_concurrency: 77}}
""")
    return load_spec(tmp_path / "api.yaml")


def _same(a, b) -> bool:
    """Equal, NaN included, with the same types all the way down (True is not 1, a tuple is not a list)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):
        return list(a) == list(b) and all(type(k) is type(k2) for k, k2 in zip(a, b)) and all(
            _same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_spec_with_every_field_type_round_trips(tmp_path):
    api = _spec(tmp_path, "    server_side_batching: {max_batch_size: 4, batch_interval: 250us}",
                "    models:\n      paths:\n        - {name: a, model_path: m}\n"
                "        - {name: b, model_path: s3://bucket/b/}\n      cache_size: 1\n      disk_cache_size: 2")
    assert api.predictor.server_side_batching == BatchingSpec(4, 0.00025)
    assert isinstance(api.predictor.config["when"], datetime.datetime)
    back = spec_from_json(spec_to_json(api))
    assert back.predictor.config.keys() == api.predictor.config.keys()
    assert _same(back.predictor.config, api.predictor.config)
    # NaN != NaN, so compare the rest with the config set aside
    strip = lambda s: dataclasses.replace(s, predictor=dataclasses.replace(s.predictor, config={}))  # noqa: E731
    assert strip(back) == strip(api)
    assert back.predictor.sources == (ModelSource(str(tmp_path / "m"), "a"), ModelSource("s3://bucket/b/", "b"))
    assert back.predictor.env == {"GREETING": "hi there", "EMPTY": ""}
    assert back.max_replica_concurrency == 77


def test_a_single_model_spec_without_batching_round_trips(tmp_path):
    (tmp_path / "predictor.py").write_text("class ONNXPredictor:\n    pass\n")
    (tmp_path / "api.yaml").write_text("name: one\npredictor: {type: onnx, path: predictor.py, "
                                       "model_path: s3://bucket/one/}\n")
    api = load_spec(tmp_path / "api.yaml")
    assert spec_from_json(spec_to_json(api)) == api


def test_the_encoding_covers_every_dataclass_field(tmp_path):
    """A field added to the spec and forgotten here fails this test, not a worker at start-up."""
    api = load_spec(_write_min(tmp_path))
    doc = json.loads(spec_to_json(api))
    assert set(doc) - {"format"} == {f.name for f in dataclasses.fields(ApiSpec)}
    assert set(doc["predictor"]) == {f.name for f in dataclasses.fields(PredictorSpec)}
    assert set(doc["predictor"]["sources"][0]) == {f.name for f in dataclasses.fields(ModelSource)}


def _write_min(tmp_path):
    (tmp_path / "predictor.py").write_text("class PythonPredictor:\n    pass\n")
    (tmp_path / "api.yaml").write_text("name: x\npredictor: {type: python, path: predictor.py, "
                                       "model_path: s3://b/x/}\n")
    return tmp_path / "api.yaml"


@pytest.mark.parametrize("text", [
    b"\x80\x04\x95 not json",  # a pickle
    '{"format": 1}',
    '{"format": 2, "name": "x"}',
    '[]',
])
def test_anything_but_a_spec_document_is_refused(text):
    with pytest.raises(SpecDecodeError):
        spec_from_json(text)


def test_an_extra_or_missing_field_is_refused(tmp_path):
    doc = json.loads(spec_to_json(load_spec(_write_min(tmp_path))))
    doc["predictor"]["surprise"] = 1
    with pytest.raises(SpecDecodeError):
        spec_from_json(json.dumps(doc))
    del doc["predictor"]["surprise"], doc["predictor"]["env"]
    with pytest.raises(SpecDecodeError):
        spec_from_json(json.dumps(doc))


def test_a_json_object_in_config_data_is_never_mistaken_for_a_tag():
    value = {"$float": "nan", "$map": [], "$bytes": "x"}
    assert decode_value(json.loads(json.dumps(encode_value(value)))) == value
