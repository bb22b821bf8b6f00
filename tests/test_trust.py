"""Calibration, referral, corruptions, shift and subgroups on the shipped pneumonia model and real data."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from medlens.classify.bundle import load_classifier
from medlens.errors import ConfigError, DataError, ModelError
from medlens.evaluate.metrics import classification_metrics
from medlens.models.ood import embeddings
from medlens.models.probs import scale_logits
from medlens.models.uncertainty import (
    SampleOptions,
    probability_samples,
    referral_curve,
    referral_threshold,
    uncertainty_scores,
)
from medlens.preprocess.pipeline import normalized_inputs
from medlens.trust.calibrate import calibrate_bundle, fit_temperature, map_threshold
from medlens.trust.corruptions import CORRUPTIONS, corrupt
from medlens.trust.fairness import group_values, subgroup_metrics
from medlens.trust.shift import BatchShiftScorer, batch_indices, bn_adapted, detection_auroc


@pytest.fixture(scope="module")
def shipped(pneumonia):
    bundle = load_classifier("pneumonia-28px")
    val, test = pneumonia.split("val"), pneumonia.split("test")
    return (
        bundle,
        val,
        test,
        normalized_inputs(val, bundle.preprocessing),
        normalized_inputs(test, bundle.preprocessing),
    )


def test_temperature_fits_an_overconfident_model_and_keeps_decisions(shipped) -> None:
    bundle, val, test, x_val, x_test = shipped
    z_val, z_test = bundle.predict_logits(x_val), bundle.predict_logits(x_test)
    t_real = fit_temperature(z_val, val.labels, "binary")
    assert 0.5 < t_real < 2.0
    # the same real logits made three times over-confident: the fit must undo it
    assert fit_temperature(3 * z_val, val.labels, "binary") == pytest.approx(3 * t_real, rel=0.05)
    # mapping the threshold through T keeps every decision on the test set
    t = 2.5
    before = scale_logits(z_test, "binary")[:, 1] >= bundle.thresholds[0]
    after = scale_logits(z_test, "binary", t)[:, 1] >= map_threshold(bundle.thresholds[0], t)
    assert (before == after).all()


def test_referring_the_most_uncertain_tenth_raises_accuracy(shipped) -> None:
    bundle, _val, test, _x_val, x_test = shipped
    samples = probability_samples("softmax", [bundle.model], x_test, "binary")
    u = uncertainty_scores(samples, "binary", bundle.thresholds)
    metric = partial(classification_metrics, "binary", label_names=bundle.label_names, thresholds=bundle.thresholds)
    curve = {r["referred_fraction"]: r for r in referral_curve(metric, test.labels, samples[0], u)}
    assert curve[0.0]["n_kept"] == len(test.labels)
    assert curve[0.1]["accuracy"] >= curve[0.0]["accuracy"] + 0.02  # measured: 0.920 -> 0.961
    with pytest.raises(ConfigError, match="fraction"):
        referral_threshold(u, 1.0)


def test_mc_dropout_on_a_network_without_dropout_says_how_to_fix(shipped) -> None:
    bundle, *_rest, x_test = shipped
    with pytest.raises(ModelError, match="dropout=0.2"):
        probability_samples("mc-dropout", [bundle.model], x_test[:4], "binary")
    tta = probability_samples("tta", [bundle.model], x_test[:4], "binary", SampleOptions(modality="CR"))
    assert tta.shape == (5, 4, 2)  # identity + 4 one-pixel shifts; no left-right flip on a chest X-ray


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_corruptions_keep_shape_and_range_and_grow_with_severity(name, pneumonia) -> None:
    images = pneumonia.split("test").images[:16].astype(np.float32)
    change = []
    for severity in (1, 3, 5):
        out = corrupt(images, name, severity, (0.0, 255.0), seed=1)
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
        change.append(float(np.abs(out - images).mean()))
    assert change[0] < change[1] < change[2], change
    with pytest.raises(ConfigError, match="severity"):
        corrupt(images, name, 6, (0.0, 255.0))


def test_shift_detection_and_bn_adaptation_on_noisy_batches(shipped) -> None:
    bundle, _val, test, x_val, x_test = shipped
    prep = bundle.preprocessing
    scorer = BatchShiftScorer(bundle.predict_proba(x_val), embeddings(bundle.model, x_val))
    noisy = normalized_inputs(
        type(test)(corrupt(test.images, "gaussian-noise", 4, (0, 255)), test.labels, test.ids), prep
    )
    batches = batch_indices(len(test), 32, 20, seed=0)
    clean_e, noisy_e = embeddings(bundle.model, x_test), embeddings(bundle.model, noisy)
    auroc = detection_auroc(
        [scorer.embedding_score(clean_e[b]) for b in batches], [scorer.embedding_score(noisy_e[b]) for b in batches]
    )
    assert auroc > 0.9
    adapted = bn_adapted(bundle.model, noisy)
    assert adapted is not bundle.model
    assert not np.allclose(adapted.bn1.running_mean.numpy(), bundle.model.bn1.running_mean.numpy())


def test_calibrate_writes_a_bundle_that_predict_uses(shipped, pneumonia, tmp_path: Path) -> None:
    bundle, *_rest, x_test = shipped
    result = calibrate_bundle(bundle, pneumonia, tmp_path / "cal", referral_fraction=0.1)
    calibrated = load_classifier(tmp_path / "cal")
    assert calibrated.temperature == pytest.approx(result["calibration"]["temperature"])
    same_decisions = (bundle.predict_proba(x_test)[:, 1] >= bundle.thresholds[0]) == (
        calibrated.predict_proba(x_test)[:, 1] >= calibrated.thresholds[0]
    )
    assert same_decisions.all()
    from medlens.classify.predict import referral_flags

    flags = referral_flags(calibrated, pneumonia.split("test").images)
    assert 0.05 < flags.mean() < 0.35  # 10% of validation; more on the shifted test split


def _nih_rows(data_dir: Path) -> list[dict[str, str]]:
    with (data_dir / "cxr_nih14_64" / "nih1000_metadata.csv").open() as f:
        return list(csv.DictReader(f))


def test_subgroups_on_real_metadata(data_dir: Path) -> None:
    from medlens.io import read_image
    from medlens.preprocess import prepare_image

    rows = _nih_rows(data_dir)[:400]
    labels = np.array([int(r["label_abnormal"]) for r in rows])
    bundle = load_classifier(
        "pneumonia-28px"
    )  # a real model's real scores, read here as "abnormal" scores: a weak scorer
    x = np.stack(
        [
            prepare_image(read_image(data_dir / "cxr_nih14_64" / r["image_file"]), bundle.preprocessing, adapt=True)[0]
            for r in rows
        ]
    )
    probs = bundle.predict_proba(x)
    meta = [{"sex": r["Patient Gender"], "age": r["Patient Age"], "view": r["View Position"]} for r in rows]
    assert set(group_values(meta, "age")) <= {"0-17", "18-39", "40-59", "60-79", "80+", "unknown"}
    metric = partial(classification_metrics, "binary", label_names=["normal", "abnormal"], thresholds=[0.5])
    result = subgroup_metrics(metric, labels, probs, meta, ["sex", "age"], n_bootstrap=50)
    sex = result["sex"]["groups"]
    assert sum(g["n"] for g in sex) == len(rows)
    for g in sex:
        ci = g["ci"]["auc"]
        assert ci["low"] <= g["metrics"]["auc"] <= ci["high"]
    small = [g for g in result["age"]["groups"] if g["n"] < 30]
    assert small and all("too few" in g["warning"] for g in small)
    assert "auc" in result["sex"]["largest_gap"]
    with pytest.raises(DataError, match="unknown metadata column.*site"):
        subgroup_metrics(metric, labels, probs, meta, ["site"])
    with pytest.raises(DataError, match="'scanner' is empty for every case"):
        subgroup_metrics(metric, labels, probs, [{**m, "scanner": ""} for m in meta], ["scanner"])


def test_audit_cli_writes_a_complete_model_card(data_dir: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from medlens.cli import app

    out = tmp_path / "audit"
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "pneumonia-28px",
            "--data",
            "pneumoniamnist",
            "--out",
            str(out),
            "--max-cases",
            "100",
            "--bootstrap",
            "100",
            "--data-dir",
            str(data_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    audit = json.loads((out / "audit.json").read_text())
    for section in ("performance", "calibration", "referral", "robustness", "explanations", "subgroups"):
        assert section in audit
    assert len(audit["robustness"]["rows"]) == len(CORRUPTIONS.names()) * 5
    card = (out / "model_card.md").read_text()
    for heading in (
        "Intended use",
        "Training data",
        "Performance",
        "Calibration",
        "Uncertainty and referral",
        "Robustness",
        "Explanations",
        "Subgroups",
        "Known limitations",
        "Out-of-distribution gate",
    ):
        assert f"## {heading}" in card
    assert "Positive class: pneumonia" in card
    gate = audit["ood_gate"]
    assert gate["audited_split"]["flag_rate"] < 0.1 and len(gate["reference_sets"]) == 6
    assert all(r["n"] > 0 for r in gate["reference_sets"].values())
    for image in ("calibration_before_after.png", "referral.png", "robustness.png", "evaluation/roc.png"):
        assert (out / image).is_file() and image in card
    assert "<table>" in (out / "model_card.html").read_text()


def test_audit_groups_that_do_not_exist_are_refused(folder_dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medlens.cli import app

    runner = CliRunner()
    assert (
        runner.invoke(
            app,
            [
                "train",
                str(folder_dataset),
                "--out",
                str(tmp_path / "run"),
                "--set",
                "epochs=1",
                "--set",
                "image_size=28,28",
                "--set",
                "model=cnn",
            ],
        ).exit_code
        == 0
    )
    result = runner.invoke(
        app,
        [
            "audit",
            str(tmp_path / "run" / "model"),
            "--data",
            str(folder_dataset),
            "--out",
            str(tmp_path / "audit"),
            "--groups",
            "scanner",
        ],
    )
    assert result.exit_code == 1
    assert "unknown metadata column(s) scanner; the data has: site" in result.output
