"""Write the iris linear classifier of ``scripts.model_factory`` in each framework the Python predictor's
``load_model`` serves: MLflow (scikit-learn flavor), scikit-learn (joblib), PyTorch (state dict), NumPy
(``.npy``), pandas (Parquet) and ONNX (loaded with onnxruntime by a Python predictor).

Every writer takes the same ``weights`` ([n_in, n_out]) and ``bias`` ([n_out]) and writes one version folder,
so that every framework's model gives the same, known scores (``x @ W + b``): a test can check a real
prediction, and tell versions apart by their bias.

The frameworks are the ``frameworks`` extra of setup.cfg (``pip install -e '.[frameworks]'``); each is
imported only inside its writer, so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from scripts.model_factory import IRIS_LABELS, write_onnx_linear

__all__ = ["FEATURES", "FRAMEWORKS", "WRITERS", "write_model", "linear_scores"]

# Column order of every model's input (the keys of examples/*/sample.json).
FEATURES: tuple[str, ...] = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def linear_scores(x: Sequence[Sequence[float]], weights, bias) -> np.ndarray:
    """What every model written here answers for the rows `x`."""
    return np.asarray(x, dtype=np.float64) @ np.asarray(weights, dtype=np.float64) + np.asarray(bias, dtype=np.float64)


def _fit_linear_regression(weights, bias):
    """A scikit-learn LinearRegression fitted (exactly: no noise) to scores = x @ W + b."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, len(weights)))
    return LinearRegression().fit(x, linear_scores(x, weights, bias))


def write_sklearn(directory: Path, weights, bias) -> Path:
    """``model.joblib``: a fitted LinearRegression whose ``predict`` returns the class scores."""
    import joblib

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.joblib"
    joblib.dump(_fit_linear_regression(weights, bias), path)
    return path


def write_mlflow(directory: Path, weights, bias) -> Path:
    """An MLflow model folder (``MLmodel``, ``conda.yaml``, ``model.pkl``, ...) of the same LinearRegression,
    saved with ``mlflow.sklearn.save_model``. ``directory`` must not exist or be empty (MLflow's rule)."""
    import cloudpickle
    import mlflow.sklearn
    import sklearn

    directory = Path(directory)
    if directory.exists() and not any(directory.iterdir()):
        directory.rmdir()
    # Explicit requirements: inferring them imports the model in a subprocess, which takes seconds.
    mlflow.sklearn.save_model(
        _fit_linear_regression(weights, bias),
        str(directory),
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"cloudpickle=={cloudpickle.__version__}"],
    )
    return directory


def write_pytorch(directory: Path, weights, bias) -> Path:
    """``model.pt``: the state dict of an ``nn.Linear(n_in, n_out)`` (the class is in the predictor)."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    w = torch.tensor(np.asarray(weights, dtype=np.float32).T.copy())  # nn.Linear keeps [out, in]
    b = torch.tensor(np.asarray(bias, dtype=np.float32))
    path = directory / "model.pt"
    torch.save({"weight": w, "bias": b}, path)
    return path


def write_numpy(directory: Path, weights, bias) -> Path:
    """``model.npy``: one float64 array [n_in + 1, n_out], the weights with the bias as the last row."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.npy"
    np.save(path, np.vstack([np.asarray(weights, dtype=np.float64), np.asarray(bias, dtype=np.float64)]))
    return path


def write_pandas(directory: Path, weights, bias) -> Path:
    """``model.parquet``: a table with one row per feature plus a ``bias`` row, one column per class."""
    import pandas as pd

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = [list(map(float, r)) for r in weights] + [list(map(float, bias))]
    index = list(FEATURES[: len(weights)]) + ["bias"]
    table = pd.DataFrame(rows, index=pd.Index(index, name="term"), columns=list(IRIS_LABELS[: len(bias)]))
    path = directory / "model.parquet"
    table.to_parquet(path)
    return path


def write_onnx(directory: Path, weights, bias) -> Path:
    """``model.onnx`` (input ``input`` [batch, n_in]; outputs ``scores``, ``label``), for onnxruntime."""
    return write_onnx_linear(Path(directory) / "model.onnx", weights, bias)


# example folder (examples/NAME) -> writer of one version
WRITERS: dict[str, Callable[[Path, Sequence[Sequence[float]], Sequence[float]], Path]] = {
    "mlflow": write_mlflow,
    "sklearn": write_sklearn,
    "pytorch": write_pytorch,
    "numpy": write_numpy,
    "pandas": write_pandas,
    "onnx-python": write_onnx,
}
FRAMEWORKS: tuple[str, ...] = tuple(WRITERS)


def write_model(framework: str, directory: Path, weights, bias) -> Path:
    """Write one version of `framework`'s model into `directory`; return `directory`."""
    WRITERS[framework](Path(directory), weights, bias)
    return Path(directory)
