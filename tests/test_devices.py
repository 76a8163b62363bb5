"""Device names: every bad one is a one-line LoreError, before any work."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from lore_rm import LowRankReward
from lore_rm.cli import app
from lore_rm.devices import as_device
from lore_rm.errors import LoreError


def test_good_names():
    assert as_device("cpu") == torch.device("cpu")
    assert as_device(" CPU ".lower()) == torch.device("cpu")
    assert as_device(torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert as_device("auto") == torch.device("cpu")
        assert as_device(None) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda0", "cpu:x", ""])
def test_unknown_names_say_what_to_pass(name):
    with pytest.raises(LoreError, match="use cpu, cuda, cuda:N, mps or auto"):
        as_device(name)


def test_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    with pytest.raises(LoreError, match="has no GPU support; use --device cpu"):
        as_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(LoreError, match="no CUDA GPU is visible .CUDA_VISIBLE_DEVICES=''"):
        as_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(LoreError, match="has 2 CUDA GPU.s., cuda:0 to cuda:1"):
        as_device("cuda:2")


def test_the_model_and_the_cli_fail_in_one_line(tmp_path, easy_population):
    with pytest.raises(LoreError, match="unknown device 'gpu'"):
        LowRankReward(rank=1, device="gpu").fit(easy_population.split.seen_train)
    res = CliRunner().invoke(
        app, ["embed", str(tmp_path), "--backbone", "hashing-8", "--device", "gpu"]
    )
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: unknown device 'gpu': use cpu, cuda, cuda:N, mps or auto"
    ]
