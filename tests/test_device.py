"""The device every stage picks, and the deterministic kernels it turns on."""

from __future__ import annotations

import pytest
import torch

from image_emotion.device import pick_device
from image_emotion.errors import ConfigError


@pytest.fixture
def nondeterministic(monkeypatch):
    """Torch's default state (nondeterministic kernels allowed, no cuBLAS workspace), restored afterwards."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_picking_a_device_turns_on_deterministic_kernels(nondeterministic):
    import os

    assert pick_device("cpu") == torch.device("cpu")
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.backends.cudnn.benchmark is False


def test_auto_is_the_gpu_when_there_is_one():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_cuda_without_a_gpu_is_a_one_line_error():
    with pytest.raises(ConfigError, match="no GPU is visible; set device: auto or cpu"):
        pick_device("cuda")


def test_an_unknown_device_is_refused_before_anything_changes(nondeterministic):
    with pytest.raises(ConfigError, match="device must be auto, cpu or cuda, got 'tpu'"):
        pick_device("tpu")
    assert not torch.are_deterministic_algorithms_enabled()
