"""ONNX export with preprocessing in the graph, and the ONNX Runtime backend, on the shipped pneumonia model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medlens.bundle.manifest import resolve_bundle_path
from medlens.cli import app

runner = CliRunner()


@pytest.fixture()
def exported(tmp_path: Path, data_dir: Path) -> Path:
    bundle = tmp_path / "pneumonia"
    shutil.copytree(resolve_bundle_path("pneumonia-28px"), bundle)
    result = runner.invoke(app, ["export", str(bundle), "--format", "onnx", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return bundle


def _probabilities(path: Path) -> dict[str, float]:
    with path.open() as f:
        return {Path(r["file"]).name: float(r["pneumonia"]) for r in csv.DictReader(f)}


def test_onnx_export_matches_pytorch_on_real_images(exported: Path, kermany_files, tmp_path: Path) -> None:
    record = json.loads((exported / "bundle.json").read_text())["onnx"]
    assert record["max_abs_difference"] < 1e-4 and record["checked_images"] == 64
    files = [str(f) for f, _ in kermany_files[:8]]
    outs = {}
    for backend in ("torch", "onnxruntime", "auto"):
        out = tmp_path / f"{backend}.csv"
        result = runner.invoke(
            app, ["predict", str(exported), *files, "--fit-input", "--backend", backend, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        outs[backend] = _probabilities(out)
    for name, p in outs["torch"].items():
        assert outs["onnxruntime"][name] == pytest.approx(p, abs=1e-4)
        assert outs["auto"][name] == outs["onnxruntime"][name]  # auto picks ONNX Runtime once exported


def test_onnxruntime_backend_without_export_says_how_to_get_one(kermany_files) -> None:
    result = runner.invoke(
        app, ["predict", "pneumonia-28px", str(kermany_files[0][0]), "--fit-input", "--backend", "onnxruntime"]
    )
    assert result.exit_code == 1
    assert "has no model.onnx; run `medlens export" in result.output


def test_export_refuses_other_formats(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "pneumonia-28px", "--format", "tflite"])
    assert result.exit_code == 1 and "--format 'tflite' is not supported" in result.output


def test_segmentation_export_and_onnxruntime_backend_give_the_same_labels(data_dir: Path, tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    bundle = tmp_path / "hippocampus"
    shutil.copytree(resolve_bundle_path("hippocampus"), bundle)
    result = runner.invoke(app, ["export", str(bundle), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    record = json.loads((bundle / "bundle.json").read_text())["onnx"]
    assert record["max_abs_difference"] < 1e-4 and record["checked_on"].startswith("hippocampus_")
    case = data_dir / "msd_hippocampus" / "imagesTr" / "hippocampus_004.nii.gz"  # a held-out test case
    labels = {}
    for backend in ("torch", "onnxruntime"):
        result = runner.invoke(
            app, ["segment", str(bundle), str(case), "--out", str(tmp_path / backend), "--backend", backend]
        )
        assert result.exit_code == 0, result.output
        labels[backend] = np.asarray(nib.load(tmp_path / backend / case.name).dataobj)
    assert (labels["torch"] == labels["onnxruntime"]).mean() > 0.999


def test_streamed_prediction_resumes_after_a_crash_without_duplicates(test_pngs, tmp_path: Path) -> None:
    files = [str(p) for p, _ in test_pngs]
    out = tmp_path / "rows.csv"
    first = runner.invoke(app, ["predict", "pneumonia-28px", *files, "--out", str(out)])
    assert first.exit_code == 0, first.output
    complete = out.read_text()
    lines = complete.splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][:15])  # killed mid-write: 3 rows done and a torn fourth
    again = runner.invoke(app, ["predict", "pneumonia-28px", *files, "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "3 already in rows.csv were skipped" in again.output
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == files  # each file once, in order
    with (tmp_path / "rows_ref.csv").open("w") as f:
        f.write(complete)
    with (tmp_path / "rows_ref.csv").open() as f:
        assert [r["pneumonia"] for r in csv.DictReader(f)] == [r["pneumonia"] for r in rows]


def test_streamed_jsonl_and_a_bad_file_in_the_middle(test_pngs, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    files = [str(test_pngs[0][0]), str(broken), str(test_pngs[1][0])]
    out = tmp_path / "rows.jsonl"
    result = runner.invoke(app, ["predict", "pneumonia-28px", *files, "--out", str(out)])
    assert result.exit_code == 1 and "1 of 3 files could not be predicted" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [bool(r["error"]) for r in rows] == [False, True, False]


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_int8_is_kept_only_when_validation_auc_holds_and_it_is_faster(
    exported: Path, data_dir: Path, kind: str
) -> None:
    result = runner.invoke(app, ["export", str(exported), "--quantize", kind, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    q = json.loads((exported / "bundle.json").read_text())["onnx"]["int8"]
    assert q["kind"] == kind and abs(q["test_fp32"] - 0.983) < 0.005  # the shipped model's test AUC
    rule = q["val_fp32"] - q["val_int8"] <= q["max_auc_drop"] and q["int8_images_per_s"] > q["fp32_images_per_s"]
    assert q["kept"] == rule
    assert (exported / "model.int8.onnx").is_file() == q["kept"]
