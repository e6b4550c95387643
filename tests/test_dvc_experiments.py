"""End to end: `dvc exp run`, queued and in the workspace, with the project's default MLflow store. Every
experiment's runs land in the one ``mlflow.db`` at the DVC project's root (``runs.default_tracking_uri``:
``$DVC_ROOT``), not in the temporary copy of the workspace that a queued experiment runs in (``.dvc/tmp/exps/``,
deleted afterwards). The project is minimal: a dataset entered by `dvc add` of its root, then two real stages of
dvc.yaml (prepare_main, which depends on the tracked directory -> train_metric, the cheapest stage that opens an
MLflow stage run) on tiny params; each experiment sets its own ``metric.seed``, so only train_metric re-runs.
Every pipeline run records the DVC hash of that dataset (its lineage)."""

import json
import os
import shutil
import subprocess

import pytest
import yaml
from tiny import tiny_config

pytestmark = pytest.mark.e2e

STAGES = ("prepare_main", "train_metric")
QUEUED = {"queued-a": 2, "queued-b": 3}  # experiment name -> metric.seed
PLAIN = {"plain": 1}
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def _env() -> dict[str, str]:
    """The user's default: no tracking URI (the project's store), no DVC_ROOT or pipeline key inherited."""
    drop = {"MLFLOW_TRACKING_URI", "DVC_ROOT", "IMAGE_EMOTION_PIPELINE_RUN"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **GIT_IDENTITY}


def _run(cwd, *args) -> str:
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, f"{args}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root):
    """A git + DVC project: a small synthetic set under DVC by `dvc add` (a real dataset enters the same way), two
    stages of dvc.yaml (their source deps left out: the code is the installed package) and tiny params (no Table 1
    ablation), committed."""
    from image_emotion.stages import make_synthetic

    root = tmp_path_factory.mktemp("dvcexp") / "project"
    root.mkdir()
    params = tiny_config(**{"synthetic.sets": "{main: {num_images: 48, seed: 0}}", "metric.ablation_seeds": "[]"})
    make_synthetic.run(params, make_synthetic.MakeSyntheticPaths(root / "data/synthetic"))
    (root / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    spec = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    stages = {}
    for name in STAGES:
        stage = dict(spec[name])
        stage["deps"] = [d for d in stage.get("deps", []) if not d.startswith("src/")]
        stages[name] = {k: v for k, v in stage.items() if v}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    for name in (".gitignore", ".dvcignore"):  # the project's: mlflow.db and mlruns/ are not git's
        shutil.copy(repo_root / name, root / name)
    _run(root, "git", "init", "-q")
    _run(root, "dvc", "init", "-q")
    _run(root, "dvc", "add", "-q", params.data.root)
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-q", "-m", "project")
    return root, params.mlflow.experiment, params.data.root


def test_queued_and_workspace_experiments_share_the_projects_mlflow_store(project):
    import mlflow

    root, experiment_name, data_root = project
    # Queued first: the store, the experiment and its artifact location are then created from inside a temporary
    # workspace, the case a cwd-relative store gets wrong.
    for name, seed in QUEUED.items():
        _run(root, "dvc", "exp", "run", "--queue", "-n", name, "-S", f"metric.seed={seed}")
    _run(root, "dvc", "exp", "run", "--run-all")  # starts a queue worker and waits for every queued experiment
    status = _run(root, "dvc", "queue", "status")
    for name in QUEUED:
        line = next((x for x in status.splitlines() if f" {name} " in x), "")
        assert "Success" in line, f"{status}\n{_run(root, 'dvc', 'queue', 'logs', name)}"
    name, seed = next(iter(PLAIN.items()))
    _run(root, "dvc", "exp", "run", "-n", name, "-S", f"metric.seed={seed}")
    expected = {**QUEUED, **PLAIN}

    shown = json.loads(_run(root, "dvc", "exp", "show", "--json"))
    listed = {
        exp["name"]: exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["metric"]["seed"]
        for baseline in shown
        for exp in baseline.get("experiments") or []
    }
    assert listed == expected

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, "no experiment in the project's mlflow.db"
    assert experiment.artifact_location == (root / "mlruns").as_uri()  # beside the store, not in a temp copy
    parents = client.search_runs([experiment.experiment_id], "tags.kind = 'pipeline'")
    keys = {p.data.tags["pipeline_key"]: p for p in parents}
    assert len(keys) == len(parents) == len(expected)  # one distinct pipeline run an experiment
    assert sorted(int(p.data.params["metric.seed"]) for p in parents) == sorted(expected.values())
    added = yaml.safe_load((root / f"{data_root}.dvc").read_text())["outs"][0]["md5"]  # what `dvc add` wrote
    for parent in parents:  # the data version each experiment trained on
        assert parent.data.tags["data.data.digest"] == added and parent.data.tags["data.data.source"] == "dvc add"
    stage_runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train_metric'")
    assert len(stage_runs) == len(expected)
    for run in stage_runs:
        parent = keys[run.data.tags["pipeline_key"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["metric.seed"] == parent.data.params["metric.seed"]
        assert run.info.status == "FINISHED"

    strays = [p for p in root.rglob("*") if p.name in ("mlflow.db", "mlruns") and p.parent != root]
    assert not strays, f"MLflow stores outside the project's root: {strays}"


def test_the_default_remote_keeps_what_dvc_push_sends(project, repo_root, tmp_path):
    """The committed `.dvc/config` names a default remote under the user's home (here a temporary one): `dvc push`
    fills it, and a clone without cache or data gets every file back from it with `dvc pull`."""
    root, _, data_root = project
    clone = tmp_path / "clone"
    shutil.copytree(root, clone, symlinks=True)
    shutil.copy(repo_root / ".dvc/config", clone / ".dvc/config")
    home = tmp_path / "home"
    env = {**_env(), "HOME": str(home)}

    def dvc(*args: str) -> str:
        proc = subprocess.run(["dvc", *args], cwd=clone, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, f"{args}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    dvc("push", f"{data_root}.dvc")
    storage = home / ".local/share/image-emotion/dvc-storage"
    assert sum(1 for p in storage.rglob("*") if p.is_file()) > 48  # every image of the set, and its listing
    before = {p.relative_to(clone): p.read_bytes() for p in (clone / data_root).rglob("*") if p.is_file()}
    shutil.rmtree(clone / data_root)
    shutil.rmtree(clone / ".dvc/cache")
    dvc("pull", f"{data_root}.dvc")
    after = {p.relative_to(clone): p.read_bytes() for p in (clone / data_root).rglob("*") if p.is_file()}
    assert after == before
