"""Data-parallel training with torchrun (2 processes, gloo, on this machine), and the device choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medlens.errors import ConfigError
from medlens.runtime.backends import place_on_device
from medlens.train.distributed import DistInfo, broadcast_from_main, dist_info, mean_across_processes, shard_batch_size

SMALL = ["--set", "model=cnn", "--set", "epochs=3", "--set", "max_train_samples=1000", "--set", "patience=3"]


def _medlens(args: list[str], data_dir: Path, processes: int = 1) -> subprocess.CompletedProcess[str]:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        if processes > 1
        else [sys.executable]
    )
    env = {**os.environ, "MEDLENS_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run([*launcher, "-m", "medlens", *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow  # 37 s; the segmenter test below covers torchrun in the default run (kept under 10 minutes)
def test_two_processes_train_a_classifier_as_well_as_one(data_dir: Path, tmp_path: Path) -> None:
    """The golden small recipe: 2 torchrun processes reach the same validation AUC as 1 (global batch unchanged)."""
    one = _medlens(["train", "pneumoniamnist", "--out", str(tmp_path / "one"), *SMALL], data_dir)
    two = _medlens(["train", "pneumoniamnist", "--out", str(tmp_path / "two"), *SMALL], data_dir, processes=2)
    m1 = json.loads((tmp_path / "one" / "model" / "bundle.json").read_text())
    m2 = json.loads((tmp_path / "two" / "model" / "bundle.json").read_text())
    assert m1["training"]["processes"] == 1 and m2["training"]["processes"] == 2
    assert len(m2["training"]["history"]) == 3
    assert m2["metrics"]["validation"]["auc"] >= 0.93  # the same bar as the 1-process golden test
    assert abs(m2["metrics"]["validation"]["auc"] - m1["metrics"]["validation"]["auc"]) < 0.01
    assert two.stdout.count("bundle written") == 1 and "bundle written" in one.stdout  # only rank 0 reports


def test_two_processes_train_a_segmenter(data_dir: Path, tmp_path: Path) -> None:
    cases = data_dir / "msd_hippocampus"
    _medlens(["plan", str(cases), "--out", str(tmp_path / "plan")], data_dir)
    _medlens(
        [
            "train",
            str(cases),
            "--task",
            "segment",
            "--plan",
            str(tmp_path / "plan" / "plan.json"),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "epochs=2",
            "--set",
            "samples_per_epoch=32",
            "--set",
            "max_cases=16",
        ],
        data_dir,
        processes=2,
    )
    manifest = json.loads((tmp_path / "run" / "model" / "bundle.json").read_text())
    assert manifest["training"]["processes"] == 2 and len(manifest["training"]["history"]) == 2
    assert 0 <= manifest["metrics"]["validation"]["mean_dice"] <= 1
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_one_process_helpers_do_nothing_and_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dist_info() == DistInfo() and broadcast_from_main({"score": 1.0}) == {"score": 1.0}
    assert mean_across_processes(2.5) == 2.5
    assert shard_batch_size(64, DistInfo(0, 2, 0)) == 32
    with pytest.raises(ConfigError, match="train.batch_size: 63 does not split evenly over 2 processes"):
        shard_batch_size(63, DistInfo(1, 2, 1))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="set by torchrun"):
        dist_info()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_and_auto_stays_on_cpu() -> None:
    from medlens.classify.bundle import load_classifier

    bundle = load_classifier("pneumonia-28px")
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        place_on_device(bundle, "auto", "cuda")
    with pytest.raises(ConfigError, match="--device must be one of"):
        place_on_device(bundle, "auto", "gpu")
    placed, backend = place_on_device(bundle, "auto", "auto")
    assert backend == "auto" and next(placed.model.parameters()).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_end_to_end(data_dir: Path, tmp_path: Path, test_pngs: list[tuple[Path, str]]) -> None:
    """Train with mixed precision on the GPU, then predict on it; only runs where a GPU is lent."""
    _medlens(["train", "pneumoniamnist", "--out", str(tmp_path), "--device", "cuda", *SMALL], data_dir)
    assert json.loads((tmp_path / "model" / "bundle.json").read_text())["metrics"]["validation"]["auc"] >= 0.93
    result = _medlens(
        ["predict", str(tmp_path / "model"), *[str(f) for f, _ in test_pngs], "--device", "cuda"], data_dir
    )
    assert all(f.name in result.stdout for f, _ in test_pngs)
