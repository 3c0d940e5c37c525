"""Artifacts are written and read only inside the models directory (training.artifact_path,
save/load with root): a model id is a uuid, and no path, `..` or symlink leads out."""

import uuid

import numpy as np
import polars as pl
import pytest

from datalab.ml import training


@pytest.fixture(scope="module")
def model():
    x = np.arange(40, dtype=float)
    return training.fit(pl.DataFrame({"x": x, "y": 2 * x + 1}), "y", ["x"], "linear")


@pytest.mark.parametrize("model_id", ["../../x", "../x", "/tmp/x", "x/../../y", "..", "", "A" * 36,
                                      str(uuid.uuid4()).upper(), str(uuid.uuid4()) + "/..", "x\x00y", None])
def test_artifact_path_refuses_what_is_not_a_model_id(tmp_path, model_id):
    with pytest.raises(training.ArtifactPathError):
        training.artifact_path(tmp_path / "models", model_id)


def test_artifact_path_is_the_id_under_models(tmp_path):
    model_id = str(uuid.uuid4())
    expected = (tmp_path / "models").resolve() / f"{model_id}.joblib"
    assert training.artifact_path(tmp_path / "models", model_id) == expected


def test_save_and_load_refuse_paths_outside_root(tmp_path, model):
    models = tmp_path / "models"
    models.mkdir()
    outside = tmp_path / "outside.joblib"
    for path in (outside, models / ".." / "outside.joblib", models):
        with pytest.raises(training.ArtifactPathError):
            training.save(model, path, root=models)
        with pytest.raises(training.ArtifactPathError):
            training.load(path, root=models)
    assert not outside.exists()

    # A symlink in models/ pointing out is followed, and so refused.
    training.save(model, outside)
    link = models / f"{uuid.uuid4()}.joblib"
    link.symlink_to(outside)
    with pytest.raises(training.ArtifactPathError):
        training.load(link, root=models)

    inside = training.artifact_path(models, str(uuid.uuid4()))
    training.save(model, inside, root=models)
    assert training.load(inside, root=models).kind == "linear"
