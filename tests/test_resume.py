"""Interrupted detector training resumes from its last checkpoint (a real SIGKILL of the CLI) and ends with exactly
the weights of an uninterrupted run; a checkpoint of other params is not resumed, a corrupt one (and its previous
one) is a clear error."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from tiny import detector_inputs, wait_for_checkpoint

from image_emotion.files import CheckpointError, load_checkpoint
from image_emotion.stages import finetune_detector

pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path, mlflow_uri):
    """A tiny project: the synthetic regions set prepared, and an object-pretrained detector to start from
    (built untrained: what is resumed here is the fine-tuning)."""
    detector_inputs(tmp_path, tmp_path / "prepared", tmp_path / "objects.pt")
    return tmp_path


def _cmd(project, *extra):
    return [
        sys.executable,
        "-m",
        "image_emotion.cli",
        "finetune-detector",
        "--params",
        str(project / "params.yaml"),
        "--prepared",
        str(project / "prepared"),
        "--objects",
        str(project / "objects.pt"),
        "--checkpoint",
        str(project / "ckpt/last.pt"),
        "--model",
        str(project / "model/detector.pt"),
        "--metrics",
        str(project / "detector.json"),
        "--set",
        "finetune.epochs=4",
        *extra,
    ]


def test_killed_training_resumes_from_the_last_checkpoint(project):
    proc = subprocess.Popen(_cmd(project), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    wait_for_checkpoint(project / "ckpt/last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(project / "ckpt/last.pt")["epoch"]
    assert 1 <= killed_at < 4
    assert not (project / "model/detector.pt").exists()  # no half-finished model left as if complete

    done = subprocess.run(_cmd(project), capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert f"resuming from {project / 'ckpt/last.pt'} after epoch {killed_at}" in done.stderr
    metrics = json.loads((project / "detector.json").read_text())
    assert metrics["resumed_from_epoch"] == killed_at and len(metrics["loss_per_epoch"]) == 4
    assert load_checkpoint(project / "ckpt/last.pt")["epoch"] == 4

    # the same training without the interruption, from a fresh checkpoint: bit-identical weights and losses
    straight = finetune_detector.run(_config(project, "finetune.epochs=4"), _paths(project, "straight"))
    assert straight["resumed_from_epoch"] is None
    assert straight["loss_per_epoch"] == metrics["loss_per_epoch"]
    resumed_weights = torch.load(project / "model/detector.pt", weights_only=True)["state_dict"]
    straight_weights = torch.load(project / "straight/detector.pt", weights_only=True)["state_dict"]
    assert resumed_weights.keys() == straight_weights.keys()
    different = [k for k in resumed_weights if not torch.equal(resumed_weights[k], straight_weights[k])]
    assert not different, f"resumed weights differ from an uninterrupted run's in {different[:5]}"


def _config(project, *overrides):
    from image_emotion.config import load_config

    return load_config(project / "params.yaml", [f"data.root={project / 'synthetic' / 'regions'}", *overrides])


def _paths(project, name):
    return finetune_detector.FinetunePaths(
        project / "prepared",
        project / "objects.pt",
        project / name / "last.pt",
        project / name / "detector.pt",
        project / name / "m.json",
    )


def test_checkpoint_of_other_params_is_not_resumed_and_corrupt_one_is_a_clear_error(project, capsys):
    config = _config(project, "finetune.epochs=1")
    paths = finetune_detector.FinetunePaths(
        project / "prepared",
        project / "objects.pt",
        project / "ckpt/last.pt",
        project / "model/detector.pt",
        project / "detector.json",
    )
    finetune_detector.run(config, paths)
    other = _config(project, "finetune.epochs=1", "finetune.lr=0.005")
    assert finetune_detector.run(other, paths)["resumed_from_epoch"] is None
    assert "made with other params, data or code; starting afresh" in capsys.readouterr().err
    longer = _config(project, "finetune.epochs=2", "finetune.lr=0.005")
    assert finetune_detector.run(longer, paths)["resumed_from_epoch"] == 1  # more epochs continue a shorter run
    assert finetune_detector.run(other, paths)["resumed_from_epoch"] is None  # fewer epochs than the checkpoint's
    assert "was made with more epochs; starting afresh" in capsys.readouterr().err

    model_before = (project / "model/detector.pt").read_bytes()
    (project / "ckpt/last.pt").write_bytes(b"\x00garbage")  # and the previous one it would fall back to
    (project / "ckpt/last.pt.prev").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=f"{project / 'ckpt/last.pt'}: checkpoint cannot be read"):
        finetune_detector.run(config, paths)
    assert (project / "model/detector.pt").read_bytes() == model_before  # the earlier model is intact
