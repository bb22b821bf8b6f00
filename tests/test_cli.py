"""The CLI through Typer's runner: shipped models, predict, evaluate, demo and user errors."""

import csv
import json
import urllib.error

import pytest
from typer.testing import CliRunner

from medlens import __version__
from medlens.cli import app

runner = CliRunner(env={"COLUMNS": "250"})


def test_models_lists_shipped_bundles():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "pneumonia" in result.output and "hippocampus" in result.output and "segmentation" in result.output


def test_predict_by_name_writes_one_row_per_file(test_pngs, tmp_path):
    out = tmp_path / "results.csv"
    result = runner.invoke(app, ["predict", "pneumonia-28px", *[str(p) for p, _ in test_pngs], "--out", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["file", "normal", "pneumonia", "label"]
    assert len(rows) == len(test_pngs)
    for row in rows:
        assert abs(float(row["normal"]) + float(row["pneumonia"]) - 1) < 1e-5 and row["error"] == ""
    correct = sum(row["label"] == truth for row, (_, truth) in zip(rows, test_pngs))
    assert correct >= 5  # the shipped model on real test images
    nothing = runner.invoke(
        app, ["predict", "pneumonia-28px"]
    )  # files are optional only for clinical-only survival models
    assert nothing.exit_code != 0 and "give the image files" in nothing.output


def test_predict_refuses_mismatched_input_but_goes_on(test_pngs, kermany_files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    big = kermany_files[0][0]
    out = tmp_path / "r.json"
    result = runner.invoke(
        app, ["predict", "pneumonia-28px", str(test_pngs[0][0]), str(big), str(broken), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "2 of 3 files could not be predicted" in result.output
    rows = json.loads(out.read_text())
    assert rows[0]["error"] == "" and rows[0]["label"] in ("normal", "pneumonia")
    assert "expects images of 28x28 pixels, got 224x224" in rows[1]["error"]
    assert "cannot decode image" in rows[2]["error"]
    fitted = runner.invoke(
        app, ["predict", "pneumonia-28px", str(big), "--fit-input", "--out", str(tmp_path / "f.csv")]
    )
    assert fitted.exit_code == 0, fitted.output
    with (tmp_path / "f.csv").open() as f:
        assert "resized 224x224->28x28" in next(csv.DictReader(f))["notes"]


def test_unknown_model_is_one_clear_line():
    result = runner.invoke(app, ["predict", "pneumonai", "x.png"])
    assert result.exit_code == 1
    assert "did you mean 'cxr-pneumonia'" in result.output and "Traceback" not in result.output


def test_train_bad_setting_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["train", "pneumoniamnist", "--out", str(tmp_path), "--set", "model=resnet-18"])
    assert result.exit_code == 1
    assert "did you mean 'resnet18'" in result.output
    result = runner.invoke(app, ["train", "pneumonia-mnist", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "did you mean 'pneumoniamnist'" in result.output


def test_evaluate_shipped_model(tmp_path, data_dir):
    result = runner.invoke(
        app,
        [
            "evaluate",
            "pneumonia-28px",
            "--data",
            "pneumoniamnist",
            "--out",
            str(tmp_path),
            "--bootstrap",
            "100",
            "--data-dir",
            str(data_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n"] == 624 and metrics["metrics"]["auc"] > 0.944  # beats MedMNIST's ResNet-18 (28)
    assert metrics["confidence_intervals"]["auc"]["n"] == 100
    assert (tmp_path / "report.md").read_text().count("![") == 4


def test_evaluate_refuses_other_data(tmp_path, data_dir):
    result = runner.invoke(
        app,
        [
            "evaluate",
            "pneumonia-28px",
            "--data",
            "adrenalmnist3d",
            "--size",
            "64",
            "--out",
            str(tmp_path),
            "--data-dir",
            str(data_dir),
        ],
    )
    assert result.exit_code == 1 and "expects 1-channel images of 28x28" in result.output


def test_demo_runs_the_main_job(tmp_path, data_dir):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "evaluation" / "report.md").is_file() and (tmp_path / "predictions.csv").is_file()
    assert "report:" in result.output


def test_demo_offline_without_data_explains(tmp_path, monkeypatch):
    from medlens.datasets import catalog

    monkeypatch.setattr(catalog, "DEFAULT_CACHE", tmp_path / "cache")
    monkeypatch.delenv("MEDLENS_DATA_DIR", raising=False)
    monkeypatch.setattr(
        catalog.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline"))
    )
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--data-dir", str(tmp_path / "empty")])
    assert result.exit_code == 0, result.output
    assert "pneumoniamnist.npz not found" in result.output and "zenodo.org" in result.output
    assert "stored in the bundle" in result.output


def test_datasets_lists_catalog():
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 0 and "adrenalmnist3d" in result.output


def test_bundle_errors(tmp_path):
    from medlens.classify.bundle import load_classifier
    from medlens.errors import ModelError

    (tmp_path / "bundle.json").write_text("{not json")
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_classifier(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="is not a medlens bundle"):
        load_classifier(empty)


def test_pipeline_smoke_on_a_users_folder(folder_dataset, tmp_path):
    """train -> evaluate -> predict through the CLI on a folder of real JPEGs plus a CSV."""
    run = tmp_path / "run"
    trained = runner.invoke(
        app,
        [
            "train",
            str(folder_dataset),
            "--out",
            str(run),
            "--set",
            "model=cnn",
            "--set",
            "epochs=2",
            "--set",
            "batch_size=8",
            "--set",
            "image_size=64,64",
            "--seed",
            "1",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "bundle written to" in trained.output
    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            str(run / "model"),
            "--data",
            str(folder_dataset),
            "--out",
            str(tmp_path / "eval"),
            "--bootstrap",
            "50",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 6
    images = folder_dataset.parent / "images"
    predicted = runner.invoke(app, ["predict", str(run / "model"), str(images), "--out", str(tmp_path / "p.jsonl")])
    assert predicted.exit_code == 0, predicted.output
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 32


def test_predict_refuses_other_modality_even_when_fitting(tmp_path):
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    result = runner.invoke(app, ["predict", "pneumonia-28px", ct, "--fit-input", "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 1
    with (tmp_path / "r.csv").open() as f:
        assert "DICOM Modality is CT, the model was trained on CR images" in next(csv.DictReader(f))["error"]


@pytest.mark.parametrize(
    ("name", "dataset", "size"), [("pneumonia-28px", "pneumoniamnist", 28), ("adrenal", "adrenalmnist3d", 64)]
)
def test_shipped_bundles_reproduce_their_stored_test_metrics(name, dataset, size, data_dir, tmp_path):
    """float16 shipped weights must give the test AUC recorded when the bundle was chosen."""
    from medlens.classify.bundle import load_classifier
    from medlens.datasets import load_medmnist
    from medlens.evaluate.stage import evaluate_bundle

    bundle = load_classifier(name)
    stored = bundle.manifest["metrics"]["test"]
    result = evaluate_bundle(bundle, load_medmnist(dataset, size=size, data_dir=data_dir), tmp_path, n_bootstrap=10)
    assert result["metrics"]["auc"] == pytest.approx(stored["auc"], abs=0.005)
    assert result["metrics"]["accuracy"] == pytest.approx(stored["accuracy"], abs=0.01)


def test_version_alone_and_an_empty_folder_are_handled(tmp_path):
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == __version__
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["predict", "pneumonia-28px", str(tmp_path / "empty")])
    assert empty.exit_code == 1 and "holds no image files" in empty.output and "Traceback" not in empty.output


def test_listings_as_json_and_names_that_never_wrap(data_dir):
    from medlens.bundle.manifest import pretrained_names

    listed = json.loads(runner.invoke(app, ["models", "--json"]).output)
    assert [m["name"] for m in listed] == list(pretrained_names()) and all("(" in m["data (licence)"] for m in listed)
    assert any(d["name"] == "pneumoniamnist" for d in json.loads(runner.invoke(app, ["datasets", "--json"]).output))
    series = json.loads(runner.invoke(app, ["info", str(data_dir / "dicom" / "ct_kits_slices"), "--json"]).output)
    assert series[0]["mod"] == "CT" and series[0]["slices"] == "11"
    narrow = CliRunner(env={"COLUMNS": "60"}).invoke(app, ["datasets"]).output
    assert "organmnist3d" in narrow and "adrenalmnist3d" in narrow  # whole names at 60 columns


def test_export_out_leaves_the_shipped_bundle_as_it_is(test_pngs, tmp_path):
    from medlens.bundle.manifest import resolve_bundle_path

    shipped = sorted(p.name for p in resolve_bundle_path("pneumonia-28px").iterdir())
    result = runner.invoke(app, ["export", "pneumonia-28px", "--out", str(tmp_path / "pneu")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pneu" / "model.onnx").is_file() and sorted(
        p.name for p in resolve_bundle_path("pneumonia-28px").iterdir()
    ) == shipped
    predicted = runner.invoke(
        app, ["predict", str(tmp_path / "pneu"), str(test_pngs[0][0]), "--out", str(tmp_path / "rows.csv")]
    )
    assert predicted.exit_code == 0, predicted.output
    again = runner.invoke(app, ["export", "pneumonia-28px", "--out", str(tmp_path / "pneu")])
    assert again.exit_code == 1 and "not empty" in again.output
