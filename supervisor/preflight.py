"""Everything checked before serving, and again on SIGHUP before a new spec replaces the running one.

The spec is parsed once here; the predictor file is checked from source, then imported in a separate
process (workers/import_check.py), exactly as a worker will import it, so a problem a restart cannot fix is
found before a worker boots, and heavy frameworks never load in the supervisor.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from replica.interface import check_source
from replica.project import ProjectError, project_environment
from replica.spec import ApiSpec, SpecError, load_spec
from replica.spec_codec import spec_to_json

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
IMPORT_TIMEOUT = 300.0  # TensorFlow alone can take a minute to import on a busy machine


def load_checked(spec: str | Path, api_name: str | None) -> ApiSpec:
    """The parsed spec, its predictor checked from source and imported in a subprocess; SpecError otherwise."""
    return checked(load_spec(spec, api_name))


def checked(parsed: ApiSpec, import_check: bool = True) -> ApiSpec:
    """A parsed spec whose predictor is checked from source and (unless told not to) imported in a subprocess;
    SpecError otherwise."""
    problems = check_source(parsed.predictor.path, parsed.predictor.type, bool(parsed.predictor.sources))
    if problems:
        raise SpecError(str(parsed.spec_file), [f"predictor.path: {p}" for p in problems])
    try:
        project_environment(parsed)  # the workers apply it; a bad .env stops start-up here instead
    except ProjectError as e:
        raise SpecError(str(parsed.spec_file), [str(e)]) from None
    error = import_predictor(parsed) if import_check else None
    if error:
        raise SpecError(str(parsed.spec_file), [f"predictor.path: {error}"])
    return parsed


def worker_env(api: ApiSpec) -> dict[str, str]:
    """The environment a worker (and the import check) runs with: the spec's env and this package on the path."""
    env = dict(os.environ)
    env.update(api.predictor.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    return env


def import_predictor(api: ApiSpec) -> str | None:
    """Import the predictor in a fresh interpreter; None, or one line saying why it does not import."""
    try:
        proc = subprocess.run([sys.executable, "-m", "workers.import_check"], input=spec_to_json(api).encode(),
                              capture_output=True, env=worker_env(api), timeout=IMPORT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"importing {api.predictor.path} did not finish within {IMPORT_TIMEOUT:.0f}s"
    if proc.returncode == 0:
        return None
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if lines:
        return lines[-1]
    tail = proc.stderr.decode(errors="replace").strip().splitlines()
    return f"importing {api.predictor.path} failed (exit status {proc.returncode}): {tail[-1] if tail else ''}"
