"""Dataset lineage: DVC's hash of each dataset role (dvc add, dvc import-url, dvc.lock outputs and what lies inside
them, unversioned listings), recorded on an MLflow run and read back from a registered model version."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from image_emotion.config import Config, TransferSet
from image_emotion.errors import DatasetError
from image_emotion.tracking.lineage import (
    DataVersion,
    LineageError,
    data_version,
    data_versions,
    dataset_roots,
    format_lineage,
    log_data_versions,
    model_lineage,
)


def _sh(cwd: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return done.stdout


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC project shared by this module's DVC tests (each works on its own paths in it)."""
    proj = tmp_path_factory.mktemp("proj")
    _sh(proj, "git", "init", "-q")
    _sh(proj, "dvc", "init", "-q")
    return proj


def _dvc_file_out(dvc_file: Path) -> dict:
    """What DVC wrote into a .dvc file (read here, not through the module under test)."""
    return yaml.safe_load(dvc_file.read_text())["outs"][0]


def test_dvc_add_gives_the_hash_dvc_wrote_and_a_new_one_after_a_change(project):
    _write(project / "data/x", {"a.txt": "a\n", "sub/b.txt": "bb\n"})
    _sh(project, "dvc", "add", "-q", "data/x")
    first = data_version(Path("data/x"), project)
    assert first == DataVersion("data/x", _dvc_file_out(project / "data/x.dvc")["md5"], "dvc add")
    assert first.digest.endswith(".dir") and len(first.digest) == 36

    (project / "data/x/a.txt").write_text("changed, and longer\n")
    stale = data_version(Path("data/x"), project)
    assert stale.digest == first.digest and stale.changed  # what DVC recorded, flagged as no longer the data

    _sh(project, "dvc", "add", "-q", "data/x")
    second = data_version(project / "data/x", project)  # an absolute root finds the same .dvc file
    assert second.digest == _dvc_file_out(project / "data/x.dvc")["md5"]
    assert second.digest != first.digest and not second.changed


def test_dvc_import_url_records_the_url(project, tmp_path):
    src = _write(tmp_path / "elsewhere" / "photos", {"p1.jpg": "1", "p2.jpg": "22"})
    (project / "data").mkdir(exist_ok=True)
    _sh(project, "dvc", "import-url", "-q", str(src), "data/imported")
    version = data_version(Path("data/imported"), project)
    assert version.source == "dvc import-url"
    assert version.url == str(src)
    assert version.digest == _dvc_file_out(project / "data/imported.dvc")["md5"]


DVC_YAML = """\
stages:
  make:
    cmd: python -c "import pathlib as p; [p.Path('out', d).mkdir(parents=True, exist_ok=True) for d in 'ab'];
      p.Path('out/a/1.txt').write_text('one'); p.Path('out/a/2.txt').write_text('two');
      p.Path('out/b/3.txt').write_text('three')"
    outs:
      - out
  use:
    cmd: python -c "open('used.txt', 'w').write('ok')"
    deps:
      - out/a
    outs:
      - used.txt
"""


def test_stage_outputs_and_directories_inside_them(project):
    (project / "dvc.yaml").write_text(DVC_YAML)
    _sh(project, "dvc", "repro", "-q")
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    out, dep = lock["make"]["outs"][0], lock["use"]["deps"][0]  # DVC's own hash of out/ and of out/a

    whole = data_version(Path("out"), project)
    assert (whole.digest, whole.source, whole.changed) == (out["md5"], "dvc stage make", False)
    inside = data_version(Path("out/a"), project)
    assert (inside.digest, inside.source, inside.within) == (dep["md5"], "dvc stage make", None)
    assert inside.digest != whole.digest

    # without the listing in DVC's cache (a clone before `dvc pull`), the container's hash stands for it
    cache = project / ".dvc/cache/files/md5"
    (cache / out["md5"][:2] / out["md5"][2:]).unlink()
    assert data_version(Path("out/a"), project) == DataVersion("out/a", out["md5"], "dvc stage make", within="out")


def test_unversioned_listing_changes_with_any_file(tmp_path):
    root = _write(tmp_path / "plain", {"a.jpg": "aaa", "s/b.jpg": "bbb"})
    first = data_version(root, tmp_path)
    assert first.source == "unversioned" and len(first.digest) == 32
    assert data_version(root, tmp_path) == first  # stable while nothing changes

    (root / "s/b.jpg").write_text("BBB")  # same size, another mtime
    os.utime(root / "s/b.jpg", ns=(1, 1))
    touched = data_version(root, tmp_path)
    assert touched.digest != first.digest
    (root / "c.jpg").write_text("c")
    assert data_version(root, tmp_path).digest not in (first.digest, touched.digest)


def test_missing_root_names_role_path_and_setting(tmp_path):
    config = Config().with_overrides([f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(DatasetError) as err:
        data_versions(config, tmp_path)
    message = str(err.value)
    assert "data (data.root)" in message and str(tmp_path / "nowhere") in message and "dvc pull" in message


def test_dataset_roots_cover_every_role(tmp_path):
    default = dataset_roots(Config())
    assert default == {
        "data": Path("data/synthetic/main"),
        "detector_data": Path("data/synthetic/regions"),
        "objects": Path("data/synthetic/objects"),
        "transfer:small": Path("data/synthetic/small"),
        "generative:ekman": Path("data/synthetic/ekman"),
    }
    sets = (
        TransferSet(name="iaps", dataset="iaps", root="/d/IAPS"),
        TransferSet(name="art", dataset="artphoto", root="a"),
    )
    config = Config(transfer={"sets": sets}, detector={"object_weights": "/w/coco.pth"})
    roots = dataset_roots(config)
    assert "objects" not in roots  # pretrain_objects loads the COCO checkpoint instead of reading the set
    assert roots["transfer:iaps"] == Path("/d/IAPS") and roots["transfer:art"] == Path("a")
    assert "transfer:small" not in roots

    _write(tmp_path / "a", {"x.jpg": "x"})
    found = data_versions(config, tmp_path, skip_missing=True)
    assert list(found) == ["transfer:art"] and found["transfer:art"].source == "unversioned"


@pytest.fixture
def registry(mlflow_uri):
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_uri)
    yield mlflow, mlflow.MlflowClient(mlflow_uri)
    mlflow.set_tracking_uri(previous)


def test_registered_model_lineage_reads_back_the_data_versions(registry, tmp_path):
    mlflow, client = registry
    experiment = client.create_experiment(f"lineage-{uuid.uuid4().hex[:8]}")
    versions = {
        "data": DataVersion("data/synthetic/main", "38de8de6d1152abdec8ff810eed80b99.dir", "dvc stage make_synthetic"),
        "transfer:iaps": DataVersion("/d/IAPS", "9" * 32, "unversioned"),
        "detector_data": DataVersion("data/roi", "1" * 32 + ".dir", "dvc import-url", url="/mnt/EmotionROI"),
    }
    tags = {"pipeline_key": "k123", "kind": "pipeline", "git_revision": "abc123+dirty", "dvc_lock": "feedbeef"}
    parent = client.create_run(experiment, run_name="pipeline-k123", tags=tags).info.run_id
    client.log_param(parent, "classifier.lr", "0.001")
    client.log_param(parent, "data.root", "data/synthetic/main")
    log_data_versions(client, parent, versions, project=tmp_path)

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [0] * len(model_input)

    stage = {"mlflow.parentRunId": parent, "stage": "register", "pipeline_key": "k123"}
    register_run = client.create_run(experiment, run_name="register", tags=stage).info.run_id
    with mlflow.start_run(run_id=register_run):
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=[])
    name = f"lineage-model-{uuid.uuid4().hex[:8]}"
    version = mlflow.register_model(info.model_uri, name)
    client.set_registered_model_alias(name, "champion", version.version)

    record = model_lineage(client, f"models:/{name}@champion")
    assert record["model"]["version"] == str(version.version) and record["model"]["aliases"] == ["champion"]
    assert record["run"] == {"id": register_run, "name": "register", "stage": "register"}
    assert record["pipeline"]["run_id"] == parent
    assert (record["pipeline"]["git_revision"], record["pipeline"]["dvc_lock"]) == ("abc123+dirty", "feedbeef")
    assert record["params"] == {"classifier.lr": "0.001", "data.root": "data/synthetic/main"}
    assert record["datasets"] == {
        "data": {
            "path": "data/synthetic/main",
            "digest": versions["data"].digest,
            "source": "dvc stage make_synthetic",
        },
        "detector_data": {
            "path": "data/roi",
            "digest": "1" * 32 + ".dir",
            "source": "dvc import-url",
            "url": "/mnt/EmotionROI",
        },
        "transfer:iaps": {"path": "/d/IAPS", "digest": "9" * 32, "source": "unversioned"},
    }
    assert model_lineage(client, f"models:/{name}/{version.version}") == {**record, "model_uri": f"models:/{name}/1"}

    inputs = {d.dataset.name: d for d in client.get_run(parent).inputs.dataset_inputs}  # the UI's dataset panel
    assert {n: d.dataset.digest for n, d in inputs.items()} == {r: v.digest for r, v in versions.items()}
    assert [(t.key, t.value) for t in inputs["transfer:iaps"].tags] == [("mlflow.data.context", "transfer:iaps")]
    assert str(tmp_path / "data/roi") in inputs["detector_data"].dataset.source

    text = format_lineage(record)
    for expected in (
        name,
        "version 1",
        "champion",
        "abc123+dirty",
        "feedbeef",
        "classifier.lr = 0.001",
        "from /mnt/EmotionROI",
        *(v.digest for v in versions.values()),
        *(v.source for v in versions.values()),
    ):
        assert expected in text
    assert text.index("classifier.lr = 0.001") < text.index("data.root = data/synthetic/main")

    with pytest.raises(LineageError, match=r"aliases of .*: champion"):
        model_lineage(client, f"models:/{name}@nosuch")
    with pytest.raises(LineageError, match="no registered model"):
        model_lineage(client, "models:/no-such-model@champion")
    with pytest.raises(LineageError, match="expected models:/<name>@<alias>"):
        model_lineage(client, f"runs:/{register_run}/model")
