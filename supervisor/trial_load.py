"""`replica validate --load`: load each model's served version once, the way a worker would, without serving.

A spec can be valid and its files laid out right while a model file is corrupt, or the predictor's
`load_model` fails on it; `validate` alone would pass it. With `--load`, each model's highest valid version is
downloaded into a temporary folder and given to the same loader a worker uses (onnxruntime's session, the
TensorFlow SavedModel loader, or the predictor's own `load_model`), then released.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from replica.disktree import make_dirs, safe_relpath
from replica.spec import ApiSpec
from supervisor.catalogue import CatalogueEntry
from supervisor.upstream import fetch_files
from supervisor.watcher import prefixed


def model_loader(api: ApiSpec) -> Callable[[str, str, int], Any]:
    """(model_path, name, version) -> model, as the worker's Runtime loads: the framework's loader for ONNX and
    TensorFlow, the predictor's `load_model` (on an instance made as a worker makes it) for Python."""
    from workers.predictor import load_predictor_class
    from workers.python_client import PythonClient
    from workers.runtime import framework_loader, make_predictor

    loader = framework_loader(api.predictor)
    if loader is not None:
        return loader
    # A client without a registry: get_model is for predict, not for load_model.
    predictor = make_predictor(load_predictor_class(api), api.predictor, PythonClient(None))
    return lambda path, name, version: predictor.load_model(path)


def try_load(entry: CatalogueEntry, name: str, loader: Callable[[str, str, int], Any]) -> str:
    """Download the model's highest valid version and load it; a line saying how that went."""
    valid = [v for v in entry.listing.all_versions if v.error is None]
    if not valid:
        return "no valid version to load"
    listing = valid[-1]
    folder = Path(tempfile.mkdtemp(prefix="replica-validate-"))
    try:
        files = []
        for f in listing.files:
            dest = folder / safe_relpath(f.key)
            make_dirs(dest.parent)
            files.append((prefixed(entry.prefix + listing.prefix, f), dest))
        fetch_files(entry.upstream, files)
        started = time.perf_counter()
        model = loader(str(folder), name, listing.version)
        seconds = time.perf_counter() - started
        del model
        return f"version {listing.version} loaded in {seconds:.2f}s"
    except Exception as e:  # noqa: BLE001 - whatever the loader raised is the finding
        return f"version {listing.version} failed to load: {type(e).__name__}: {e}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
