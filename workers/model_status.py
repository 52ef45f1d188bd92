"""TF Serving's model status (`GET /v1/models`), rendered from the supervisor's state and the worker's records.

The registry hands over a snapshot of its records (one dict copy under its lock); everything here runs
outside that lock, so rendering a large catalogue never stalls a request.
"""

from __future__ import annotations

from workers.records import Record, State

_TF_STATE = {
    State.QUEUED: "START",
    State.FETCHING: "START",
    State.LOADING: "LOADING",
    State.READY: "AVAILABLE",
    State.DRAINING: "UNLOADING",
    State.UNLOADING: "UNLOADING",
    State.FAILED: "END",
}


def render(models: dict[str, dict], names: list[str], records: dict[str, dict[int, Record]],
           leaving: list[Record], held: dict[tuple[str, int], dict] | None = None) -> list[dict]:
    """One entry per name: every version upstream, on disk or in memory, with its state and last error; a
    quarantined copy (`held`, replica/quarantine.py) is END with the reason, whether or not a request tried it."""
    held = held or {}
    out = []
    for n in names:
        info = models.get(n, {"versions": {}, "error": None})
        current = records.get(n, {})
        versions = sorted({int(v) for v in info.get("versions", {})} | set(current), reverse=True)
        rows = []
        for v in versions:
            vi = info.get("versions", {}).get(str(v), {})
            rec = current.get(v)
            state = rec.state if rec is not None else None
            error = vi.get("error") or (rec.error if rec is not None else None) or None
            if state is None:
                tf_state = "END" if error and not vi.get("disk") else "START"
            else:
                tf_state = _TF_STATE[state]
            quarantine = held.get((n, v))
            if quarantine is not None and vi.get("fingerprint") not in (None, quarantine["fingerprint"]):
                quarantine = None  # a new copy upstream: free to load
            if quarantine is not None and state is not State.READY:
                tf_state = "END"
                error = error or (f"quarantined: {quarantine['reason']}; not loaded again for "
                                  f"{quarantine['seconds_left']:.0f} s or until it changes upstream")
            row = _row(v, tf_state, error, bool(vi.get("upstream")), bool(vi.get("disk")), state is State.READY)
            if state is State.READY:
                row["memory_bytes"] = rec.memory_bytes
            if quarantine is not None:
                row["quarantined"] = {"reason": quarantine["reason"],
                                      "seconds_left": round(quarantine["seconds_left"])}
            rows.append(row)
        for rec in leaving:
            if rec.name == n:
                row = _row(rec.version, "UNLOADING", None, False, False, True)
                row["memory_bytes"] = rec.memory_bytes
                rows.append(row)
        out.append({"name": n, "error": info.get("error"), "model_version_status": rows})
    return out


def _row(version: int, state: str, error: str | None, upstream: bool, disk: bool, memory: bool) -> dict:
    return {
        "version": str(version),
        "state": state,
        "status": {"error_code": "UNKNOWN" if error else "OK", "error_message": error or ""},
        "upstream": upstream,
        "disk": disk,
        "memory": memory,
        "error": error,
    }


def not_found_reason(name: str, version: int | None, model: dict) -> str:
    versions = model.get("versions", {})
    if version is not None and str(version) not in versions:
        have = ", ".join(sorted(versions, key=int)) or "none"
        return f"model '{name}' has no version {version} (versions: {have})"
    errors = [f"version {v}: {i['error']}" for v, i in versions.items() if i.get("error")]
    reason = model.get("error") or "; ".join(errors) or "no version is on disk yet"
    which = f"version {version} is not available" if version is not None else "has no version available"
    return f"model '{name}' {which} ({reason})"
