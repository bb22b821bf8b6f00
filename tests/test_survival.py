"""Prognosis on real NSCLC-Radiomics (Lung1) data: loading, checks, heads, metrics, and the CLI end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import medlens
from medlens.cli import app
from medlens.errors import ConfigError, DataError
from medlens.survival.data import load_survival_folder
from medlens.survival.heads import HEADS, CoxLoss, DiscreteHazardLoss, event_time_cuts
from medlens.survival.metrics import survival_metrics
from medlens.survival.train import SurvivalConfig

runner = CliRunner(env={"COLUMNS": "250"})
CLINICAL = ["--set", "numeric_columns=age", "--set", "categorical_columns=Overall.Stage,Histology,gender"]


@pytest.fixture(scope="module")
def lung1(data_dir: Path) -> Path:
    return data_dir / "ct_lung1_survival"


def test_lung1_loads_with_clinical_values_and_a_patient_split(lung1: Path) -> None:
    data = load_survival_folder(lung1)
    assert data.images.shape == (420, 1, 128, 128) and data.event.sum() == 372 and (data.time > 0).all()
    assert data.metadata[0]["PatientID"] == data.ids[0] and "age" in data.metadata[0]
    split = data.splits
    assert sum(len(v) for v in split.values()) == 420 and not set(split["train"]) & set(split["test"])
    assert all(0.8 < data.event[v].mean() < 0.95 for v in split.values())  # stratified by event
    assert "TCIA" in data.source["license"] and data.source["doi"]


def write_cohort(lung1: Path, folder: Path, time: np.ndarray | None = None, event: np.ndarray | None = None) -> Path:
    """A copy of 40 real Lung1 patients with (for error paths) their times or events altered."""
    with np.load(lung1 / "lung1_ct_midslice_128.npz") as raw:
        arrays = {k: raw[k][:40] for k in raw.files}
    arrays["survival_days"] = arrays["survival_days"] if time is None else time
    arrays["event"] = arrays["event"] if event is None else event
    folder.mkdir()
    np.savez(folder / "cohort.npz", **arrays)
    shutil.copy(lung1 / "lung1_clinical.csv", folder / "clinical.csv")
    return folder


def test_bad_survival_data_is_refused_clearly(lung1: Path, tmp_path: Path) -> None:
    times = np.load(lung1 / "lung1_ct_midslice_128.npz")["survival_days"][:40].copy()
    times[[3, 7]] = [0, -5]
    with pytest.raises(DataError, match=r"2 row\(s\) have a survival time that is not positive \(rows \[4, 8\]"):
        load_survival_folder(write_cohort(lung1, tmp_path / "times", time=times))
    with pytest.raises(DataError, match="all 40 patients are censored"):
        load_survival_folder(write_cohort(lung1, tmp_path / "censored", event=np.zeros(40, int)))
    with pytest.raises(DataError, match="1 \\(event\\) or 0 \\(censored\\)"):
        load_survival_folder(write_cohort(lung1, tmp_path / "coded", event=np.full(40, 2)))
    with pytest.raises(ConfigError, match="needs clinical columns"):
        SurvivalConfig(inputs="fused")
    with pytest.raises(Exception, match="did you mean 'cox'"):
        SurvivalConfig(head="coxx")


def test_heads_prefer_the_true_order_of_real_survival_times(lung1: Path) -> None:
    data = load_survival_folder(lung1)
    target = torch.as_tensor(np.stack([data.time, data.event], 1), dtype=torch.float32)
    truth = torch.as_tensor(-np.log(data.time), dtype=torch.float32)[:, None]  # shorter survival = higher risk
    assert CoxLoss()(truth, target) < CoxLoss()(-truth, target)
    assert survival_metrics(truth.numpy()[:, 0], data.time, data.event)["c_index"] > 0.95
    cuts = event_time_cuts(data.time, data.event, 5)
    assert len(cuts) == 4 and np.all(np.diff(cuts) > 0)
    interval = np.searchsorted(cuts, data.time, side="right")
    good = np.where(np.arange(5)[None] == interval[:, None], 3.0, -3.0)  # high hazard in the interval of the event
    loss = DiscreteHazardLoss(cuts)
    assert loss(torch.as_tensor(good), target) < loss(torch.as_tensor(-good), target)
    curves = HEADS.get("discrete").survival(good[:5], {"cuts": cuts.tolist()}, np.linspace(1, 3000, 30))
    assert np.all(np.diff(curves, axis=1) <= 1e-12) and curves.max() <= 1.0


def test_survival_model_trains_writes_km_plot_and_predicts_from_cli(lung1: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            str(lung1),
            "--task",
            "survival",
            "--out",
            str(out),
            "--set",
            "epochs=2",
            "--set",
            "n_bootstrap=50",
            *CLINICAL,
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "survival_report.json").read_text())
    assert 0 <= report["test"]["c_index"] <= 1 and 0 < report["test"]["ibs"] < 0.5 and report["test"]["n"] == 63
    assert report["kaplan_meier_test"]["logrank_p"] <= 1 and (out / "km_test.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((out / "model" / "bundle.json").read_text())
    assert manifest["task"] == "survival" and not set(manifest["split_ids"]["train"]) & set(
        manifest["split_ids"]["test"]
    )

    slices = np.load(lung1 / "lung1_ct_midslice_128.npz")["images"]
    Image.fromarray(slices[0]).save(tmp_path / "a.png")  # 16-bit PNG keeps the values
    Image.fromarray(slices[0][:64]).save(tmp_path / "cropped.png")
    (tmp_path / "clinical.csv").write_text(
        "file,age,Overall.Stage,Histology,gender\na.png,78.7,IIIb,large cell,male\n"
        "cropped.png,60,I,adenocarcinoma,female\n"
    )
    predictions = tmp_path / "pred.json"
    result = runner.invoke(
        app,
        [
            "predict",
            str(out / "model"),
            str(tmp_path / "a.png"),
            str(tmp_path / "cropped.png"),
            "--clinical",
            str(tmp_path / "clinical.csv"),
            "--out",
            str(predictions),
        ],
    )
    assert result.exit_code == 1  # the cropped image fails, the other is predicted
    rows = json.loads(predictions.read_text())
    assert (
        rows[0]["risk_group"] in ("low risk", "high risk")
        and 0 <= rows[0]["survival_730d"] <= rows[0]["survival_365d"] <= 1
    )
    assert "shape" in rows[1]["error"]
    missing = runner.invoke(app, ["predict", str(out / "model"), str(tmp_path / "a.png")])
    assert missing.exit_code != 0 and "--clinical" in missing.output


def test_clinical_only_cox_baseline(lung1: Path, tmp_path: Path) -> None:
    from medlens.survival.train import train_survival

    cfg = SurvivalConfig(
        inputs="clinical", numeric_columns=("age",), categorical_columns=("Overall.Stage", "Histology"), n_bootstrap=50
    )
    out = train_survival(lung1, cfg, tmp_path / "clinical", show_progress=False)
    report = json.loads((out / "survival_report.json").read_text())
    manifest = json.loads((out / "model" / "bundle.json").read_text())
    assert manifest["settings"]["model"] == "lifelines CoxPHFitter" and len(manifest["settings"]["coefficients"]) > 3
    assert (
        0.3 < report["validation"]["c_index"] < 0.8
        and report["validation"]["c_index_ci"]["low"] < report["validation"]["c_index"]
    )

    # it predicts from a CSV alone: the test patients' rows give back the risks the report was scored on
    test = load_survival_folder(lung1, cfg.seed, cfg.val_fraction, cfg.test_fraction).subset("test")
    columns = ["PatientID", "age", "Overall.Stage", "Histology"]
    lines = [",".join(columns)] + [
        ",".join([pid] + [row[c] for c in columns[1:]]) for pid, row in zip(test.ids, test.metadata)
    ]
    (tmp_path / "patients.csv").write_text("\n".join(lines) + "\n")
    result = runner.invoke(
        app,
        [
            "predict",
            str(out / "model"),
            "--clinical",
            str(tmp_path / "patients.csv"),
            "--out",
            str(tmp_path / "risk.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert test.ids[0] not in result.output  # the console names rows by line; the IDs stay in --out
    rows = json.loads((tmp_path / "risk.json").read_text())
    assert [r["case"] for r in rows] == list(test.ids) and all(0 < r["survival_365d"] <= 1 for r in rows)
    again = survival_metrics(np.array([r["risk"] for r in rows]), test.time, test.event)
    assert again["c_index"] == pytest.approx(report["test"]["c_index"], abs=1e-6)
    api = medlens.open_bundle(out / "model").predict(clinical=tmp_path / "patients.csv")  # the Python API, same rows
    assert [r["risk"] for r in api] == pytest.approx([r["risk"] for r in rows])

    # a stage the training split never had is that row's error; the other rows are still predicted
    lines[1] = (
        lines[1].replace(test.metadata[0]["Overall.Stage"], "IX", 1) if test.metadata[0]["Overall.Stage"] else lines[1]
    )
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    bad = runner.invoke(app, ["predict", str(out / "model"), "--clinical", str(tmp_path / "bad.csv")])
    assert bad.exit_code != 0 and "1 of" in bad.output and "'IX'" in bad.output
    missing = runner.invoke(app, ["predict", str(out / "model")])
    assert missing.exit_code != 0 and "--clinical" in missing.output
    export = runner.invoke(app, ["export", str(out / "model")])
    assert export.exit_code != 0 and "survival bundle" in export.output
