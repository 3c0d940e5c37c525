"""training.py without any server: fitting, every TrainingError, artifacts, device choice."""

import numpy as np
import polars as pl
import pytest

from datalab.ml import training
from datalab.ml.training import DeviceError, RowsError, TrainingError


def frame(n: int = 120, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, n)
    return pl.DataFrame({
        "x": x,
        "z": rng.normal(size=n),
        "y": 3 * x + rng.normal(0, 0.3, n),  # regression target
        "label": np.where(x > 5, "high", "low"),  # separable classes
        "flag": x > 5,
        "level": (x // 4).astype(np.int64),  # 3 integer classes
        "count": np.arange(n),  # integer with many values
        "city": ["Paris"] * n,
    })


@pytest.mark.parametrize("kind", ["linear", "random_forest", "gradient_boosting"])
def test_regression_fits_a_known_line(kind):
    model = training.fit(frame(), "y", ["x", "z"], kind)
    assert model.task == "regression" and model.classes is None and model.device == "cpu"
    assert model.metrics["r2"] > 0.9 and set(model.metrics) == {"r2", "rmse", "mae"}
    assert model.n_train + model.n_test == 120 and model.n_test == 24
    [(value, proba)] = model.predict(model.matrix([{"x": 4.0, "z": 0}]))
    assert proba is None and value == pytest.approx(12.0, abs=1.5)


@pytest.mark.parametrize("kind", ["logistic", "random_forest", "gradient_boosting"])
def test_classification_of_separable_classes(kind):
    model = training.fit(frame(), "label", ["x"], kind)
    assert model.task == "classification" and model.classes == ["high", "low"]
    assert model.metrics["accuracy"] >= 0.9 and set(model.metrics) == {"accuracy", "f1_macro"}
    results = model.predict(model.matrix([{"x": 1.0}, {"x": 9.0}]))
    assert [label for label, _ in results] == ["low", "high"]
    for _, proba in results:
        assert len(proba) == 2 and sum(proba) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("target", "task"),
    [("y", "regression"), ("count", "regression"), ("label", "classification"),
     ("flag", "classification"), ("level", "classification")],
)
def test_tree_task_follows_the_target_type(target, task):
    assert training.fit(frame(), target, ["x"], "random_forest", params={"n_estimators": 5}).task == task


def test_boolean_features_and_targets():
    model = training.fit(frame(), "flag", ["x"], "logistic")
    assert model.classes == [False, True]
    assert training.fit(frame(), "y", ["flag"], "linear").metrics["r2"] > 0.5


def test_rows_with_nulls_are_dropped():
    df = frame(40).with_columns(
        pl.when(pl.int_range(pl.len()) < 10).then(None).otherwise(pl.col("x")).alias("x"),
        pl.when(pl.int_range(pl.len()) == 39).then(float("nan")).otherwise(pl.col("y")).alias("y"),
    )
    model = training.fit(df, "y", ["x"], "linear")
    assert model.n_train + model.n_test == 29


@pytest.mark.parametrize(
    ("target", "features", "kind", "message"),
    [
        ("nope", ["x"], "linear", "Unknown column(s): 'nope'"),
        ("y", ["x", "ghost"], "linear", "Unknown column(s): 'ghost'"),
        ("y", ["x", "y"], "linear", "cannot also be a feature"),
        ("y", ["city"], "linear", "Features must be numeric"),
        ("y", ["label"], "random_forest", "'label' (string)"),
        ("label", ["x"], "linear", "needs a numeric target"),
        ("y", ["x"], "logistic", "needs a categorical target"),
        ("city", ["x"], "logistic", "single class"),
        ("city", ["x"], "random_forest", "single class"),
        ("y", [], "linear", "at least one feature"),
        ("y", ["x", "x"], "linear", "distinct"),
        ("y", ["x"], "svm", "Unknown kind"),
    ],
)
def test_training_errors(target, features, kind, message):
    with pytest.raises(TrainingError) as info:
        training.fit(frame(), target, features, kind)
    assert message in str(info.value)


def test_empty_and_too_small_datasets():
    with pytest.raises(TrainingError, match="The dataset is empty"):
        training.fit(frame().clear(), "y", ["x"], "linear")
    with pytest.raises(TrainingError, match="Too few rows"):
        training.fit(frame(6), "y", ["x"], "linear")
    all_null = frame(20).with_columns(pl.lit(None, dtype=pl.Float64).alias("x"))
    with pytest.raises(TrainingError, match="No rows left"):
        training.fit(all_null, "y", ["x"], "linear")


def test_header_only_csv_is_empty(tmp_path):
    (tmp_path / "h.csv").write_text("x,y\n")
    with pytest.raises(TrainingError, match="empty"):
        training.fit(pl.read_csv(tmp_path / "h.csv"), "y", ["x"], "linear")


def test_parameters_are_checked():
    model = training.fit(frame(), "y", ["x"], "random_forest", params={"n_estimators": 7, "max_depth": 3})
    assert len(model.estimator.estimators_) == 7 and model.params == {"n_estimators": 7, "max_depth": 3}
    with pytest.raises(TrainingError, match="Unknown parameter 'depth'"):
        training.fit(frame(), "y", ["x"], "random_forest", params={"depth": 3})
    with pytest.raises(TrainingError, match="'n_estimators' must be a int"):
        training.fit(frame(), "y", ["x"], "random_forest", params={"n_estimators": 0})
    with pytest.raises(TrainingError, match="Unknown parameter 'C' for linear"):
        training.fit(frame(), "y", ["x"], "linear", params={"C": 1.0})


def test_check_request_uses_metadata_types_only():
    columns = {"x": "float", "d": "date", "y": "integer", "s": "string"}
    training.check_request(columns, "y", ["x"], "linear", rows=10)
    with pytest.raises(TrainingError, match="'d' \\(date\\)"):
        training.check_request(columns, "y", ["x", "d"], "linear")
    with pytest.raises(TrainingError, match="empty"):
        training.check_request(columns, "y", ["x"], "linear", rows=0)


def test_prediction_rows_are_checked_and_every_problem_named():
    model = training.fit(frame(), "y", ["x", "z"], "linear")
    with pytest.raises(RowsError) as info:
        model.matrix([{"x": 1, "z": 2}, {"x": "3"}, {"x": None, "z": float("inf")}])
    assert info.value.errors == [
        {"row": 1, "feature": "x", "msg": "must be a finite number, not str"},
        {"row": 1, "feature": "z", "msg": "missing"},
        {"row": 2, "feature": "x", "msg": "must be a finite number, not null"},
        {"row": 2, "feature": "z", "msg": "must be a finite number, not float"},
    ]
    assert "row 1 'z': missing" in str(info.value)
    with pytest.raises(RowsError, match="not int"):
        model.matrix([{"x": 10**400, "z": 0}])
    assert model.matrix([{"x": 1, "z": True, "extra": "ignored"}]).tolist() == [[1.0, 1.0]]


def test_save_load_round_trip(tmp_path):
    model = training.fit(frame(), "label", ["x", "z"], "gradient_boosting")
    path = tmp_path / "models" / "m.joblib"
    training.save(model, path)
    assert [p.name for p in path.parent.iterdir()] == ["m.joblib"]  # no temp file left
    loaded = training.load(path)
    X = model.matrix([{"x": 2, "z": 0}, {"x": 8, "z": 1}])
    assert loaded.predict(X) == model.predict(X)
    assert (loaded.metrics, loaded.classes, loaded.features) == (model.metrics, model.classes, model.features)
    training.save(model, path)  # replacing an artifact is atomic too
    assert training.load(path).task == "classification"


def test_load_refuses_what_is_not_a_model(tmp_path):
    import joblib

    joblib.dump({"not": "a model"}, tmp_path / "x.joblib")
    with pytest.raises(TypeError, match="not a TrainedModel"):
        training.load(tmp_path / "x.joblib")


def test_select_device_logic():
    assert training.select_device("cpu", unusable=lambda: pytest.fail("cpu needs no probe")) == "cpu"
    assert training.select_device("auto", unusable=lambda: "no GPU here") == "cpu"
    assert training.select_device("auto", unusable=lambda: None) == "cuda"
    assert training.select_device("cuda", unusable=lambda: None) == "cuda"
    with pytest.raises(DeviceError, match="DATALAB_DEVICE=cuda but no usable GPU: nvidia-smi is not on PATH"):
        training.select_device("cuda", unusable=lambda: "nvidia-smi is not on PATH")
    with pytest.raises(DeviceError, match="Unknown device setting 'tpu'"):
        training.select_device("tpu")


def test_cuda_on_this_machine():
    """The real probe: on a machine without a GPU, "cuda" fails saying why, "auto" is cpu."""
    reason = training.gpu_unusable_reason()
    if reason is None:
        assert training.select_device("cuda") == "cuda"
        return
    assert training.select_device("auto") == "cpu"
    with pytest.raises(DeviceError) as info:
        training.select_device("cuda")
    assert reason in str(info.value)


def test_gpu_path_with_numpy_standin_for_the_gpu(monkeypatch):
    """No GPU here: NumPy stands in for torch/cupy, so the array API dispatch path (fit under
    array_api_dispatch, fitted arrays moved back to NumPy) runs for real on the CPU."""
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    monkeypatch.setattr(training, "_device_namespace", lambda: (lambda a: a))
    model = training.fit(frame(), "label", ["x"], "logistic", device="cuda")
    assert model.device == "cuda"
    assert isinstance(model.estimator[-1].coef_, np.ndarray)
    assert [label for label, _ in model.predict(model.matrix([{"x": 1}, {"x": 9}]))] == ["low", "high"]
    # Estimators without a GPU implementation in scikit-learn fit on the CPU, and say so.
    assert training.fit(frame(), "y", ["x"], "random_forest", device="cuda").device == "cpu"


def test_cuda_fit_without_gpu_fails_clearly(monkeypatch):
    monkeypatch.setattr(training, "_device_namespace", lambda: None)
    with pytest.raises(DeviceError, match="neither torch nor cupy"):
        training.fit(frame(), "label", ["x"], "logistic", device="cuda")


def test_the_service_refuses_to_start_on_cuda_without_a_gpu(monkeypatch):
    from datalab.ai.app import AiSettings, build_app

    monkeypatch.setattr(training, "gpu_unusable_reason", lambda: "nvidia-smi is not on PATH")
    with pytest.raises(DeviceError, match="DATALAB_DEVICE=cuda but no usable GPU"):
        build_app(AiSettings(device="cuda"))
    assert build_app(AiSettings(device="auto")).state.device == "cpu"
