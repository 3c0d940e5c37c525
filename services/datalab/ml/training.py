"""Model training, pure: polars + scikit-learn, no web app (the ai service and the compute
worker import it).

Rules, in one place (the service checks a request against the dataset's metadata with
`check_request` before downloading anything; `fit` applies the same rules to the data):

- Features must be numeric columns (integer, float, boolean; booleans become 0/1). Strings
  are refused, not one-hot encoded: an encoding chosen silently would be part of the model
  contract nobody asked for. Dates too. The same rule holds for every kind.
- The task follows the kind and the target's type:
    linear             regression; the target must be integer or float.
    logistic           classification; the target must be string, boolean or integer.
    random_forest,     classification when the target is string or boolean, or integer
    gradient_boosting  with at most CLASSIFY_MAX_INT_CLASSES distinct values; otherwise
                       (float, or integer with many values) regression.
  A classification target needs 2..MAX_CLASSES classes.
- Rows with a null (or NaN) in the target or a feature are dropped; at least MIN_ROWS must
  remain. 20 % of them (seeded, stratified when every class allows it) are held out for
  the metrics; the model served is the one fitted on the other 80 %.

Devices: `select_device` turns the setting ("auto", "cpu", "cuda") into "cpu" or "cuda".
On "cuda", an estimator that scikit-learn can run through array API dispatch (its tags say
`array_api_support`; with scikit-learn 1.9 that is logistic: StandardScaler +
LogisticRegression(lbfgs)) is fitted on the GPU with torch (or cupy) arrays, then its
fitted arrays are moved back to NumPy so artifacts load and predict anywhere. Estimators
without a GPU implementation in scikit-learn (LinearRegression, RandomForest*,
HistGradientBoosting*) fit on the CPU. `TrainedModel.device` records where the fit really
ran. Array API dispatch needs SCIPY_ARRAY_API=1 in the environment before scipy loads (the
GPU job sets it); without it the GPU counts as unusable.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import joblib
import numpy as np
import polars as pl

from datalab.contracts.datasets import column_kind

log = logging.getLogger("datalab.ml.training")

Kind = Literal["linear", "logistic", "random_forest", "gradient_boosting"]
Task = Literal["regression", "classification"]
KINDS: tuple[str, ...] = get_args(Kind)

FEATURE_TYPES = frozenset({"integer", "float", "boolean"})
MIN_ROWS = 10
TEST_FRACTION = 0.2
CLASSIFY_MAX_INT_CLASSES = 20
MAX_CLASSES = 100

# Hyperparameters a caller may set per kind: name -> (type, lowest, highest).
PARAMS: dict[str, dict[str, tuple[type, float, float]]] = {
    "linear": {},
    "logistic": {"C": (float, 1e-6, 1e6), "max_iter": (int, 1, 100_000)},
    "random_forest": {
        "n_estimators": (int, 1, 2_000),
        "max_depth": (int, 1, 200),
        "min_samples_leaf": (int, 1, 100_000),
    },
    "gradient_boosting": {
        "max_iter": (int, 1, 10_000),
        "learning_rate": (float, 1e-6, 10.0),
        "max_depth": (int, 1, 200),
    },
}


class TrainingError(ValueError):
    """The request or the data cannot make a model; the message says why (a 422 upstream)."""


class RowsError(TrainingError):
    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        shown = "; ".join(f"row {e['row']} {e['feature']!r}: {e['msg']}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"Rows do not match the model's features: {shown}{more}.")


class DeviceError(RuntimeError):
    """The configured device cannot be used (raised at start-up)."""


@dataclass
class TrainedModel:
    estimator: Any
    kind: Kind
    task: Task
    target: str
    features: list[str]
    metrics: dict[str, float | None]
    n_train: int
    n_test: int
    classes: list[Any] | None  # classification: labels, in the order of probability columns
    device: str  # where the fit ran: "cpu" | "cuda"
    params: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float = 0.0

    def matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Prediction rows (dicts) as a float matrix in feature order; a RowsError lists
        every missing or non-numeric value (extra keys are ignored)."""
        errors: list[dict[str, Any]] = []
        X = np.empty((len(rows), len(self.features)), dtype=np.float64)
        for i, row in enumerate(rows):
            for j, name in enumerate(self.features):
                if name not in row:
                    errors.append({"row": i, "feature": name, "msg": "missing"})
                    continue
                value = row[name]
                # bool is an int in Python; both are fine (boolean features are 0/1).
                number = _finite(value) if isinstance(value, (int, float)) else None
                if number is not None:
                    X[i, j] = number
                else:
                    got = "null" if value is None else type(value).__name__
                    errors.append({"row": i, "feature": name, "msg": f"must be a finite number, not {got}"})
        if errors:
            raise RowsError(errors)
        return X

    def predict(self, X: np.ndarray) -> list[tuple[Any, list[float] | None]]:
        """One (prediction, class probabilities or None) per row of X."""
        if self.task == "regression":
            return [(float(v), None) for v in self.estimator.predict(X)]
        proba = self.estimator.predict_proba(X)  # one call gives both the label and the scores
        labels = [self.classes[k] for k in proba.argmax(axis=1)]  # type: ignore[index]
        return list(zip(labels, proba.tolist(), strict=True))


def _finite(value: float) -> float | None:
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return number if math.isfinite(number) else None


# -- checks shared by the service (metadata) and fit (data) ---------------------------------

def check_request(
    columns: Mapping[str, str], target: str, features: Sequence[str], kind: str,
    params: Mapping[str, Any] | None = None, rows: int | None = None,
) -> dict[str, Any]:
    """Validate a training request against column types ({name: "integer"|"float"|...}, the
    data service's vocabulary) before any data is read; the checked hyperparameters.
    Raises TrainingError."""
    if kind not in KINDS:
        raise TrainingError(f"Unknown kind {kind!r}; use one of {', '.join(KINDS)}.")
    if not features:
        raise TrainingError("Give at least one feature.")
    if len(set(features)) != len(features):
        raise TrainingError("Features must be distinct.")
    unknown = [c for c in [target, *features] if c not in columns]
    if unknown:
        raise TrainingError(f"Unknown column(s): {', '.join(map(repr, unknown))}.")
    if target in features:
        raise TrainingError(f"The target {target!r} cannot also be a feature.")
    if rows == 0:  # before the types: an empty CSV's columns are all typed string
        raise TrainingError("The dataset is empty.")
    bad = [f"{c!r} ({columns[c]})" for c in features if columns[c] not in FEATURE_TYPES]
    if bad:
        raise TrainingError(
            f"Features must be numeric (integer, float or boolean); not: {', '.join(bad)}. "
            "Strings are not encoded for you."
        )
    ttype = columns[target]
    if kind == "linear" and ttype not in ("integer", "float"):
        raise TrainingError(f"A linear model needs a numeric target; {target!r} is {ttype}.")
    if kind == "logistic" and ttype not in ("string", "boolean", "integer"):
        raise TrainingError(
            f"A logistic model needs a categorical target (string, boolean or integer); "
            f"{target!r} is {ttype}. Use linear for a continuous target."
        )
    if ttype not in ("integer", "float", "string", "boolean"):
        raise TrainingError(f"The target {target!r} has type {ttype}, which no model here predicts.")
    return check_params(kind, params or {})


def check_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    allowed = PARAMS[kind]
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise TrainingError(f"Unknown parameter {name!r} for {kind} (known: {known}).")
        typ, lo, hi = allowed[name]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if typ is int:
            ok = ok and float(value).is_integer()
        if not ok or not lo <= value <= hi:
            raise TrainingError(f"Parameter {name!r} must be a {typ.__name__} in [{lo:g}, {hi:g}].")
        out[name] = typ(value)
    return out


def _task(kind: str, y: pl.Series) -> Task:
    if kind == "linear":
        return "regression"
    if kind == "logistic":
        return "classification"
    ttype = column_kind(y.dtype)
    if ttype in ("string", "boolean"):
        return "classification"
    if ttype == "integer" and y.n_unique() <= CLASSIFY_MAX_INT_CLASSES:
        return "classification"
    return "regression"


def _estimator(kind: str, task: Task, seed: int, params: dict[str, Any]) -> Any:
    # Imported here: the service imports this module at start-up, sklearn is heavy.
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classify = task == "classification"
    if kind == "linear":
        return LinearRegression()
    if kind == "logistic":  # scaled, so lbfgs converges whatever the feature units
        return make_pipeline(StandardScaler(), LogisticRegression(**{"max_iter": 1000, **params}))
    if kind == "random_forest":
        cls = RandomForestClassifier if classify else RandomForestRegressor
        return cls(**{"n_estimators": 100, **params}, random_state=seed, n_jobs=-1)
    cls = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
    return cls(**params, random_state=seed)


def fit(
    frame: pl.DataFrame,
    target: str,
    features: list[str],
    kind: Kind,
    device: str = "cpu",
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> TrainedModel:
    """Fit `kind` on `frame` (see the module doc for the rules); metrics on a held-out 20 %."""
    from sklearn.model_selection import train_test_split

    if frame.height == 0:
        raise TrainingError("The dataset is empty.")
    columns = {name: column_kind(dtype) for name, dtype in frame.schema.items()}
    checked = check_request(columns, target, features, kind, params)
    used = frame.select([target, *features]).drop_nulls()
    if floats := [c for c, t in used.schema.items() if t.is_float()]:
        used = used.filter(~pl.any_horizontal([pl.col(c).is_nan() for c in floats]))
    if used.height == 0:
        raise TrainingError("No rows left after dropping rows with nulls in the target or features.")
    if used.height < MIN_ROWS:
        raise TrainingError(
            f"Too few rows to train and evaluate: {used.height} without nulls, at least {MIN_ROWS} needed."
        )
    y_series = used[target]
    task = _task(kind, y_series)
    X = used.select(features).cast(pl.Float64).to_numpy()
    classes: list[Any] | None = None
    stratify = None
    if task == "classification":
        # Labels become codes 0..k-1 (GPU arrays hold no strings); `classes` maps them back.
        classes = y_series.unique().sort().to_list()
        if len(classes) < 2:
            raise TrainingError(f"The target {target!r} has a single class ({classes[0]!r}); nothing to classify.")
        if len(classes) > MAX_CLASSES:
            raise TrainingError(f"The target {target!r} has {len(classes)} classes; at most {MAX_CLASSES}.")
        y = _codes(y_series, classes)
        counts = np.bincount(y)
        n_test = math.ceil(used.height * TEST_FRACTION)
        if counts.min() >= 2 and n_test >= len(classes):
            stratify = y
    else:
        y = y_series.cast(pl.Float64).to_numpy()
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_FRACTION, random_state=seed, stratify=stratify
    )
    if task == "classification" and len(np.unique(y_train)) < 2:
        raise TrainingError("The training split holds a single class; add rows of the other classes.")

    start = time.perf_counter()
    estimator, ran_on = _fit_on(device, _estimator(kind, task, seed, checked), X_train, y_train)
    fit_seconds = time.perf_counter() - start
    if hasattr(estimator, "n_jobs"):
        estimator.n_jobs = None  # predict one request on one core: the service has many
    return TrainedModel(
        estimator=estimator, kind=kind, task=task, target=target, features=list(features),
        metrics=_metrics(task, estimator, X_test, y_test), n_train=len(y_train), n_test=len(y_test),
        classes=classes, device=ran_on, params=checked, fit_seconds=fit_seconds,
    )


def _codes(y: pl.Series, classes: list[Any]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.fromiter((index[v] for v in y.to_list()), dtype=np.int64, count=y.len())


def _metrics(task: Task, estimator: Any, X: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    from sklearn import metrics as m

    pred = estimator.predict(X)
    if task == "regression":
        values = {
            "r2": m.r2_score(y, pred) if len(y) >= 2 else math.nan,
            "rmse": math.sqrt(m.mean_squared_error(y, pred)),
            "mae": m.mean_absolute_error(y, pred),
        }
    else:
        values = {"accuracy": m.accuracy_score(y, pred), "f1_macro": m.f1_score(y, pred, average="macro")}
    # JSON has no NaN: an undefined metric (e.g. r2 of a constant test split) is null.
    return {k: (float(v) if math.isfinite(v) else None) for k, v in values.items()}


# -- devices ----------------------------------------------------------------------------------

def _device_namespace() -> Callable[[np.ndarray], Any] | None:
    """A function moving a NumPy array to the GPU with torch or cupy, if either sees one."""
    try:
        if importlib.util.find_spec("torch") is not None:
            import torch  # type: ignore[import-not-found, unused-ignore]  # optional: GPU only

            if torch.cuda.is_available() and torch.cuda.device_count() > 0:
                return lambda a: torch.as_tensor(a, device="cuda")
        if importlib.util.find_spec("cupy") is not None:
            import cupy  # type: ignore[import-not-found, unused-ignore]  # optional: GPU only

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return cupy.asarray
    except Exception as exc:  # a broken driver or library means "no usable GPU", not a crash
        log.warning("GPU probe failed", extra={"error": f"{type(exc).__name__}: {exc}"})
    return None


def gpu_unusable_reason() -> str | None:
    """None when a GPU can run training here; else why not (cheapest checks first)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "nvidia-smi is not on PATH (no NVIDIA driver)"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed ({type(exc).__name__})"
    if out.returncode != 0 or "GPU" not in out.stdout:
        return "nvidia-smi lists no GPU"
    if os.environ.get("SCIPY_ARRAY_API") != "1":
        return "SCIPY_ARRAY_API=1 is not set (scikit-learn's array API dispatch needs it)"
    if _device_namespace() is None:
        return "neither torch nor cupy is installed with a CUDA device"
    return None


def select_device(setting: str, unusable: Callable[[], str | None] | None = None) -> str:
    """The device setting ("auto" | "cpu" | "cuda") as the device to use: "cpu" | "cuda".
    "cuda" without a usable GPU raises DeviceError saying why."""
    if setting == "cpu":
        return "cpu"
    if setting not in ("auto", "cuda"):
        raise DeviceError(f"Unknown device setting {setting!r}; use auto, cpu or cuda.")
    reason = (unusable or gpu_unusable_reason)()
    if reason is None:
        return "cuda"
    if setting == "cuda":
        raise DeviceError(f"DATALAB_DEVICE=cuda but no usable GPU: {reason}.")
    log.info("no usable GPU, training on CPU", extra={"reason": reason})
    return "cpu"


def _array_api_capable(estimator: Any) -> bool:
    from sklearn.utils import get_tags

    # A Pipeline carries no tag of its own: it can when every step can.
    steps = [s for _, s in estimator.steps] if hasattr(estimator, "steps") else [estimator]
    return all(get_tags(s).array_api_support for s in steps)


def _fit_on(device: str, estimator: Any, X: np.ndarray, y: np.ndarray,
            to_device: Callable[[np.ndarray], Any] | None = None) -> tuple[Any, str]:
    """Fit; on "cuda" through array API dispatch when the estimator supports it. Returns
    (estimator with NumPy arrays, device the fit ran on)."""
    if device != "cuda" or not _array_api_capable(estimator):
        return estimator.fit(X, y), "cpu"
    import sklearn
    from sklearn.utils._array_api import move_estimator_to  # no public equivalent yet

    to_device = to_device or _device_namespace()
    if to_device is None:
        raise DeviceError("the GPU went away: neither torch nor cupy sees a CUDA device")
    with sklearn.config_context(array_api_dispatch=True):
        estimator.fit(to_device(X), to_device(y))
    # Back to NumPy: the artifact must load, and predict, on nodes without a GPU.
    return move_estimator_to(estimator, np, "cpu"), "cuda"


# -- artifacts -----------------------------------------------------------------------------

# What the ai service gives a model: str(uuid.uuid4()). Nothing else names an artifact.
MODEL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class ArtifactPathError(ValueError):
    """A model id that is not one, or an artifact path outside the models directory."""


def artifact_path(models_dir: Path | str, model_id: str) -> Path:
    """Where model `model_id`'s artifact lives: models_dir/{id}.joblib, resolved."""
    if not isinstance(model_id, str) or not MODEL_ID.fullmatch(model_id):
        raise ArtifactPathError(f"Not a model id: {str(model_id)[:80]!r}.")
    return _inside(Path(models_dir) / f"{model_id}.joblib", models_dir)


def _inside(path: Path | str, root: Path | str) -> Path:
    """`path` resolved (symlinks and `..` followed); ArtifactPathError unless under `root`."""
    base = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise ArtifactPathError(f"{Path(path).name!r} is not inside the models directory.")
    return resolved


def save(model: TrainedModel, path: Path | str, *, root: Path | str | None = None) -> None:
    """Write atomically: a temp file in the same directory, fsync, then os.replace. With
    `root` (the models directory), a path that resolves outside it is refused."""
    path = _inside(path, root) if root is not None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            joblib.dump(model, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path | str, *, root: Path | str | None = None) -> TrainedModel:
    """Load an artifact (with `root`, only from inside it: joblib runs pickles)."""
    if root is not None:
        path = _inside(path, root)
    model = joblib.load(path)
    if not isinstance(model, TrainedModel):
        raise TypeError(f"{path} holds a {type(model).__name__}, not a TrainedModel")
    return model
