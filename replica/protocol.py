"""The contract between the supervisor and its workers, in one place.

The supervisor is the only writer of everything below; workers read it, and the one thing they may ask for
goes through the control socket. Nothing is pickled: what crosses between the processes is JSON, SQLite rows
and files, so a process that can write one of them can at worst describe another state, never run code.

What the supervisor publishes (all in the private runtime folder, `replica/private_dir.py`):

- `spec.json`: the parsed spec every worker starts from (`replica/spec_codec.py`), named by `SPEC_FILE_ENV`.
- `feed.sqlite`: the state feed (`replica/feed.py`): per model its error, per version whether it is upstream
  and on disk, the fingerprint on disk, the last error and, for a failed fetch or load, when the supervisor
  tries it again (`retry_at`). A version with an error but no `retry_at` has an invalid layout upstream.
- `heartbeat`: touched while the watcher loop runs (`/healthz`).
- `supervisor.sock`: the control socket (model caching), whose path the feed's facts carry.

What the workers write: their readiness markers (`workers/`) and metrics files (`metrics/`), nothing else.
Workers read model files under the version's shared lock (`replica/disktree.py`).

What a worker may ask (model caching), as JSON over HTTP on the control socket; the supervisor learns which
worker asks from the socket (`SO_PEERCRED`), never from the body:

- `POST /ensure` `EnsureRequest` -> `EnsureReply`: have a version on disk and held for this worker, after
  applying the releases decided since the last call.
- `POST /release` `{"releases": [...]}` -> `{"error": null}`: versions this worker no longer holds in memory,
  each with its last request time, and whether its copy failed to load (`LoadFailure`): the supervisor then
  records the failure on the version, takes the copy off the disk and brings back what it evicted for it.

Every call carries the worker's sequence number; the supervisor applies, per worker and version, only the call
with the highest one, so calls that arrive out of order never undo a newer decision.
"""

from __future__ import annotations

from typing import Any, NamedTuple

SPEC_FILE_ENV = "REPLICA_SPEC_FILE"
ENSURE, RELEASE = "/ensure", "/release"


class LoadFailure(NamedTuple):
    """A copy that failed to load in a worker: the reason, and the seconds until it is tried again."""

    error: str
    retry_after: float


class Release(NamedTuple):
    """A version that left a worker's memory."""

    name: str
    version: int
    seq: int
    last_used: float  # wall clock of its last request: the disk tier's LRU order
    failure: LoadFailure | None = None


class EnsureRequest(NamedTuple):
    name: str
    version: int
    seq: int
    releases: tuple[Release, ...] = ()


class EnsureReply(NamedTuple):
    error: str | None  # why the version could not be put on disk, or None when it is there and held
    full: bool = False  # only because every version on disk is held, which says nothing about this one
    retry_after: int | None = None  # for a failed fetch or load: seconds until the supervisor tries it again


class ProtocolError(ValueError):
    """A body that does not follow the protocol: a 400 for the caller, never a crash of the supervisor."""


def encode_release(r: Release) -> list:
    failure = None if r.failure is None else {"error": r.failure.error, "retry_after": r.failure.retry_after}
    return [r.name, r.version, r.seq, r.last_used, failure]


def decode_release(raw: Any) -> Release:
    try:
        name, version, seq, last_used, *rest = raw
        failure = rest[0] if rest else None
        return Release(_str(name), _int(version), _int(seq), float(last_used),
                       None if failure is None else LoadFailure(_str(failure["error"]),
                                                                float(failure["retry_after"])))
    except (TypeError, ValueError, KeyError) as e:
        raise ProtocolError(f"a release must be [name, version, seq, last_used, failure or null]: {e}") from None


def ensure_body(req: EnsureRequest) -> dict:
    return {"name": req.name, "version": req.version, "seq": req.seq,
            "releases": [encode_release(r) for r in req.releases]}


def parse_ensure(body: Any) -> EnsureRequest:
    try:
        return EnsureRequest(_str(body["name"]), _int(body["version"]), _int(body["seq"]), parse_releases(body))
    except (TypeError, KeyError) as e:
        raise ProtocolError(f"an ensure needs name, version and seq: {e}") from None


def parse_releases(body: Any) -> tuple[Release, ...]:
    raw = body.get("releases", []) if isinstance(body, dict) else None
    if not isinstance(raw, list):
        raise ProtocolError("releases must be a list")
    return tuple(decode_release(r) for r in raw)


def reply_body(reply: EnsureReply) -> dict:
    return reply._asdict()


def parse_reply(body: Any) -> EnsureReply:
    try:
        return EnsureReply(body["error"], bool(body.get("full")), body.get("retry_after"))
    except (TypeError, KeyError) as e:
        raise ProtocolError(f"an ensure reply needs an error field: {e}") from None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"expected an integer, got {type(value).__name__}")
    return value
