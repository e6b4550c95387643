"""A project copied to another folder (or machine) with its MLflow store loads its registered models from its own
``mlruns/``: the absolute artifact locations MLflow recorded are rewritten to the new folder, and only those."""

import shutil
import sqlite3

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from image_emotion.tracking.relocate import relocate, relocate_project_store


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input * 2


def _project(root) -> None:
    """An MLflow store at ``root/mlflow.db`` with artifacts in ``root/mlruns`` and one registered model."""
    root.mkdir()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.create_experiment("moving", artifact_location=(root / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        mlflow.pyfunc.log_model(name="model", python_model=Doubler(), registered_model_name="moved")
    mlflow.set_tracking_uri(None)


def _locations(db) -> list[str]:
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT artifact_location FROM experiments UNION ALL SELECT artifact_uri FROM runs").fetchall()
        return [r[0] for r in rows] + [r[0] for r in c.execute("SELECT storage_location FROM model_versions")]


def test_a_moved_project_loads_its_model_from_its_own_folder_after_relocation(tmp_path):
    old, new = tmp_path / "old", tmp_path / "elsewhere/new"
    _project(old)
    new.parent.mkdir()
    shutil.move(old, new)  # the old folder is gone, as on another machine
    client_uri = f"sqlite:///{new / 'mlflow.db'}"
    mlflow.set_tracking_uri(client_uri)
    with pytest.raises((MlflowException, OSError)):
        mlflow.pyfunc.load_model("models:/moved/1")
    assert relocate(new / "mlflow.db", new, quiet=True) >= 4  # experiment, run, model version, logged model
    model = mlflow.pyfunc.load_model("models:/moved/1")
    assert model.predict(pd.DataFrame({"x": [1, 4]}))["x"].tolist() == [2, 8]
    locations = _locations(new / "mlflow.db")
    assert not [loc for loc in locations if str(old) in loc]
    assert len([loc for loc in locations if str(new / "mlruns") in loc]) == 3  # experiment, run, model version
    assert relocate(new / "mlflow.db", new, quiet=True) == 0  # once moved, nothing more to do
    mlflow.set_tracking_uri(None)


def test_locations_outside_the_old_mlruns_and_missing_files_are_left_alone(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    _project(old)
    shutil.move(old, new)
    with sqlite3.connect(new / "mlflow.db") as c:
        c.execute("UPDATE experiments SET artifact_location = 's3://bucket/mlflow' WHERE name = 'moving'")
        c.execute("UPDATE experiments SET artifact_location = ? WHERE name = 'Default'", (f"{old}/mlruns-other/0",))
    shutil.rmtree(new / "mlruns")
    assert relocate(new / "mlflow.db", new, quiet=True) == 0  # no mlruns/ here: nothing points anywhere new
    (new / "mlruns").mkdir()
    assert relocate(new / "mlflow.db", new, quiet=True) == 0  # the runs' files are not here either
    with sqlite3.connect(new / "mlflow.db") as c:
        locations = dict(c.execute("SELECT name, artifact_location FROM experiments").fetchall())
    assert locations == {"Default": f"{old}/mlruns-other/0", "moving": "s3://bucket/mlflow"}


def test_only_the_projects_default_store_is_relocated_on_use(tmp_path, monkeypatch, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    _project(old)
    shutil.move(old, new)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(new)
    assert relocate_project_store(f"sqlite:///{new / 'mlflow.db'}") == 0  # a store named explicitly: not ours
    assert relocate_project_store("sqlite:///mlflow.db") >= 4  # the project's default store, here
    assert "was moved;" in capsys.readouterr().err and str(new / "mlruns") in _locations(new / "mlflow.db")[1]
