"""Build the models the bundled examples serve (``examples/*/models/``).

Model files are generated rather than committed: they are binary, and
``scripts.model_factory`` can recreate them exactly. Run from anywhere::

    python scripts/build_examples.py            # build what is missing
    python scripts/build_examples.py --force    # rebuild everything

Each model directory is built in a temporary sibling and renamed into place,
so an interrupted build never leaves a half-written model that a later run
(or a replica watching the directory) would take for a complete one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so `python scripts/build_examples.py` finds `scripts`
    sys.path.insert(0, str(REPO_ROOT))

from scripts import model_factory as mf  # noqa: E402

EXAMPLES_DIR = REPO_ROOT / "examples"


@dataclass(frozen=True)
class ExampleModel:
    """One model directory (all of its versions) that an example's api.yaml points at."""

    example: str  # folder under examples/
    name: str  # folder under examples/<example>/models/
    build: Callable[[Path], None]  # fills the given (empty) model directory
    description: str

    @property
    def path(self) -> Path:
        return EXAMPLES_DIR / self.example / "models" / self.name


def _onnx_iris(root: Path) -> None:
    mf.write_onnx_linear(root / "1" / "model.onnx", mf.IRIS_WEIGHTS, mf.IRIS_BIAS)


def _tf_iris(root: Path) -> None:
    # One signature only, so the api.yaml needs no signature_key for it.
    mf.write_tf_linear(root / "1", mf.IRIS_WEIGHTS, mf.IRIS_BIAS, extra_signature=False)


def _tf_iris_double(root: Path) -> None:
    # Two signatures (serving_default, double); api.yaml picks signature_key: double.
    mf.write_tf_linear(root / "1", mf.IRIS_WEIGHTS, mf.IRIS_BIAS, extra_signature=True)


def _python_iris(root: Path) -> None:
    mf.write_python_linear(root / "1", mf.IRIS_WEIGHTS, mf.IRIS_BIAS)
    mf.write_python_linear(root / "2", mf.IRIS_WEIGHTS, mf.IRIS_BIAS_V2)


def _framework_iris(framework: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        from scripts import framework_models as fm  # needs the `frameworks` extra

        fm.write_model(framework, root / "1", mf.IRIS_WEIGHTS, mf.IRIS_BIAS)
        fm.write_model(framework, root / "2", mf.IRIS_WEIGHTS, mf.IRIS_BIAS_V2)

    return build


# Python predictors over the frameworks `load_model` is proven with (tests/test_frameworks.py).
FRAMEWORK_EXAMPLES = ("mlflow", "sklearn", "pytorch", "numpy", "pandas", "onnx-python")

MODELS: Sequence[ExampleModel] = (
    ExampleModel("onnx", "iris", _onnx_iris, "ONNX iris classifier, version 1"),
    ExampleModel("tensorflow", "iris", _tf_iris, "TF SavedModel, version 1 (serving_default)"),
    ExampleModel(
        "tensorflow", "iris-double", _tf_iris_double,
        "TF SavedModel, version 1 (serving_default + double)",
    ),
    ExampleModel("python", "iris", _python_iris, "Python JSON model, versions 1 and 2"),
    *(ExampleModel(fw, "iris", _framework_iris(fw), f"{fw} model for the Python predictor, versions 1 and 2")
      for fw in FRAMEWORK_EXAMPLES),
)


def build(model: ExampleModel, force: bool) -> str:
    """Build one model directory; return 'built', 'rebuilt' or 'skipped'."""
    target = model.path
    existed = target.exists()
    if existed and not force:
        return "skipped"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would stick to the renamed model directory.
    staging = target.parent / f".{model.name}.building-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        model.build(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return "rebuilt" if existed else "built"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild models that already exist")
    parser.add_argument("--only", choices=sorted({m.example for m in MODELS}), action="append",
                        help="build only this example's models (repeatable)")
    args = parser.parse_args(argv)

    failed = 0
    for model in MODELS:
        if args.only and model.example not in args.only:
            continue
        rel = model.path.relative_to(REPO_ROOT)
        try:
            outcome = build(model, args.force)
        except ImportError as exc:  # e.g. tensorflow not installed
            failed += 1
            print(f"FAILED   {rel}: missing dependency: {exc}", file=sys.stderr)
            continue
        if outcome == "skipped":
            print(f"skipped  {rel} (exists; use --force to rebuild)")
        else:
            files = sorted(p.relative_to(model.path) for p in model.path.rglob("*") if p.is_file())
            print(f"{outcome:<8} {rel}: {model.description}")
            for f in files:
                print(f"           {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
