"""Load and validate an API spec (Cortex v0.22 field names).

Every rule of the contract is checked up front and all violations are reported together, each naming the
key path and the fix, so a user fixes a spec in one round instead of one error per restart.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from replica import cgroup
from replica.quantity import format_bytes, parse_quantity

log = logging.getLogger(__name__)

PREDICTOR_TYPES = ("python", "tensorflow", "onnx")
API_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")  # \Z, not $: "$" also matches before a final newline
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")

# Keys of a Cortex spec that only make sense on a Cortex cluster: accepted so that a Cortex user's spec works
# unchanged, and ignored with a log line saying so.
CLUSTER_ONLY_API_KEYS = ("networking", "compute", "update_strategy", "monitoring")
CLUSTER_ONLY_PREDICTOR_KEYS = ("image", "tensorflow_serving_image", "shm_size")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Environment variable names a spec may not set: Cortex reserved CORTEX_ for itself, the replica passes its own
# settings to its processes as REPLICA_* (and prometheus-client's multiprocess directory).
RESERVED_ENV_PREFIXES = ("CORTEX_", "REPLICA_")
RESERVED_ENV_NAMES = ("PROMETHEUS_MULTIPROC_DIR",)

API_KEYS = ("name", "kind", "predictor", "autoscaling") + CLUSTER_ONLY_API_KEYS
# Of Cortex's autoscaling keys, one bounds a single replica; the others steer a cluster's replica count.
AUTOSCALING_KEYS = ("min_replicas", "max_replicas", "init_replicas", "max_replica_concurrency",
                    "target_replica_concurrency", "window", "downscale_stabilization_period",
                    "upscale_stabilization_period", "max_downscale_factor", "max_upscale_factor",
                    "downscale_tolerance", "upscale_tolerance")
MAX_REPLICA_CONCURRENCY = 1024  # Cortex's default
MAX_REPLICA_CONCURRENCY_LIMIT = 30000  # Cortex v0.22's upper bound
PREDICTOR_KEYS = (
    "type",
    "path",
    "model_path",
    "signature_key",
    "models",
    "processes_per_replica",
    "threads_per_process",
    "config",
    "python_path",
    "env",
    "log_level",
    "server_side_batching",
) + CLUSTER_ONLY_PREDICTOR_KEYS
MODELS_KEYS = ("paths", "dir", "signature_key", "cache_size", "cache_memory", "disk_cache_size")
# With only disk_cache_size given, the memory budget is this share of the memory cgroup's limit: the rest is the
# worker's own memory, the supervisor's, gunicorn's master, and the transient second worker of a rolling restart
# is not budgeted for.
DEFAULT_MEMORY_SHARE = 0.6
PATH_ENTRY_KEYS = ("name", "model_path", "signature_key")
BATCHING_KEYS = ("max_batch_size", "batch_interval")
MAX_BATCH_SIZE = 1024  # Cortex's (arbitrary) upper bound


class SpecError(Exception):
    """A spec that cannot be served; `problems` lists every violation, each naming its key path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid API spec {source}:\n{lines}")


@dataclass(frozen=True)
class ModelSource:
    """One upstream root: either a single model (`model_path`, a `paths` entry) or a folder of models (`dir`)."""

    url: str  # s3://bucket/prefix/ or an absolute local directory
    name: str | None  # the model's name; None for a `dir` root, whose children name themselves
    signature_key: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.name is None


@dataclass(frozen=True)
class BatchingSpec:
    """`predictor.server_side_batching`: a batch runs when `max_batch_size` requests have arrived or
    `batch_interval` seconds have passed since its first, whichever comes first."""

    max_batch_size: int
    batch_interval: float  # seconds


@dataclass(frozen=True)
class PredictorSpec:
    type: str
    path: Path
    sources: tuple[ModelSource, ...]
    processes_per_replica: int = 1
    threads_per_process: int = 1
    config: dict = field(default_factory=dict)
    python_path: Path | None = None
    env: dict = field(default_factory=dict)
    log_level: str | None = None  # None: the level the replica was started with
    signature_key: str | None = None
    cache_size: int | None = None
    disk_cache_size: int | None = None
    cache_memory: int | None = None  # bytes the models in memory may take, measured (model caching)
    single_model: str | None = None  # the model's name when the spec uses `model_path`
    server_side_batching: BatchingSpec | None = None

    @property
    def caching(self) -> bool:
        return self.cache_size is not None


@dataclass(frozen=True)
class ApiSpec:
    name: str
    kind: str
    predictor: PredictorSpec
    spec_file: Path
    max_replica_concurrency: int = MAX_REPLICA_CONCURRENCY  # requests in flight per replica; 503 above


class _SpecLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML would silently keep
    the last value, so `type: onnx` followed by `type: python` would serve something the user did not read."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the constructor below reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first}); give each key once",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | Path, api_name: str | None = None) -> ApiSpec:
    """Read a spec file and return the API to serve; raises SpecError naming every problem."""
    path = Path(path).resolve()
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)
    except FileNotFoundError:
        raise SpecError(str(path), ["the spec file does not exist"]) from None
    except UnicodeDecodeError as e:
        raise SpecError(str(path), [f"not UTF-8 text ({e}); save the spec as UTF-8"]) from None
    except OSError as e:
        raise SpecError(str(path), [f"cannot read the spec file: {e.strerror or e}"]) from None
    except yaml.YAMLError as e:
        raise SpecError(str(path), [f"not valid YAML: {e}"]) from None
    apis = raw if isinstance(raw, list) else [raw]
    if not apis or not all(isinstance(a, dict) for a in apis):
        raise SpecError(str(path), ["the file must hold an API mapping or a list of API mappings"])
    names = [a.get("name") for a in apis]
    if api_name is None:
        if len(apis) > 1:
            raise SpecError(str(path), [f"the file holds {len(apis)} APIs ({', '.join(map(str, names))}): choose one with --api NAME"])
        index = 0
    else:
        if api_name not in names:
            raise SpecError(str(path), [f"--api {api_name}: no API of that name; the file holds {', '.join(map(str, names))}"])
        index = names.index(api_name)
    prefix = f"[{index}]" if isinstance(raw, list) else ""
    return _parse_api(apis[index], prefix, path)


def reserved_env_name(name: str) -> bool:
    """A variable the project may not set (in predictor.env or .env): it would change how the replica runs."""
    return name.startswith(RESERVED_ENV_PREFIXES) or name in RESERVED_ENV_NAMES


def _unknown_keys(mapping: dict, allowed: tuple[str, ...], where: str) -> list[str]:
    problems = []
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})"
            problems.append(f"{where}{key}: unknown key{hint}")
    return problems


def _positive_int(value: Any, where: str, problems: list[str], lo: int = 1, hi: int | None = None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where}: must be an integer, got {value!r}")
        return None
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        problems.append(f"{where}: must be {bound}, got {value}")
        return None
    return value


def _model_url(value: Any, where: str, base: Path, problems: list[str]) -> str | None:
    """An upstream root as s3://bucket/prefix/ or an absolute local directory (relative to the spec folder)."""
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: must be an s3://bucket/prefix path or a local directory")
        return None
    if value.startswith("s3://"):
        bucket, _, prefix = value[5:].partition("/")
        if not bucket:
            problems.append(f"{where}: '{value}' has no bucket; write s3://BUCKET/prefix/")
            return None
        if ".." in prefix.split("/"):
            problems.append(f"{where}: '{value}' contains '..'; write the prefix without it")
            return None
        prefix = prefix.strip("/")
        return f"s3://{bucket}/{prefix + '/' if prefix else ''}"
    if "://" in value:
        problems.append(f"{where}: '{value}' uses an unsupported scheme; use s3:// or a local directory")
        return None
    return str((base / value).resolve())


def _parse_api(api: dict, prefix: str, spec_file: Path) -> ApiSpec:
    problems: list[str] = []
    dot = f"{prefix}." if prefix else ""
    problems += _unknown_keys(api, API_KEYS, dot)
    for key in CLUSTER_ONLY_API_KEYS:
        if key in api:
            log.info("spec key %s%s applies to a Cortex cluster only and is ignored here", dot, key)

    name = api.get("name")
    if name is None:
        problems.append(f"{dot}name: required; give the API a name of lowercase letters, digits and '-'")
    elif not isinstance(name, str) or not API_NAME_RE.match(name):
        problems.append(f"{dot}name: '{name}' is not valid; use lowercase letters, digits and '-' (e.g. iris-classifier)")
    kind = api.get("kind", "RealtimeAPI")
    if kind != "RealtimeAPI":
        problems.append(f"{dot}kind: '{kind}' is not supported; the only kind is RealtimeAPI")

    max_concurrency = _parse_autoscaling(api.get("autoscaling"), f"{dot}autoscaling", problems)

    pred = api.get("predictor")
    where = f"{dot}predictor"
    if not isinstance(pred, dict):
        problems.append(f"{where}: required mapping with at least 'type' and 'path'")
        raise SpecError(str(spec_file), problems)
    problems += _unknown_keys(pred, PREDICTOR_KEYS, f"{where}.")
    for key in CLUSTER_ONLY_PREDICTOR_KEYS:
        if key in pred:
            log.info("spec key %s.%s applies to a Cortex cluster only and is ignored here", where, key)

    ptype = pred.get("type")
    if ptype not in PREDICTOR_TYPES:
        problems.append(f"{where}.type: must be one of {', '.join(PREDICTOR_TYPES)}, got {ptype!r}")
    base = spec_file.parent
    ppath = pred.get("path")
    predictor_file = None
    if not isinstance(ppath, str) or not ppath:
        problems.append(f"{where}.path: required; the predictor's .py file, relative to the spec's folder")
    else:
        predictor_file = (base / ppath).resolve()
        if predictor_file.suffix != ".py":
            problems.append(f"{where}.path: '{ppath}' must be a .py file")
        elif not predictor_file.is_file():
            problems.append(f"{where}.path: '{ppath}' does not exist (looked in {predictor_file})")

    processes = _positive_int(pred.get("processes_per_replica", 1), f"{where}.processes_per_replica", problems, 1, 100)
    threads = _positive_int(pred.get("threads_per_process", 1), f"{where}.threads_per_process", problems, 1)
    config = pred.get("config", {}) or {}
    if not isinstance(config, dict):
        problems.append(f"{where}.config: must be a mapping, got {type(config).__name__}")
        config = {}
    session_entries = config.get("onnx_session_config")
    if session_entries is not None and (ptype != "onnx" or not isinstance(session_entries, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in session_entries.items())):
        problems.append(f"{where}.config.onnx_session_config: " + (
            "only the onnx predictor has onnxruntime sessions; remove it" if ptype != "onnx" else
            "must be a mapping of onnxruntime session config entries to values, e.g. "
            "{session.intra_op.allow_spinning: '1'}"))
    env = pred.get("env", {}) or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        problems.append(f"{where}.env: must be a mapping of variable names to values")
        env = {}
    for key in env:
        if reserved_env_name(key):
            problems.append(f"{where}.env.{key}: environment variables starting with "
                            f"{' or '.join(RESERVED_ENV_PREFIXES)} are reserved; rename it")
    log_level = pred.get("log_level")
    if log_level is not None and log_level not in LOG_LEVELS:
        problems.append(f"{where}.log_level: must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    python_path = None
    if pred.get("python_path") is not None:
        python_path = (base / str(pred["python_path"])).resolve()
        if not python_path.is_dir():
            problems.append(f"{where}.python_path: '{pred['python_path']}' is not a directory")

    signature_key = pred.get("signature_key")
    if signature_key is not None and ptype != "tensorflow":
        problems.append(f"{where}.signature_key: only the tensorflow predictor takes a signature_key; remove it")

    sources: list[ModelSource] = []
    cache_size = disk_cache_size = cache_memory = None
    single_model = None
    has_model_path = "model_path" in pred and pred["model_path"] is not None
    models = pred.get("models")
    if has_model_path and models is not None:
        problems.append(f"{where}: set either model_path or models, not both")
    elif has_model_path:
        url = _model_url(pred["model_path"], f"{where}.model_path", base, problems)
        if url and isinstance(name, str):
            single_model = name
            sources.append(ModelSource(url=url, name=name, signature_key=signature_key))
    elif models is not None:
        mwhere = f"{where}.models"
        if not isinstance(models, dict):
            problems.append(f"{mwhere}: must be a mapping with 'paths' or 'dir'")
            models = {}
        problems += _unknown_keys(models, MODELS_KEYS, f"{mwhere}.")
        default_sig = models.get("signature_key", signature_key)
        if models.get("signature_key") is not None and ptype != "tensorflow":
            problems.append(f"{mwhere}.signature_key: only the tensorflow predictor takes a signature_key; remove it")
        has_paths, has_dir = models.get("paths") is not None, models.get("dir") is not None
        if has_paths == has_dir:
            problems.append(f"{mwhere}: set exactly one of paths (a list of named models) or dir (a folder of models)")
        elif has_dir:
            url = _model_url(models["dir"], f"{mwhere}.dir", base, problems)
            if url:
                sources.append(ModelSource(url=url, name=None, signature_key=default_sig))
        else:
            sources += _parse_paths(models["paths"], f"{mwhere}.paths", base, ptype, default_sig, problems)
        cache_size, disk_cache_size, cache_memory = _parse_cache(models, mwhere, processes, problems)
    batching = _parse_batching(pred.get("server_side_batching"), f"{where}.server_side_batching", threads, problems)
    if ptype in ("tensorflow", "onnx") and not has_model_path and models is None:
        problems.append(f"{where}: the {ptype} predictor needs models; set model_path or models.paths / models.dir")

    if problems:
        raise SpecError(str(spec_file), problems)
    assert predictor_file is not None and processes is not None and threads is not None
    return ApiSpec(
        name=name,
        kind=kind,
        spec_file=spec_file,
        max_replica_concurrency=max_concurrency,
        predictor=PredictorSpec(
            type=ptype,
            path=predictor_file,
            sources=tuple(sources),
            processes_per_replica=processes,
            threads_per_process=threads,
            config=config,
            python_path=python_path,
            env={k: str(v) for k, v in env.items()},
            log_level=log_level,
            signature_key=signature_key,
            cache_size=cache_size,
            disk_cache_size=disk_cache_size,
            cache_memory=cache_memory,
            single_model=single_model,
            server_side_batching=batching,
        ),
    )


def _parse_autoscaling(autoscaling: Any, where: str, problems: list[str]) -> int:
    """`max_replica_concurrency` (Cortex's rules: an integer in 1..30000, at least target_replica_concurrency);
    the keys that size a cluster are accepted and ignored."""
    if autoscaling is None:
        return MAX_REPLICA_CONCURRENCY
    if not isinstance(autoscaling, dict):
        problems.append(f"{where}: must be a mapping (e.g. max_replica_concurrency: 1024)")
        return MAX_REPLICA_CONCURRENCY
    problems += _unknown_keys(autoscaling, AUTOSCALING_KEYS, f"{where}.")
    for key in autoscaling:
        if key in AUTOSCALING_KEYS and key != "max_replica_concurrency":
            log.info("spec key %s.%s applies to a Cortex cluster only and is ignored here", where, key)
    value = autoscaling.get("max_replica_concurrency", MAX_REPLICA_CONCURRENCY)
    limit = _positive_int(value, f"{where}.max_replica_concurrency", problems, 1, MAX_REPLICA_CONCURRENCY_LIMIT)
    target = autoscaling.get("target_replica_concurrency")
    if limit is not None and isinstance(target, (int, float)) and not isinstance(target, bool) and target > limit:
        problems.append(f"{where}.target_replica_concurrency: {target} is above max_replica_concurrency ({limit}); "
                        "lower it or raise max_replica_concurrency")
    return limit or MAX_REPLICA_CONCURRENCY


def _parse_paths(paths: Any, where: str, base: Path, ptype: Any, default_sig: str | None, problems: list[str]) -> list[ModelSource]:
    if not isinstance(paths, list) or not paths:
        problems.append(f"{where}: must be a non-empty list of {{name, model_path}} entries")
        return []
    sources, seen = [], set()
    for i, entry in enumerate(paths):
        ewhere = f"{where}[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{ewhere}: must be a mapping with name and model_path")
            continue
        problems += _unknown_keys(entry, PATH_ENTRY_KEYS, f"{ewhere}.")
        mname = entry.get("name")
        if not isinstance(mname, str) or not MODEL_NAME_RE.match(mname):
            problems.append(f"{ewhere}.name: {mname!r} is not a valid model name; use letters, digits, '_' and '-'")
        elif mname in seen:
            problems.append(f"{ewhere}.name: model name '{mname}' is used twice; model names must be unique")
        else:
            seen.add(mname)
        if entry.get("signature_key") is not None and ptype != "tensorflow":
            problems.append(f"{ewhere}.signature_key: only the tensorflow predictor takes a signature_key; remove it")
        if "model_path" not in entry:
            problems.append(f"{ewhere}.model_path: required; an s3:// prefix or a local directory")
            continue
        url = _model_url(entry["model_path"], f"{ewhere}.model_path", base, problems)
        if url and isinstance(mname, str):
            sources.append(ModelSource(url=url, name=mname, signature_key=entry.get("signature_key", default_sig)))
    return sources


def _parse_cache(models: dict, where: str, processes: int | None,
                 problems: list[str]) -> tuple[int | None, int | None, int | None]:
    """(cache_size, disk_cache_size, cache_memory in bytes). Caching takes disk_cache_size with a memory bound:
    cache_size (a count), cache_memory (bytes, measured), or both; with disk_cache_size alone the budget is a
    share of the memory cgroup's limit. With cache_memory alone the count bound is disk_cache_size."""
    cache, disk, memory = models.get("cache_size"), models.get("disk_cache_size"), models.get("cache_memory")
    if cache is None and disk is None and memory is None:
        return None, None, None
    if disk is None:
        problems.append(f"{where}.disk_cache_size: model caching needs disk_cache_size (how many versions the disk "
                        "holds) beside cache_size or cache_memory; add disk_cache_size")
        return None, None, None
    disk = _positive_int(disk, f"{where}.disk_cache_size", problems)
    given = cache is not None
    if given:
        cache = _positive_int(cache, f"{where}.cache_size", problems)
    limit = cgroup.memory_limit()
    if memory is not None:
        try:
            memory = parse_quantity(memory)
        except ValueError as e:
            problems.append(f"{where}.cache_memory: {e}")
            memory = None
        if memory is not None and limit is not None and memory > limit:
            problems.append(f"{where}.cache_memory: {format_bytes(memory)} is more than this machine's memory limit "
                            f"({format_bytes(limit)}, the memory cgroup's); lower cache_memory or raise the limit")
    elif not given:
        if limit is None:
            problems.append(f"{where}: disk_cache_size alone needs a memory limit to derive the memory budget from, "
                            "and this process has none; add cache_size (a count) or cache_memory (e.g. 4Gi)")
            return None, None, None
        memory = int(limit * DEFAULT_MEMORY_SHARE)
    if cache is None and disk is not None:
        cache = disk  # every version in memory is also on disk: the disk bound is the count bound
    if cache is not None and disk is not None and cache > disk:
        problems.append(f"{where}.disk_cache_size: must be >= cache_size ({disk} < {cache}); every model in memory is also on disk")
    if processes is not None and processes > 1:
        problems.append(
            f"{where}.cache_size: model caching needs processes_per_replica: 1 (got {processes}); each worker process "
            "would hold its own cache and the bounds could not be kept. Remove cache_size/disk_cache_size or set "
            "processes_per_replica: 1"
        )
    return cache, disk, memory


# Go's time.ParseDuration, which Cortex used for batch_interval: decimal numbers, each with an optional fraction
# and a unit, optionally signed as a whole ("100ms", "0.1s", "1m30s", ".5s", "1.s").
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}
_DURATION_RE = re.compile(r"^[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+\Z")
_DURATION_PART_RE = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string (Cortex's format for durations); ValueError when it is not one."""
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _DURATION_RE.match(text):
        raise ValueError(f"{text!r} is not a duration; write a number with a unit (ns, us, ms, s, m, h), "
                         "e.g. 100ms or 0.1s")
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART_RE.findall(text))
    return -seconds if text.startswith("-") else seconds


def _parse_batching(value: Any, where: str, threads: int | None, problems: list[str]) -> BatchingSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a mapping with max_batch_size and batch_interval")
        return None
    problems += _unknown_keys(value, BATCHING_KEYS, f"{where}.")
    size = interval = None
    if "max_batch_size" not in value:
        problems.append(f"{where}.max_batch_size: required; the most requests one batch holds (2 to {MAX_BATCH_SIZE})")
    else:
        size = _positive_int(value["max_batch_size"], f"{where}.max_batch_size", problems, 2, MAX_BATCH_SIZE)
    raw = value.get("batch_interval")
    if raw is None:
        problems.append(f"{where}.batch_interval: required; the longest a batch waits for requests, e.g. 100ms or 0.1s")
    elif not isinstance(raw, str):
        problems.append(f"{where}.batch_interval: {raw!r} has no unit; write a duration such as 100ms or 0.1s")
    else:
        try:
            interval = parse_duration(raw.strip())
        except ValueError as e:
            problems.append(f"{where}.batch_interval: {e}")
        else:
            if interval <= 0:
                problems.append(f"{where}.batch_interval: must be greater than 0, got {raw!r}")
                interval = None
    if size is not None and threads is not None and size > threads:
        # Batching is per worker process, and a process holds at most threads_per_process requests at once (each
        # waits in its own thread): a larger batch could never fill, and every batch would wait batch_interval.
        problems.append(
            f"{where}.max_batch_size: {size} is more than threads_per_process ({threads}), the most requests one "
            f"worker process holds at once, so a batch could never fill; set threads_per_process to at least "
            f"{size} or lower max_batch_size"
        )
        size = None
    if size is None or interval is None:
        return None
    return BatchingSpec(max_batch_size=size, batch_interval=interval)
