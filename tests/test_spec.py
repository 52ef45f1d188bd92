"""The API spec (DESIGN.md sections 1 and 2), through `replica.spec.load_spec` on real YAML files."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from replica import cgroup
from replica.spec import BatchingSpec, SpecError, load_spec, parse_duration


@pytest.fixture
def write(tmp_path):
    """write(spec) -> path of a spec file (a dict/list is dumped as YAML, a str written as is).

    A predictor.py always exists beside it, so only the rule under test can fail."""
    (tmp_path / "predictor.py").write_text("class PythonPredictor:\n    pass\n")

    def _write(spec, name="api.yaml") -> Path:
        path = tmp_path / name
        path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
        return path

    return _write


def api(**predictor) -> dict:
    pred = {"type": "python", "path": "predictor.py"}
    pred.update(predictor)
    return {"name": "iris", "kind": "RealtimeAPI", "predictor": pred}


def problems_of(path, **kw) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_spec(path, **kw)
    problems = exc.value.problems
    assert problems
    for p in problems:  # every problem also appears in the exception's text
        assert p in str(exc.value)
    return problems


def one_problem(path, key: str, *fragments: str, **kw) -> str:
    """Exactly one problem, which starts with the key path and holds every fragment (the fix)."""
    problems = problems_of(path, **kw)
    assert len(problems) == 1, problems
    p = problems[0]
    assert p == key or p.startswith(key + ":") or p.startswith(key + " "), (key, p)
    for f in fragments:
        assert f in p, (f, p)
    return p


# -- valid specs --------------------------------------------------------------------------------------------

def test_minimal_python_spec_without_models(write):
    spec = load_spec(write(api()))
    assert spec.name == "iris"
    assert spec.kind == "RealtimeAPI"
    p = spec.predictor
    assert p.type == "python"
    assert p.path == (write(api()).parent / "predictor.py").resolve()
    assert p.sources == ()
    assert p.processes_per_replica == 1 and p.threads_per_process == 1
    assert p.config == {} and not p.caching and p.single_model is None


def test_single_mapping_and_one_item_list_both_work(write):
    assert load_spec(write(api())).name == "iris"
    assert load_spec(write([api()])).name == "iris"


def test_kind_defaults_to_realtime_api(write):
    spec = api()
    del spec["kind"]
    assert load_spec(write(spec)).kind == "RealtimeAPI"


def test_full_cortex_spec_with_cluster_only_keys_is_accepted(write, tmp_path):
    text = textwrap.dedent("""
        - name: iris-classifier
          kind: RealtimeAPI
          predictor:
            type: tensorflow
            path: predictor.py
            model_path: s3://cortex-examples/tensorflow/iris-classifier/nn
            signature_key: predict
            processes_per_replica: 4
            threads_per_process: 8
            config: {bucket: cortex-examples, key: labels.json}
            env: {LOG_LEVEL: debug, N: 3}
            image: cortexlabs/tensorflow-predictor:0.22.0
            tensorflow_serving_image: cortexlabs/tensorflow-serving-cpu:0.22.0
            log_level: info
            shm_size: 1Gi
            server_side_batching: {max_batch_size: 8, batch_interval: 0.1s}
          compute: {cpu: 1, gpu: 0, mem: 2G}
          autoscaling: {min_replicas: 1, max_replicas: 10}
          networking: {endpoint: /iris, api_gateway: public}
          update_strategy: {max_surge: 25%, max_unavailable: 25%}
          monitoring: {model_type: classification}
    """)
    spec = load_spec(write(text))
    p = spec.predictor
    assert p.type == "tensorflow"
    assert p.signature_key == "predict"
    assert p.processes_per_replica == 4 and p.threads_per_process == 8
    assert p.config == {"bucket": "cortex-examples", "key": "labels.json"}
    assert p.env == {"LOG_LEVEL": "debug", "N": "3"}  # env values become strings
    assert p.log_level == "info"
    assert p.single_model == "iris-classifier"
    assert len(p.sources) == 1
    src = p.sources[0]
    assert src.url == "s3://cortex-examples/tensorflow/iris-classifier/nn/"
    assert src.name == "iris-classifier" and not src.is_dir
    assert src.signature_key == "predict"
    assert p.server_side_batching == BatchingSpec(max_batch_size=8, batch_interval=0.1)


def test_models_paths_entries_become_named_sources(write):
    spec = load_spec(write(api(type="tensorflow", models={
        "signature_key": "serving_default",
        "paths": [
            {"name": "a", "model_path": "s3://b/m/a"},
            {"name": "B_2", "model_path": "s3://b/m/b/", "signature_key": "predict"},
        ],
    })))
    p = spec.predictor
    assert [(s.name, s.url, s.signature_key) for s in p.sources] == [
        ("a", "s3://b/m/a/", "serving_default"),
        ("B_2", "s3://b/m/b/", "predict"),
    ]
    assert p.single_model is None


def test_models_dir_is_one_dir_source(write, tmp_path):
    spec = load_spec(write(api(type="onnx", models={"dir": "s3://bucket/models"})))
    (src,) = spec.predictor.sources
    assert src.is_dir and src.name is None and src.url == "s3://bucket/models/"


# -- several APIs in a file ---------------------------------------------------------------------------------

def test_several_apis_need_api_flag(write):
    path = write([api(), {**api(), "name": "other"}])
    p = one_problem(path, "the file holds 2 APIs")
    assert "--api" in p and "iris" in p and "other" in p
    assert load_spec(path, api_name="other").name == "other"
    assert load_spec(path, api_name="iris").name == "iris"


def test_unknown_api_name_lists_the_apis(write):
    path = write([api(), {**api(), "name": "other"}])
    p = one_problem(path, "--api nope", "iris", "other", api_name="nope")
    assert "no API of that name" in p


def test_key_paths_in_a_list_are_indexed(write):
    path = write([{**api(), "name": "other"}, api(processes_per_replica=0)])
    one_problem(path, "[1].predictor.processes_per_replica", "between 1 and 100", api_name="iris")


# -- file-level errors ---------------------------------------------------------------------------------------

def test_missing_spec_file(tmp_path):
    one_problem(tmp_path / "nope.yaml", "the spec file does not exist")


def test_invalid_yaml(write):
    p = one_problem(write("- name: [unclosed\n"), "not valid YAML")
    assert p


@pytest.mark.parametrize("text", ["", "[]", "- 3\n", "just a string\n"])
def test_file_must_hold_api_mappings(write, text):
    one_problem(write(text), "the file must hold an API mapping")


# -- api-level rules ------------------------------------------------------------------------------------------

def test_name_required(write):
    spec = api()
    del spec["name"]
    one_problem(write(spec), "name", "required", "lowercase")


@pytest.mark.parametrize("name", ["Iris", "iris_1", "-iris", "iris-", "ir is", 12, "iris\n"])
def test_bad_api_name(write, name):
    one_problem(write({**api(), "name": name}), "name", "not valid", "lowercase letters, digits and '-'")


def test_kind_must_be_realtime(write):
    one_problem(write({**api(), "kind": "BatchAPI"}), "kind", "RealtimeAPI")


def test_predictor_required(write):
    one_problem(write({"name": "iris"}), "predictor", "required")


def test_unknown_api_key_suggests(write):
    one_problem(write({**api(), "predicter": {}}), "predicter", "unknown key", "did you mean 'predictor'?")


def test_unknown_key_without_close_match_lists_allowed(write):
    p = one_problem(write({**api(), "zzzzzz": 1}), "zzzzzz", "unknown key", "allowed:")
    assert "predictor" in p


@pytest.mark.parametrize("key, wanted", [
    ("procesess_per_replica", "processes_per_replica"),
    ("thread_per_process", "threads_per_process"),
    ("modelpath", "model_path"),
    ("configs", "config"),
])
def test_unknown_predictor_key_suggests(write, key, wanted):
    one_problem(write(api(**{key: 1})), f"predictor.{key}", "unknown key", f"did you mean '{wanted}'?")


def test_unknown_models_key_suggests(write):
    one_problem(write(api(models={"dir": "s3://b/m", "cache_sise": 2})), "predictor.models.cache_sise",
                "did you mean 'cache_size'?")


def test_unknown_paths_entry_key_suggests(write):
    one_problem(write(api(models={"paths": [{"name": "a", "model_path": "s3://b/a", "modelpath": "x"}]})),
                "predictor.models.paths[0].modelpath", "did you mean 'model_path'?")


# -- predictor type and path ------------------------------------------------------------------------------

@pytest.mark.parametrize("ptype", [None, "pytorch", "Python"])
def test_bad_type(write, ptype):
    spec = api()
    spec["predictor"]["type"] = ptype
    one_problem(write(spec), "predictor.type", "python, tensorflow, onnx")


def test_path_required(write):
    spec = api()
    del spec["predictor"]["path"]
    one_problem(write(spec), "predictor.path", "required", ".py")


def test_path_must_exist(write):
    one_problem(write(api(path="missing.py")), "predictor.path", "does not exist")


def test_path_must_be_py(write, tmp_path):
    (tmp_path / "predictor.txt").write_text("")
    one_problem(write(api(path="predictor.txt")), "predictor.path", "must be a .py file")


def test_path_is_relative_to_the_spec_folder(tmp_path, monkeypatch):
    sub = tmp_path / "deploy"
    sub.mkdir()
    (sub / "pred.py").write_text("")
    (sub / "api.yaml").write_text(yaml.safe_dump(api(path="pred.py")))
    monkeypatch.chdir(tmp_path)  # the working directory does not matter
    assert load_spec("deploy/api.yaml").predictor.path == (sub / "pred.py").resolve()


# -- model_path xor models, paths xor dir ---------------------------------------------------------------

def test_model_path_and_models_both(write):
    one_problem(write(api(model_path="s3://b/m", models={"dir": "s3://b/d"})), "predictor",
                "either model_path or models, not both")


def test_paths_and_dir_both(write):
    one_problem(write(api(models={"dir": "s3://b/d", "paths": [{"name": "a", "model_path": "s3://b/a"}]})),
                "predictor.models", "exactly one of paths", "dir")


def test_neither_paths_nor_dir(write):
    one_problem(write(api(models={"cache_size": 1, "disk_cache_size": 1})), "predictor.models",
                "exactly one of paths", "dir")


def test_models_must_be_mapping(write):
    problems = problems_of(write(api(models=["s3://b/a"])))
    assert any(p.startswith("predictor.models: must be a mapping") for p in problems), problems


@pytest.mark.parametrize("ptype", ["tensorflow", "onnx"])
def test_tensorflow_and_onnx_need_models(write, ptype):
    one_problem(write(api(type=ptype)), "predictor", f"the {ptype} predictor needs models", "model_path",
                "models.paths", "models.dir")


def test_python_without_models_is_fine(write):
    assert load_spec(write(api())).predictor.sources == ()


@pytest.mark.parametrize("paths", [[], "s3://b/a", None])
def test_paths_must_be_nonempty_list(write, paths):
    if paths is None:  # paths: null counts as unset -> exactly-one rule
        one_problem(write(api(models={"paths": None})), "predictor.models", "exactly one of paths")
    else:
        one_problem(write(api(models={"paths": paths})), "predictor.models.paths", "non-empty list")


def test_paths_entry_needs_model_path(write):
    one_problem(write(api(models={"paths": [{"name": "a"}]})), "predictor.models.paths[0].model_path",
                "required")


def test_paths_entry_must_be_mapping(write):
    one_problem(write(api(models={"paths": ["s3://b/a"]})), "predictor.models.paths[0]", "must be a mapping")


# -- model names ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "A_b-9", "007", "MODEL"])
def test_good_model_names(write, name):
    spec = load_spec(write(api(models={"paths": [{"name": name, "model_path": "s3://b/a"}]})))
    assert spec.predictor.sources[0].name == name


@pytest.mark.parametrize("name", ["bad name", "a/b", "..", "a.b", "", None, 3, "é", "a\n"])
def test_bad_model_names(write, name):
    one_problem(write(api(models={"paths": [{"name": name, "model_path": "s3://b/a"}]})),
                "predictor.models.paths[0].name", "not a valid model name", "letters, digits, '_' and '-'")


def test_model_names_unique(write):
    one_problem(write(api(models={"paths": [
        {"name": "a", "model_path": "s3://b/a"},
        {"name": "b", "model_path": "s3://b/b"},
        {"name": "a", "model_path": "s3://b/c"},
    ]})), "predictor.models.paths[2].name", "'a' is used twice", "unique")


# -- caching ---------------------------------------------------------------------------------------------

def test_cache_sizes(write):
    p = load_spec(write(api(models={"dir": "s3://b/d", "cache_size": 2, "disk_cache_size": 5}))).predictor
    assert (p.cache_size, p.disk_cache_size, p.caching) == (2, 5, True)


def test_cache_equal_sizes_ok(write):
    p = load_spec(write(api(models={"dir": "s3://b/d", "cache_size": 3, "disk_cache_size": 3}))).predictor
    assert p.cache_size == p.disk_cache_size == 3


def test_no_cache_fields_means_no_caching(write):
    p = load_spec(write(api(models={"dir": "s3://b/d"}))).predictor
    assert (p.cache_size, p.disk_cache_size, p.caching) == (None, None, False)


def test_cache_size_without_disk_cache_size(write):
    one_problem(write(api(models={"dir": "s3://b/d", "cache_size": 2})), "predictor.models.disk_cache_size",
                "model caching needs disk_cache_size", "add disk_cache_size")


def test_disk_cache_size_alone_needs_a_memory_limit_to_derive_the_budget_from(write, monkeypatch):
    monkeypatch.setattr(cgroup, "memory_limit", lambda: None)
    one_problem(write(api(models={"dir": "s3://b/d", "disk_cache_size": 2})), "predictor.models",
                "disk_cache_size alone needs a memory limit", "add cache_size", "or cache_memory")
    monkeypatch.setattr(cgroup, "memory_limit", lambda: 10 << 30)
    p = load_spec(write(api(models={"dir": "s3://b/d", "disk_cache_size": 7}))).predictor
    assert p.caching and (p.cache_size, p.cache_memory) == (7, int(0.6 * (10 << 30)))


@pytest.mark.parametrize("quantity, size", [("512Mi", 512 << 20), ("4Gi", 4 << 30), ("1.5G", 1_500_000_000),
                                            (300_000_000, 300_000_000), ("300M", 300_000_000)])
def test_cache_memory_is_a_quantity_and_the_disk_bound_counts_alone(write, monkeypatch, quantity, size):
    monkeypatch.setattr(cgroup, "memory_limit", lambda: None)
    p = load_spec(write(api(models={"dir": "s3://b/d", "cache_memory": quantity, "disk_cache_size": 9}))).predictor
    assert p.caching and (p.cache_memory, p.cache_size, p.disk_cache_size) == (size, 9, 9)
    both = load_spec(write(api(models={"dir": "s3://b/d", "cache_memory": quantity, "cache_size": 2,
                                       "disk_cache_size": 9}))).predictor
    assert (both.cache_memory, both.cache_size) == (size, 2)


@pytest.mark.parametrize("quantity", ["lots", "12 bananas", "-1Gi", "0", True, "1Qi"])
def test_cache_memory_that_is_not_a_quantity(write, quantity):
    one_problem(write(api(models={"dir": "s3://b/d", "cache_memory": quantity, "disk_cache_size": 2})),
                "predictor.models.cache_memory", "")


def test_cache_memory_over_the_memory_limit(write, monkeypatch):
    monkeypatch.setattr(cgroup, "memory_limit", lambda: 1 << 30)
    one_problem(write(api(models={"dir": "s3://b/d", "cache_memory": "2Gi", "disk_cache_size": 2})),
                "predictor.models.cache_memory", "2.0 GiB is more than this machine's memory limit (1.0 GiB")


@pytest.mark.parametrize("key", ["cache_size", "disk_cache_size"])
@pytest.mark.parametrize("value", [0, -1])
def test_cache_sizes_positive(write, key, value):
    models = {"dir": "s3://b/d", "cache_size": 1, "disk_cache_size": 1, key: value}
    one_problem(write(api(models=models)), f"predictor.models.{key}", ">= 1")


@pytest.mark.parametrize("value", ["5", 2.5, True])
def test_cache_sizes_integers(write, value):
    one_problem(write(api(models={"dir": "s3://b/d", "cache_size": value, "disk_cache_size": 5})),
                "predictor.models.cache_size", "must be an integer")


def test_cache_not_bigger_than_disk(write):
    one_problem(write(api(models={"dir": "s3://b/d", "cache_size": 5, "disk_cache_size": 2})),
                "predictor.models.disk_cache_size", ">= cache_size")


def test_caching_with_several_processes_refused_with_reason(write):
    p = one_problem(write(api(processes_per_replica=2, models={"dir": "s3://b/d", "cache_size": 1,
                                                               "disk_cache_size": 2})),
                    "predictor.models.cache_size", "processes_per_replica: 1", "got 2")
    assert "each worker process would hold its own cache" in p  # says why
    assert "Remove cache_size/disk_cache_size" in p  # and the fix


def test_several_processes_without_caching_is_fine(write):
    p = load_spec(write(api(processes_per_replica=4, models={"dir": "s3://b/d"}))).predictor
    assert p.processes_per_replica == 4 and not p.caching


@pytest.mark.parametrize("key", ["cache_size", "disk_cache_size"])
def test_caching_only_through_models(write, key):
    p = one_problem(write(api(model_path="s3://b/m", **{key: 2})), f"predictor.{key}", "unknown key")
    assert p


# -- signature_key ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ptype", ["python", "onnx"])
def test_signature_key_only_tensorflow_predictor_level(write, ptype):
    one_problem(write(api(type=ptype, model_path="s3://b/m", signature_key="predict")),
                "predictor.signature_key", "only the tensorflow predictor", "remove it")


@pytest.mark.parametrize("ptype", ["python", "onnx"])
def test_signature_key_only_tensorflow_models_level(write, ptype):
    one_problem(write(api(type=ptype, models={"dir": "s3://b/d", "signature_key": "predict"})),
                "predictor.models.signature_key", "only the tensorflow predictor")


@pytest.mark.parametrize("ptype", ["python", "onnx"])
def test_signature_key_only_tensorflow_paths_level(write, ptype):
    one_problem(write(api(type=ptype, models={"paths": [{"name": "a", "model_path": "s3://b/a",
                                                         "signature_key": "predict"}]})),
                "predictor.models.paths[0].signature_key", "only the tensorflow predictor")


def test_signature_key_tensorflow_ok(write):
    p = load_spec(write(api(type="tensorflow", models={"dir": "s3://b/d", "signature_key": "sk"}))).predictor
    assert p.sources[0].signature_key == "sk"


# -- processes and threads ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 100])
def test_processes_in_range(write, n):
    assert load_spec(write(api(processes_per_replica=n))).predictor.processes_per_replica == n


@pytest.mark.parametrize("n", [0, -1, 101])
def test_processes_out_of_range(write, n):
    one_problem(write(api(processes_per_replica=n)), "predictor.processes_per_replica", "between 1 and 100",
                f"got {n}")


@pytest.mark.parametrize("n", ["2", 1.5, True, None])
def test_processes_not_integer(write, n):
    one_problem(write(api(processes_per_replica=n)), "predictor.processes_per_replica", "must be an integer")


@pytest.mark.parametrize("n", [1, 64, 1000])
def test_threads_ok(write, n):
    assert load_spec(write(api(threads_per_process=n))).predictor.threads_per_process == n


@pytest.mark.parametrize("n", [0, -3])
def test_threads_at_least_one(write, n):
    one_problem(write(api(threads_per_process=n)), "predictor.threads_per_process", ">= 1")


# -- config, env, python_path -----------------------------------------------------------------------------

def test_config_must_be_mapping(write):
    one_problem(write(api(config=[1, 2])), "predictor.config", "must be a mapping")


def test_config_null_is_empty(write):
    assert load_spec(write(api(config=None))).predictor.config == {}


def test_env_must_be_mapping(write):
    one_problem(write(api(env=["A=1"])), "predictor.env", "mapping")


@pytest.mark.parametrize("name", ["CORTEX_VERSION", "REPLICA_STATE_DIR", "PROMETHEUS_MULTIPROC_DIR"])
def test_env_refuses_reserved_names(write, name):
    # Cortex refused CORTEX_ names; REPLICA_ names are the replica's own settings for its workers.
    one_problem(write(api(env={"OK": 1, name: "x"})), f"predictor.env.{name}", "reserved", "rename")


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_log_level(write, level):
    assert load_spec(write(api(log_level=level))).predictor.log_level == level


def test_log_level_unset_is_none(write):
    assert load_spec(write(api())).predictor.log_level is None


@pytest.mark.parametrize("level", ["DEBUG", "verbose", 10])
def test_log_level_must_be_one_of_four(write, level):
    one_problem(write(api(log_level=level)), "predictor.log_level", "debug, info, warning, error")


def test_python_path(write, tmp_path):
    (tmp_path / "lib").mkdir()
    assert load_spec(write(api(python_path="lib"))).predictor.python_path == (tmp_path / "lib").resolve()
    one_problem(write(api(python_path="nolib")), "predictor.python_path", "not a directory")


# -- model paths: local and s3 ------------------------------------------------------------------------------

def test_relative_model_path_resolved_against_spec_folder(tmp_path, monkeypatch):
    sub = tmp_path / "deploy"
    sub.mkdir()
    (sub / "predictor.py").write_text("")
    (sub / "api.yaml").write_text(yaml.safe_dump(api(model_path="models/iris")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (src,) = load_spec(sub / "api.yaml").predictor.sources
    assert src.url == str((sub / "models" / "iris").resolve())
    assert src.name == "iris"


def test_relative_paths_and_dir_resolved_against_spec_folder(write, tmp_path):
    p = load_spec(write(api(models={"paths": [{"name": "a", "model_path": "../up/a"}]}))).predictor
    assert p.sources[0].url == str((tmp_path.parent / "up" / "a").resolve())
    p = load_spec(write(api(models={"dir": "./d"}))).predictor
    assert p.sources[0].url == str((tmp_path / "d").resolve())


def test_absolute_local_model_path_kept(write, tmp_path):
    target = tmp_path / "abs" / "m"
    (src,) = load_spec(write(api(model_path=str(target)))).predictor.sources
    assert src.url == str(target.resolve())


@pytest.mark.parametrize("given, url", [
    ("s3://bucket/models/iris", "s3://bucket/models/iris/"),
    ("s3://bucket/models/iris/", "s3://bucket/models/iris/"),
    ("s3://bucket/models/iris//", "s3://bucket/models/iris/"),
    ("s3://bucket", "s3://bucket/"),
    ("s3://bucket/", "s3://bucket/"),
    ("s3://bucket//x", "s3://bucket/x/"),
])
def test_s3_url_normalised(write, given, url):
    (src,) = load_spec(write(api(model_path=given))).predictor.sources
    assert src.url == url


@pytest.mark.parametrize("given, fragment", [
    ("s3://", "no bucket"),
    ("s3:///prefix", "no bucket"),
    ("s3://bucket/a/../b", "'..'"),
    ("gs://bucket/a", "unsupported scheme"),
    ("https://example.com/m", "unsupported scheme"),
    ("", "s3://bucket/prefix path or a local directory"),
    (3, "s3://bucket/prefix path or a local directory"),
])
def test_bad_model_urls(write, given, fragment):
    one_problem(write(api(model_path=given)), "predictor.model_path", fragment)


def test_bad_url_in_paths_and_dir(write):
    one_problem(write(api(models={"dir": "gs://x/y"})), "predictor.models.dir", "unsupported scheme")
    one_problem(write(api(models={"paths": [{"name": "a", "model_path": "s3://"}]})),
                "predictor.models.paths[0].model_path", "no bucket")


# -- all problems together --------------------------------------------------------------------------------

def test_all_problems_reported_together(write):
    spec = {
        "name": "Bad_Name",
        "kind": "BatchAPI",
        "computee": {},
        "predictor": {
            "type": "onnx",
            "path": "missing.py",
            "processes_per_replica": 2,
            "threads_per_process": 0,
            "signature_key": "x",
            "modles": {},
            "models": {
                "paths": [
                    {"name": "bad name", "model_path": "gs://x"},
                    {"name": "ok", "model_path": "s3://b/ok"},
                    {"name": "ok", "model_path": "s3://b/ok2"},
                ],
                "cache_size": 3,
                "disk_cache_size": 1,
            },
        },
    }
    problems = problems_of(write(spec))
    keys = [p.split(":", 1)[0] for p in problems]
    for expected in [
        "name", "kind", "computee", "predictor.modles", "predictor.path", "predictor.threads_per_process",
        "predictor.signature_key", "predictor.models.paths[0].name", "predictor.models.paths[0].model_path",
        "predictor.models.paths[2].name", "predictor.models.disk_cache_size", "predictor.models.cache_size",
    ]:
        assert expected in keys, (expected, problems)
    assert any("did you mean 'compute'" in p for p in problems)
    assert any("did you mean 'models'" in p for p in problems)
    text = str(pytest.raises(SpecError, load_spec, write(spec)).value)
    assert text.count("\n  - ") == len(problems)


# -- autoscaling.max_replica_concurrency ------------------------------------------------------------------------

def test_max_replica_concurrency_defaults_to_cortex_1024(write):
    assert load_spec(write(api())).max_replica_concurrency == 1024
    assert load_spec(write({**api(), "autoscaling": {"min_replicas": 2}})).max_replica_concurrency == 1024


def test_max_replica_concurrency_is_read(write):
    spec = {**api(), "autoscaling": {"max_replica_concurrency": 8, "target_replica_concurrency": 2}}
    assert load_spec(write(spec)).max_replica_concurrency == 8


@pytest.mark.parametrize("value, fragment", [(0, "between 1 and 30000"), (30001, "between 1 and 30000"),
                                             ("many", "must be an integer"), (True, "must be an integer")])
def test_max_replica_concurrency_must_be_in_cortex_range(write, value, fragment):
    one_problem(write({**api(), "autoscaling": {"max_replica_concurrency": value}}),
                "autoscaling.max_replica_concurrency", fragment)


def test_target_concurrency_above_max_is_refused(write):
    one_problem(write({**api(), "autoscaling": {"max_replica_concurrency": 4, "target_replica_concurrency": 5}}),
                "autoscaling.target_replica_concurrency", "above max_replica_concurrency (4)")


def test_autoscaling_must_be_a_mapping_with_known_keys(write):
    one_problem(write({**api(), "autoscaling": 5}), "autoscaling", "must be a mapping")
    one_problem(write({**api(), "autoscaling": {"max_replica_concurency": 5}}), "autoscaling.max_replica_concurency",
                "did you mean 'max_replica_concurrency'")


# -- server_side_batching ------------------------------------------------------------------------------------

@pytest.mark.parametrize("interval, seconds", [
    ("0.1s", 0.1), ("100ms", 0.1), ("250us", 0.00025), ("250\u00b5s", 0.00025), ("1m30s", 90.0), (".5s", 0.5),
    ("1.s", 1.0), ("2h", 7200.0), ("5000000ns", 0.005),
])
def test_batching_interval_is_a_go_duration(write, interval, seconds):
    b = load_spec(write(api(threads_per_process=4, server_side_batching={
        "max_batch_size": 4, "batch_interval": interval}))).predictor.server_side_batching
    assert b.max_batch_size == 4
    assert b.batch_interval == pytest.approx(seconds)


def test_no_batching_by_default(write):
    assert load_spec(write(api())).predictor.server_side_batching is None


@pytest.mark.parametrize("interval, fragment", [
    ("0s", "greater than 0"), ("0", "greater than 0"), ("-1s", "greater than 0"), ("1", "not a duration"),
    ("10 ms", "not a duration"), ("1.2.3s", "not a duration"), ("fast", "not a duration"), ("1d", "not a duration"),
    (0.1, "has no unit"), (1, "has no unit"),
])
def test_batching_bad_interval(write, interval, fragment):
    one_problem(write(api(threads_per_process=4, server_side_batching={"max_batch_size": 4, "batch_interval": interval})),
                "predictor.server_side_batching.batch_interval", fragment)


@pytest.mark.parametrize("size, fragment", [(1, "between 2 and 1024"), (1025, "between 2 and 1024"),
                                            ("8", "integer"), (True, "integer"), (4.0, "integer")])
def test_batching_bad_max_batch_size(write, size, fragment):
    one_problem(write(api(threads_per_process=2000, server_side_batching={"max_batch_size": size, "batch_interval": "1s"})),
                "predictor.server_side_batching.max_batch_size", fragment)


def test_batching_fields_are_required_and_known(write):
    problems = problems_of(write(api(server_side_batching={"max_batch_sise": 4})))
    assert any(p.startswith("predictor.server_side_batching.max_batch_sise: unknown key (did you mean 'max_batch_size'?)")
               for p in problems), problems
    assert any(p.startswith("predictor.server_side_batching.max_batch_size: required") for p in problems), problems
    assert any(p.startswith("predictor.server_side_batching.batch_interval: required") for p in problems), problems
    one_problem(write(api(server_side_batching=[4, "1s"])), "predictor.server_side_batching", "mapping")


def test_batch_larger_than_threads_per_process_is_refused_with_the_fix(write):
    one_problem(write(api(processes_per_replica=4, threads_per_process=2,
                          server_side_batching={"max_batch_size": 8, "batch_interval": "100ms"})),
                "predictor.server_side_batching.max_batch_size", "more than threads_per_process (2)",
                "set threads_per_process to at least 8")


@pytest.mark.parametrize("ptype", ["python", "onnx", "tensorflow"])
def test_batching_for_every_predictor_type(write, ptype):
    spec = load_spec(write(api(type=ptype, model_path="m", threads_per_process=8,
                               server_side_batching={"max_batch_size": 8, "batch_interval": "10ms"})))
    assert spec.predictor.server_side_batching == BatchingSpec(8, 0.01)


def test_parse_duration_sums_its_parts():
    assert parse_duration("1h2m3s4ms") == pytest.approx(3723.004)


@pytest.mark.parametrize("ptype, entries, fragment", [
    ("onnx", ["session.intra_op.allow_spinning"], "must be a mapping of onnxruntime session config entries"),
    ("onnx", {"session.intra_op.allow_spinning": [1]}, "must be a mapping of onnxruntime session config entries"),
    ("python", {"session.intra_op.allow_spinning": "1"}, "only the onnx predictor has onnxruntime sessions"),
])
def test_onnx_session_config_is_a_mapping_for_the_onnx_predictor(write, ptype, entries, fragment):
    spec = api(type=ptype, model_path="s3://bucket/iris/", config={"onnx_session_config": entries})
    one_problem(write(spec), "predictor.config.onnx_session_config", fragment)
