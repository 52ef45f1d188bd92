"""The parsed spec as JSON: how the supervisor hands an ApiSpec to the processes it starts.

The workers and the import check start from the spec the supervisor parsed, never from the spec file. That
hand-off is data, not code: `pickle.loads` of a file in the runtime folder would run whatever a process able
to write that file put there, in every worker. JSON can only describe values, and decoding it here builds
exactly the dataclasses of replica.spec, field by field, refusing anything else.

`predictor.config` holds whatever YAML's safe loader produced (mappings with any hashable keys, sequences,
strings, numbers with NaN and infinities, booleans, null, timestamps, dates, binary, sets), so config values are
tagged where JSON alone would lose their type: every mapping is `{"$map": [[key, value], ...]}`, and so a JSON
object in the encoding is always a tag, never user data.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from replica.spec import ApiSpec, BatchingSpec, ModelSource, PredictorSpec

FORMAT = 1  # bumped when the shape changes: a worker never guesses at a spec written by another version


class SpecDecodeError(ValueError):
    """The text is not a spec this version of the replica wrote."""


def spec_to_json(api: ApiSpec) -> str:
    """The spec as a JSON document (the inverse of `spec_from_json`)."""
    p = api.predictor
    b = p.server_side_batching
    doc = {
        "format": FORMAT,
        "name": api.name,
        "kind": api.kind,
        "spec_file": str(api.spec_file),
        "max_replica_concurrency": api.max_replica_concurrency,
        "predictor": {
            "type": p.type,
            "path": str(p.path),
            "sources": [{"url": s.url, "name": s.name, "signature_key": s.signature_key} for s in p.sources],
            "processes_per_replica": p.processes_per_replica,
            "threads_per_process": p.threads_per_process,
            "config": encode_value(p.config),
            "python_path": None if p.python_path is None else str(p.python_path),
            "env": dict(p.env),
            "log_level": p.log_level,
            "signature_key": p.signature_key,
            "cache_size": p.cache_size,
            "disk_cache_size": p.disk_cache_size,
            "cache_memory": p.cache_memory,
            "single_model": p.single_model,
            "server_side_batching": None if b is None else {"max_batch_size": b.max_batch_size,
                                                            "batch_interval": b.batch_interval},
        },
    }
    return json.dumps(doc, allow_nan=False)


def spec_from_json(text: str | bytes) -> ApiSpec:
    """The ApiSpec `spec_to_json` wrote; SpecDecodeError for anything else."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SpecDecodeError(f"not a format-{FORMAT} spec document")
        p = _exact(doc["predictor"], PredictorSpec)
        batching = p["server_side_batching"]
        predictor = PredictorSpec(
            type=_typed(p["type"], str),
            path=Path(_typed(p["path"], str)),
            sources=tuple(ModelSource(**_exact(s, ModelSource)) for s in p["sources"]),
            processes_per_replica=_typed(p["processes_per_replica"], int),
            threads_per_process=_typed(p["threads_per_process"], int),
            config=decode_value(p["config"]),
            python_path=None if p["python_path"] is None else Path(_typed(p["python_path"], str)),
            env={_typed(k, str): _typed(v, str) for k, v in p["env"].items()},
            log_level=p["log_level"],
            signature_key=p["signature_key"],
            cache_size=p["cache_size"],
            disk_cache_size=p["disk_cache_size"],
            cache_memory=p["cache_memory"],
            single_model=p["single_model"],
            server_side_batching=None if batching is None else BatchingSpec(
                max_batch_size=_typed(batching["max_batch_size"], int),
                batch_interval=float(_typed(batching["batch_interval"], (int, float)))),
        )
        api = {k: v for k, v in doc.items() if k != "format"}
        _exact(api, ApiSpec)
        return ApiSpec(name=_typed(api["name"], str), kind=_typed(api["kind"], str), predictor=predictor,
                       spec_file=Path(_typed(api["spec_file"], str)),
                       max_replica_concurrency=_typed(api["max_replica_concurrency"], int))
    except SpecDecodeError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise SpecDecodeError(f"not a spec document: {type(e).__name__}: {e}") from None


def _exact(doc: Any, cls: type) -> dict:
    """`doc`, checked to have exactly the fields of dataclass `cls`."""
    if not isinstance(doc, dict):
        raise SpecDecodeError(f"{cls.__name__}: expected an object")
    want = {f.name for f in fields(cls)}
    if set(doc) != want:
        raise SpecDecodeError(f"{cls.__name__}: fields {sorted(set(doc) ^ want)} differ")
    return doc


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SpecDecodeError(f"expected {kind}, got {type(value).__name__}")
    return value


# -- config values ------------------------------------------------------------------------------------------------

def encode_value(value: Any) -> Any:
    """A value of YAML's safe loader as JSON, tagged where JSON alone would change its type."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode_value(v) for v in value]}
    if isinstance(value, dict):
        return {"$map": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        return {"$set": [encode_value(v) for v in value]}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime.datetime):  # before date: a datetime is a date
        return {"$datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": value.isoformat()}
    raise TypeError(f"a config value of type {type(value).__name__} cannot be handed to the workers")


def decode_value(value: Any) -> Any:
    """The inverse of `encode_value`."""
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "$map":
            return {_hashable(decode_value(k)): decode_value(v) for k, v in inner}
        if tag == "$tuple":
            return tuple(decode_value(v) for v in inner)
        if tag == "$set":
            return {_hashable(decode_value(v)) for v in inner}
        if tag == "$float":
            return float(inner)
        if tag == "$bytes":
            return base64.b64decode(inner, validate=True)
        if tag == "$datetime":
            return datetime.datetime.fromisoformat(inner)
        if tag == "$date":
            return datetime.date.fromisoformat(inner)
    raise SpecDecodeError(f"not an encoded config value: {value!r:.80}")


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, dict, set)):
        raise SpecDecodeError("a mapping key or set member must be hashable")
    return value
