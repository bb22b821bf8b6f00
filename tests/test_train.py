"""Training on small real data: a golden metric, resume, and a user's folder dataset."""

import json

import pytest

from medlens.classify.bundle import load_classifier
from medlens.classify.train import train_classifier
from medlens.config import TrainConfig
from medlens.errors import ConfigError
from medlens.evaluate.stage import evaluate_bundle

SMALL = dict(dataset="pneumoniamnist", model="cnn", epochs=3, batch_size=64, max_train_samples=1000, patience=3)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("run")
    return train_classifier(TrainConfig(**SMALL), out, data_dir=data_dir, show_progress=False)


def test_golden_small_model_reaches_stated_auc(small_bundle, pneumonia, tmp_path):
    """A regression anywhere (reader, preprocessing, loss, loop, threshold, bundle) shows up here."""
    bundle = load_classifier(small_bundle)
    assert bundle.manifest["metrics"]["validation"]["auc"] >= 0.93
    result = evaluate_bundle(bundle, pneumonia, tmp_path, split="test", n_bootstrap=200)
    assert result["metrics"]["auc"] >= 0.88
    assert result["metrics"]["accuracy"] >= 0.75
    assert {p.name for p in tmp_path.iterdir()} >= {
        "metrics.json",
        "report.md",
        "roc.png",
        "pr.png",
        "confusion.png",
        "calibration.png",
    }


def test_bundle_describes_itself(small_bundle):
    manifest = json.loads((small_bundle / "bundle.json").read_text())
    assert manifest["label_names"] == ["normal", "pneumonia"]
    assert 0 < manifest["thresholds"][0] < 1 and manifest["threshold_method"].startswith("Youden")
    assert manifest["expected_input"] == {
        "modality": "CR",
        "channels": 1,
        "spatial_shape": [28, 28],
        "intensity_range": [0.0, 255.0],
        "resized_by_pipeline": False,
    }
    assert len(manifest["data"]["sha256"]) == 64 and manifest["data"]["license"] == "CC BY 4.0"
    assert manifest["config"]["augment_resolved"] == "xray"  # no left-right flips for chest X-rays
    assert manifest["medlens_version"]


def test_resume_continues_from_last_checkpoint(tmp_path, data_dir):
    cfg = TrainConfig(**{**SMALL, "epochs": 1, "max_train_samples": 300})
    train_classifier(cfg, tmp_path, data_dir=data_dir, show_progress=False)
    first = json.loads((tmp_path / "checkpoints" / "history.json").read_text())
    more = TrainConfig(**{**SMALL, "epochs": 2, "max_train_samples": 300})
    train_classifier(more, tmp_path, data_dir=data_dir, show_progress=False)
    history = json.loads((tmp_path / "checkpoints" / "history.json").read_text())
    assert len(first) == 1 and len(history) == 2 and history[0] == first[0]
    other = TrainConfig(**{**SMALL, "epochs": 2, "max_train_samples": 300, "lr": 0.01})
    with pytest.raises(ConfigError, match="written by a run with other settings"):
        train_classifier(other, tmp_path, data_dir=data_dir, show_progress=False)


def test_train_on_folder_dataset_and_predict(folder_dataset, tmp_path):
    from medlens.classify.predict import predict_files

    cfg = TrainConfig(dataset=str(folder_dataset), image_size=(64, 64), model="cnn", epochs=2, batch_size=8)
    bundle = load_classifier(train_classifier(cfg, tmp_path / "run", show_progress=False))
    assert bundle.preprocessing.resize and bundle.label_names == ["normal", "pneumonia"]
    files = sorted((folder_dataset.parent / "images").iterdir())[:3]
    rows = predict_files(bundle, files)  # 224 px files: the bundle itself declares the resize to 64
    assert all(not r.error and r.label in ("normal", "pneumonia") and r.notes == [] for r in rows)
    assert all(abs(sum(r.probabilities.values()) - 1) < 1e-5 for r in rows)


def test_imbalance_losses_on_pneumonia_labels(pneumonia) -> None:
    """Focal loss at gamma 0 is cross-entropy and down-weighs easy cases at gamma 2; logit adjustment is cross-entropy on
    logits shifted by the log class prior of PneumoniaMNIST's train split (1214 normal / 3494 pneumonia)."""
    import dataclasses

    import numpy as np
    import torch
    from monai.losses import FocalLoss

    from medlens.classify.train import _OneHotFocal, make_loss

    logits = torch.tensor([[2.0, -1.0], [0.2, 0.1], [-3.0, 3.0], [0.0, 0.5]])
    targets = torch.tensor([0, 1, 1, 0])
    ce = torch.nn.functional.cross_entropy(logits, targets)
    assert float(_OneHotFocal(FocalLoss(gamma=0.0, use_softmax=True), 2, "binary")(logits, targets)) == pytest.approx(
        float(ce)
    )
    focal = make_loss(pneumonia, "focal")
    easy, hard = (torch.tensor([[4.0, -4.0]]), torch.tensor([0])), (torch.tensor([[0.1, 0.0]]), torch.tensor([0]))
    ratio = lambda x, y: float(focal(x, y) / torch.nn.functional.cross_entropy(x, y))  # noqa: E731
    assert ratio(*easy) < 0.01 < ratio(*hard) < 1
    counts = np.bincount(pneumonia.splits["train"].labels)
    shifted = logits + torch.log(torch.tensor(counts / counts.sum(), dtype=torch.float32))
    assert float(make_loss(pneumonia, "logit-adjusted")(logits, targets)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(shifted, targets)), rel=1e-5
    )
    multilabel = dataclasses.replace(pneumonia, task="multilabel")
    with pytest.raises(ConfigError, match="one label per image"):
        make_loss(multilabel, "logit-adjusted")


def test_imbalance_options_train(tmp_path, data_dir):
    for imbalance in ("weighted-loss", "balanced-sampler", "focal", "logit-adjusted"):
        cfg = TrainConfig(**{**SMALL, "epochs": 1, "max_train_samples": 200, "imbalance": imbalance})
        bundle = train_classifier(cfg, tmp_path / imbalance, data_dir=data_dir, show_progress=False)
        assert json.loads((bundle / "bundle.json").read_text())["config"]["imbalance"] == imbalance
