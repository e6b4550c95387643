"""Data-parallel training under torchrun (``training/distributed.py``): the global batch split by hand-computed
expectations, and both trainings launched with ``torchrun --nproc-per-node 2`` (gloo on the CPU) against one
process on the same global batches:

- ``train-metric`` gathers every rank's rows and computes the loss of the whole batch, so its per-epoch loss
  curves (the model and Table 1's eight rows) and weights equal one process's up to float rounding (measured:
  losses at most 3.3e-7 apart, weights 1.5e-8; tolerance 1e-5 and 1e-4).
- ``finetune-detector``: torchvision's losses are means over the sampled anchors/proposals of a batch, so
  weighting each rank's loss by its share of images is exact only when every image gives the same number of
  samples. The tiny detector here (32 px: 85 anchors an image; up to 512 RoIs an image) samples every anchor
  and proposal, so no random draw enters; the RoI counts still differ between images (measured: epoch losses
  0.04 % and 0.01 % apart, weights 4 % of the distance they moved; tolerance 0.5 % and 10 %). A wrong slice, no
  gradient averaging or no slice weighting breaks the tolerances (measured: epoch losses 0.8-17 % apart,
  weights 21-57 %).

The launches also check that only rank 0 writes: rank 1 runs in a directory of its own and leaves it empty,
the MLflow runs hold every epoch once, and the command prints its result once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from tiny import REPO, TINY_OVERRIDES

from image_emotion.config import load_config
from image_emotion.errors import ConfigError
from image_emotion.models.region_detector import RegionDetector, load_detector, save_detector
from image_emotion.stages import finetune_detector, make_synthetic, prepare, train_metric
from image_emotion.training import distributed

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
DETECTOR = [
    "detector.min_size=32",  # 85 anchors an image: the RPN samples all of them (256 a batch image)
    "detector.max_size=32",
    "detector.box_batch_size_per_image=512",  # more than the proposals: every one is sampled
    "finetune.hflip=false",  # flips draw per rank
    "finetune.batch_size=5",  # 16 images: batches of 5, 5, 5, 1 -> slices of 3/2 and 1/0 (an empty one)
    "finetune.epochs=2",
]
METRIC = ["metric.epochs=3", "metric.ablation_seeds=[0]"]  # 29 train images, batches of ~15: slices 8/7
DETECTOR_LOSS_RTOL, DETECTOR_WEIGHT_SHARE = 5e-3, 0.1
METRIC_LOSS_ATOL, METRIC_WEIGHT_ATOL = 1e-5, 1e-4


# -- the split of a global batch (no process group needed) ---------------------------------------------------------


def test_slice_sizes_and_slices_by_hand():
    assert distributed.slice_sizes(5, 2) == [3, 2]
    assert distributed.slice_sizes(8, 3) == [3, 3, 2]
    assert distributed.slice_sizes(1, 2) == [1, 0]
    assert distributed.slice_sizes(6, 1) == [6]
    batch = [10, 11, 12, 13, 14]
    assert [distributed.split_batch(batch, r, 2) for r in range(2)] == [[10, 11, 12], [13, 14]]
    assert [distributed.split_batch(batch, r, 3) for r in range(3)] == [[10, 11], [12, 13], [14]]
    assert distributed.split_batch([7], 1, 2) == []
    index = torch.tensor([4, 0, 3, 1, 2, 5, 6])
    assert distributed.split_batch(index, 1, 2).tolist() == [2, 5, 6]  # sizes 4 and 3
    assert distributed.split_batch(batch, 0, 1) == batch


def test_slice_weights_make_the_average_over_ranks_the_global_mean():
    # per-row losses 1..5 on 2 ranks: rank 0 has [1, 2, 3] (mean 2), rank 1 [4, 5] (mean 4.5); the global mean is 3
    rows = [1.0, 2.0, 3.0, 4.0, 5.0]
    means, weights = [], []
    for r in range(2):
        mine = distributed.split_batch(rows, r, 2)
        means.append(sum(mine) / len(mine))
        weights.append(distributed.slice_weight(len(mine), len(rows), 2))
    assert means == [2.0, 4.5] and weights == pytest.approx([1.2, 0.8])
    ddp_average = sum(w * m for w, m in zip(weights, means, strict=True)) / 2
    assert ddp_average == pytest.approx(3.0)  # DDP's average of the weighted means: the global mean
    assert sum(means) / 2 == pytest.approx(3.25)  # unweighted: rows 4 and 5 would count 1.5 times
    assert distributed.slice_weight(0, 1, 2) == 0.0 and distributed.slice_weight(4, 8, 2) == 1.0


def test_launch_environment_is_read_and_checked():
    assert distributed.launch_env({}) == distributed.Launch(0, 1, 0, None, None)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456"}
    assert distributed.launch_env(env) == distributed.Launch(3, 4, 1, "job-master-0", 23456)
    assert distributed.launch_env({"RANK": "0", "WORLD_SIZE": "1"}).distributed is False
    with pytest.raises(ConfigError, match="RANK=4 WORLD_SIZE=4"):
        distributed.launch_env({**env, "RANK": "4"})
    with pytest.raises(ConfigError, match="without MASTER_ADDR"):
        distributed.launch_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="not whole numbers"):
        distributed.launch_env({**env, "WORLD_SIZE": "two"})
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda", 1)) == "nccl"
    seeds = {distributed.rank_seed(7, r) for r in range(4)}
    assert len(seeds) == 4 and distributed.rank_seed(7, 2) == distributed.rank_seed(7, 2)


def test_without_torchrun_everything_is_one_process(monkeypatch):
    for name in distributed.ENV:
        monkeypatch.delenv(name, raising=False)
    with distributed.session("cpu") as device:
        assert device == torch.device("cpu") and not torch.distributed.is_initialized()
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        module = torch.nn.Linear(2, 1)
        assert distributed.wrap(module, device) is module  # no DDP
        rows = torch.ones(3, 2)
        assert distributed.gather_rows(rows, [3]) is rows
        assert distributed.gather_objects("x") == ["x"]
        distributed.barrier()


def test_ranks_other_than_0_enter_no_tracking_run(monkeypatch):
    entered = []

    class Run:
        def __enter__(self):
            entered.append(True)
            return "mlflow"

        def __exit__(self, *exc):
            return False

    monkeypatch.setenv("RANK", "1")  # a torchrun rank outside its process group: the environment decides
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert not distributed.is_main()
    with distributed.main_only(Run()) as mlflow:
        assert mlflow.log_metrics({"loss": 1.0}, step=1) is None and mlflow.set_tag("a", "b") is None
    assert entered == []
    monkeypatch.setenv("RANK", "0")
    with distributed.main_only(Run()) as mlflow:
        assert mlflow == "mlflow"
    assert entered == [True]


# -- torchrun against one process ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The synthetic regions and main sets drawn and prepared, a params.yaml with the tiny settings and those of
    this file, and an untrained object detector of that config to fine-tune."""
    root = tmp_path_factory.mktemp("ddp")
    sets = "synthetic.sets={regions: {num_images: 32, seed: 3}, main: {num_images: 48, seed: 0}}"
    config = load_config(REPO / "params.yaml", [*TINY_OVERRIDES, sets, *DETECTOR, *METRIC])
    (root / "params.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    make_synthetic.run(config, make_synthetic.MakeSyntheticPaths(root / "synthetic"))
    for role in ("regions", "main"):
        role_config = config.with_overrides([f"data.root={root / 'synthetic' / role}"])
        prepare.run(role_config, prepare.PreparePaths(root / "prepared" / role, root / f"prepare_{role}.json"))
    torch.manual_seed(0)
    save_detector(RegionDetector(config.detector), root / "objects.pt")
    return root


@pytest.fixture
def one_thread():
    """torch on one thread while a test trains in-process, as each rank does (OMP_NUM_THREADS=1): two threads on
    this two-core machine make these tiny trainings several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torchrun(args: list[str], cwd: Path, store: str, pipeline_run: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # two ranks on two cores
        "MLFLOW_TRACKING_URI": store,
        "IMAGE_EMOTION_PIPELINE_RUN": pipeline_run,  # a parent run of its own: its stage runs are its alone
    }
    for name in distributed.ENV:
        env.pop(name, None)
    command = [TORCHRUN, "--standalone", "--nproc-per-node", "2", *args]  # standalone: a free port
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _in_rank_dirs(root: Path) -> list[str]:
    """torchrun arguments that start ``python`` with the arguments after them in ``root/rank<RANK>`` (made here):
    outputs given as relative paths land in the directory of the rank that wrote them."""
    for r in (0, 1):
        (root / f"rank{r}").mkdir()
    return ["--no-python", "sh", "-c", 'cd "$0/rank$RANK" && exec "$@"', str(root), sys.executable]


def _stage_runs(store: str, pipeline_run: str, stage: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.pipeline_key = '{pipeline_run}' and tags.stage = '{stage}'")


def _loss_curves(store: str, stage_run) -> dict[str, list[float]]:
    """The per-epoch ``loss`` of every child run of ``stage_run``, by run name."""
    import mlflow

    client = mlflow.MlflowClient(store)
    children = client.search_runs(
        [stage_run.info.experiment_id], f"tags.mlflow.parentRunId = '{stage_run.info.run_id}'"
    )
    curves = {}
    for child in children:
        history = sorted(client.get_metric_history(child.info.run_id, "loss"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(len(history))), "an epoch logged twice or missing"
        curves[child.info.run_name] = [m.value for m in history]
    return curves


@pytest.mark.e2e
def test_detector_finetuning_on_two_ranks_follows_one_process(project, mlflow_store, monkeypatch, tmp_path, one_thread):
    config = load_config(project / "params.yaml", [f"data.root={project / 'synthetic/regions'}"])
    single_run = f"single-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("IMAGE_EMOTION_PIPELINE_RUN", single_run)
    one = tmp_path / "one"
    single = finetune_detector.run(
        config,
        finetune_detector.FinetunePaths(
            project / "prepared/regions", project / "objects.pt", one / "last.pt", one / "detector.pt", one / "m.json"
        ),
    )

    ddp_run = f"ddp-{uuid.uuid4().hex[:8]}"
    done = _torchrun([*_in_rank_dirs(tmp_path), *_finetune(project, Path("out"))], tmp_path, mlflow_store, ddp_run)
    assert not any((tmp_path / "rank1").iterdir())  # rank 1 wrote nothing: no checkpoint, model or metrics
    two = tmp_path / "rank0/out"  # last.pt.prev: the epoch before
    assert sorted(p.name for p in two.iterdir()) == ["detector.pt", "last.pt", "last.pt.prev", "m.json"]
    metrics = json.loads((two / "m.json").read_text())
    assert done.stdout.count('"loss_per_epoch"') == 1  # one result printed: rank 0's
    assert metrics["train_images"] == single["train_images"] == 16 and metrics["resumed_from_epoch"] is None

    # the loss per epoch: the global batches', within the tolerance of torchvision's per-sample means
    assert len(metrics["loss_per_epoch"]) == len(single["loss_per_epoch"]) == 2
    for ddp, one_process in zip(metrics["loss_per_epoch"], single["loss_per_epoch"], strict=True):
        assert ddp == pytest.approx(one_process, rel=DETECTOR_LOSS_RTOL)
    # the weights: apart by a small share of the distance training moved them
    start = load_detector(project / "objects.pt", torch.device("cpu"))
    start.start_emotional_from_objects()
    w0 = start.state_dict()
    w1 = torch.load(one / "detector.pt", weights_only=True)["state_dict"]
    w2 = torch.load(two / "detector.pt", weights_only=True)["state_dict"]
    floats = [k for k in w0 if w0[k].is_floating_point()]
    moved = torch.sqrt(sum(((w1[k] - w0[k]) ** 2).sum() for k in floats))
    apart = torch.sqrt(sum(((w2[k] - w1[k]) ** 2).sum() for k in floats))
    assert moved > 0.1 and apart < DETECTOR_WEIGHT_SHARE * moved, (float(apart), float(moved))

    # rank 0 checkpointed every rank's random states; MLflow holds each epoch once
    checkpoint = torch.load(two / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and len(checkpoint["rng_ranks"]) == 2
    assert not torch.equal(checkpoint["rng_ranks"][0]["torch"], checkpoint["rng_ranks"][1]["torch"])
    assert "rng_ranks" not in torch.load(one / "last.pt", weights_only=True)  # one process: the format as before
    (stage_run,) = _stage_runs(mlflow_store, ddp_run, "finetune_detector")
    import mlflow

    logged = mlflow.MlflowClient(mlflow_store).get_metric_history(stage_run.info.run_id, "loss")
    assert sorted(m.step for m in logged) == [1, 2]


@pytest.mark.e2e
def test_metric_training_on_two_ranks_equals_one_process(project, mlflow_store, monkeypatch, tmp_path, one_thread):
    config = load_config(project / "params.yaml", [f"data.root={project / 'synthetic/main'}"])
    single_run = f"single-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("IMAGE_EMOTION_PIPELINE_RUN", single_run)
    one = tmp_path / "one"
    paths = train_metric.TrainMetricPaths(project / "prepared/main", one, one / "m.json", one / "ablation.json")
    single = train_metric.run(config, paths)

    ddp_run = f"ddp-{uuid.uuid4().hex[:8]}"
    done = _torchrun(
        [*_in_rank_dirs(tmp_path), "-m", "image_emotion.cli", "train-metric", "--params", str(project / "params.yaml"),
         "--set", f"data.root={project / 'synthetic/main'}", "--prepared", str(project / "prepared/main"),
         "--out-dir", "out", "--metrics", "out/m.json", "--ablation", "out/ablation.json"],
        tmp_path, mlflow_store, ddp_run,
    )  # fmt: skip
    assert done.stdout.count('"last_epoch_loss"') == 1
    assert not any((tmp_path / "rank1").iterdir())  # rank 1 wrote nothing
    two = tmp_path / "rank0/out"
    assert sorted(p.name for p in two.iterdir()) == ["ablation.json", "m.json", "model.pt"]

    # every training's loss curve (the model and Table 1's rows), from MLflow: each epoch logged once, equal
    (single_stage,) = _stage_runs(mlflow_store, single_run, "train_metric")
    (ddp_stage,) = _stage_runs(mlflow_store, ddp_run, "train_metric")
    one_curves, ddp_curves = _loss_curves(mlflow_store, single_stage), _loss_curves(mlflow_store, ddp_stage)
    assert len(one_curves) == 9 and one_curves.keys() == ddp_curves.keys()
    for name, curve in one_curves.items():
        assert len(curve) == 3 and ddp_curves[name] == pytest.approx(curve, abs=METRIC_LOSS_ATOL), name

    w1 = torch.load(one / "model.pt", weights_only=True)["state_dict"]
    w2 = torch.load(two / "model.pt", weights_only=True)["state_dict"]
    assert w1.keys() == w2.keys()
    assert max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1) < METRIC_WEIGHT_ATOL
    ddp = json.loads((two / "m.json").read_text())
    assert ddp["last_epoch_loss"] == pytest.approx(single["last_epoch_loss"], abs=METRIC_LOSS_ATOL)
    assert ddp["test_map8"] == pytest.approx(single["test_map8"], abs=1e-6)


def _finetune(project: Path, out: Path, *sets: str) -> list[str]:
    """``finetune-detector`` on the project's regions set, writing under ``out``, with more ``--set``s."""
    return [
        "-m", "image_emotion.cli", "finetune-detector", "--params", str(project / "params.yaml"),
        "--set", f"data.root={project / 'synthetic/regions'}", *(a for s in sets for a in ("--set", s)),
        "--prepared", str(project / "prepared/regions"), "--objects", str(project / "objects.pt"),
        "--checkpoint", str(out / "last.pt"), "--model", str(out / "detector.pt"), "--metrics", str(out / "m.json"),
    ]  # fmt: skip


@pytest.mark.e2e
def test_two_ranks_resume_from_rank_0s_checkpoint_exactly(project, mlflow_store, tmp_path):
    """Every rank resumes from the checkpoint: the weights, the optimizer and its own random states (with flips on,
    rank 1's flips come from its saved generator), so a run resumed after epoch 1 ends as an uninterrupted one."""
    flips, run = "finetune.hflip=true", f"resume-{uuid.uuid4().hex[:8]}"
    _torchrun(_finetune(project, tmp_path / "straight", flips), tmp_path, mlflow_store, f"{run}-straight")
    one_epoch = _finetune(project, tmp_path / "resumed", flips, "finetune.epochs=1")  # as if stopped after epoch 1
    _torchrun(one_epoch, tmp_path, mlflow_store, f"{run}-first")
    done = _torchrun(_finetune(project, tmp_path / "resumed", flips), tmp_path, mlflow_store, f"{run}-resumed")
    assert done.stderr.count(f"resuming from {tmp_path / 'resumed/last.pt'} after epoch 1") == 1  # rank 0 says it
    straight = json.loads((tmp_path / "straight/m.json").read_text())
    resumed = json.loads((tmp_path / "resumed/m.json").read_text())
    assert resumed["resumed_from_epoch"] == 1 and resumed["loss_per_epoch"] == straight["loss_per_epoch"]
    w1 = torch.load(tmp_path / "straight/detector.pt", weights_only=True)["state_dict"]
    w2 = torch.load(tmp_path / "resumed/detector.pt", weights_only=True)["state_dict"]
    different = [k for k in w1 if not torch.equal(w1[k], w2[k])]
    assert not different, f"resumed weights differ from an uninterrupted run's in {different[:5]}"
