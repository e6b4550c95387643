"""Shared test set-up: no telemetry, the venv's commands on PATH, a small synthetic set, MLflow stores (one per
test that asks, one for the tiny run, one for the later seeds' session runs), and the tiny pipeline run
(read-only for the tests that share it)."""

from __future__ import annotations

import builtins
import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_configure(config):
    """torch's intra-op threads shared out among the xdist workers, so that the workers (and the stages they start,
    which inherit ``OMP_NUM_THREADS``) fill the cores once: with more threads than cores, libgomp's idle threads
    spin while the other worker's wait (measured: the region-detector, resume and metric-training test files took
    150 s with two threads a worker on two cores, 57 s with one). A value the caller set is kept."""
    if not hasattr(config, "workerinput"):  # not an xdist worker: torch's own choice (and nothing for workers
        return  # to inherit from the controller)
    workers = int(config.workerinput["workercount"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    if "torch" in sys.modules:  # already imported (by a plugin): its pool is resized now
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_PRINT = builtins.print


@pytest.fixture(autouse=True)
def _process_state_put_back():
    """What a test, or a library it drives, changes for the whole process is put back after it, so no test sees
    another's: MLflow's tracking URI (``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI``, which every
    later stage would then write to) and ``builtins.print`` (kfp.local's tasks running in parallel can leave it
    indenting every later line)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    builtins.print = _PRINT
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)  # back to $MLFLOW_TRACKING_URI, which it unsets
    if uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = uri


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (params.yaml, dvc.yaml)."""
    return REPO


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory):
    """A small synthetic dataset (64 images of 128 px) as ``(images (3, H, W) in [0, 1], boxes, labels)``."""
    import torch
    from torchvision.transforms.functional import to_tensor

    from image_emotion.config import SyntheticConfig
    from image_emotion.data.datasets import load_dataset
    from image_emotion.data.emotions import MIKELS8
    from image_emotion.data.images import load_image
    from image_emotion.data.synthetic import generate

    root = generate(
        tmp_path_factory.mktemp("emb") / "synthetic", SyntheticConfig.one_set(num_images=64, image_size=128)
    )
    df = load_dataset("synthetic", root).manifest
    images = [to_tensor(load_image(root / p)) for p in df["path"]]
    boxes = [torch.tensor(b, dtype=torch.float32) for b in df["boxes"]]
    labels = torch.tensor([MIKELS8.index(x) for x in df["label"]])
    return images, boxes, labels


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, its tables created once (about a second): stores are copies of it."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-empty") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def _store_copy(empty_store: Path, folder: Path) -> str:
    path = folder / "mlflow.db"
    shutil.copy(empty_store, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory, empty_store) -> str:
    """A throwaway MLflow store for the session-wide runs of seed 002 and seed 001 (each test points at it)."""
    return _store_copy(empty_store, tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def mlflow_uri(empty_store, tmp_path, monkeypatch) -> str:
    """This test's own MLflow store as ``$MLFLOW_TRACKING_URI`` (restored after): no other test's runs in it."""
    uri = _store_copy(empty_store, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _once_per_session(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """A folder that ``build(folder)`` fills once for the whole test session: under xdist the first worker to ask
    builds it under a file lock and the other workers reuse it (each worker would otherwise repeat the work)."""
    from filelock import FileLock

    if worker_id == "master":  # no xdist: this process is the session
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name  # shared by the workers of this session
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def _tiny(tmp_path_factory, worker_id, empty_store):
    """(workdir, config, MLflow store) of the tiny pipeline run, built once for the session (``_build_tiny``)."""
    from tiny import tiny_config

    def config_of(work: Path):
        syn = work / "synthetic"
        return tiny_config(**{"data.root": syn / "main", "pretrain.root": syn / "objects"})

    def build(folder: Path) -> None:
        store = _store_copy(empty_store, folder)
        (folder / "work").mkdir()
        _build_tiny(folder / "work", config_of(folder / "work"), store)

    folder = _once_per_session(tmp_path_factory, worker_id, "tiny", build)
    return folder / "work", config_of(folder / "work"), f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tiny_store(_tiny) -> str:
    """The MLflow store the tiny pipeline run writes to, and nothing else."""
    return _tiny[2]


@pytest.fixture(scope="session")
def tiny_run(_tiny):
    """The pipeline's stages run in-process on the tiny config, up to evaluate, with the paper's data roles
    played by synthetic sets; returns (workdir, config). Read-only for tests: a test that changes files copies
    what it changes first. Built once for the session, shared by the xdist workers."""
    return _tiny[0], _tiny[1]


def _build_tiny(work: Path, config, tiny_store: str) -> None:
    """Run the stages of the tiny pipeline into ``work``, tracked in ``tiny_store``."""
    from image_emotion.stages import (
        evaluate,
        extract_regions,
        finetune_detector,
        make_synthetic,
        prepare,
        pretrain_objects,
        train_classifier,
        transfer_cv,
    )

    session_env = pytest.MonkeyPatch()
    session_env.setenv("MLFLOW_TRACKING_URI", tiny_store)  # only while the stages run
    syn = work / "synthetic"
    make_synthetic.run(config, make_synthetic.MakeSyntheticPaths(syn))
    for role, root in (("detector", syn / "regions"), ("main", syn / "main"), ("small", syn / "small")):
        role_config = config.with_overrides([f"data.root={root}"])
        prepare.run(role_config, prepare.PreparePaths(work / "prepared" / role, work / f"metrics/prepare/{role}.json"))
    pretrain_objects.run(
        config,
        pretrain_objects.PretrainPaths(
            work / "ckpt/objects.pt", work / "models/objects.pt", work / "metrics/objects.json"
        ),
    )
    finetune_detector.run(
        config,
        finetune_detector.FinetunePaths(
            work / "prepared/detector",
            work / "models/objects.pt",
            work / "ckpt/last.pt",
            work / "models/detector.pt",
            work / "metrics/detector.json",
        ),
    )
    for role in ("main", "small"):
        extract_regions.run(
            config,
            extract_regions.ExtractPaths(
                work / "models/detector.pt",
                work / "models/objects.pt",
                (work / "prepared" / role,),
                (work / "features" / role,),
                work / f"metrics/extract_{role}.json",
            ),
        )
    train_classifier.run(
        config,
        train_classifier.ClassifierPaths(
            work / "prepared/main",
            work / "features/main",
            work / "models/classifier",
            work / "metrics/sweep.json",
            work / "metrics/ablation.json",
            work / "metrics/classifier.json",
        ),
    )
    transfer_cv.run(
        config,
        transfer_cv.TransferPaths(
            "small",
            work / "prepared/small",
            work / "features/small",
            work / "models/classifier/head.pt",
            work / "metrics/transfer/small.json",
        ),
    )
    evaluate.run(
        config,
        evaluate.EvaluatePaths(
            work / "prepared/main",
            work / "features/main",
            work / "models/classifier/head.pt",
            work / "models/classifier/head_binary.pt",
            work / "metrics/sweep.json",
            work / "metrics/ablation.json",
            work / "metrics/transfer",
            work / "metrics/evaluate.json",
            work / "plots",
        ),
    )
    session_env.undo()


WHOLE_RUNS = {"tiny_run", "seed001_run", "seed002_run", "served"}  # fixtures that run a pipeline's stages


def pytest_collection_modifyitems(config, items):
    """A test that reads a whole pipeline run (in process) is end to end, whatever its module says: ``-m "not e2e"``
    is then the unit tier."""
    for item in items:
        if WHOLE_RUNS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
