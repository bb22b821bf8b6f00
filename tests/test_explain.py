"""Saliency maps on the shipped 2D and 3D models, their sanity checks, and `medlens explain` on PNG, DICOM and NIfTI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medlens.classify.bundle import load_classifier
from medlens.cli import app
from medlens.errors import ModelError
from medlens.explain.maps import ExplainOptions, explain
from medlens.explain.sanity import deletion_insertion, randomisation_correlation
from medlens.preprocess.pipeline import normalized_inputs

runner = CliRunner()
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def chest(pneumonia):
    bundle = load_classifier("pneumonia-28px")
    return bundle, normalized_inputs(pneumonia.split("test"), bundle.preprocessing)[:8]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "occlusion", "integrated-gradients"])
def test_maps_lie_on_the_input_grid(chest, method) -> None:
    bundle, x = chest
    maps = explain(bundle.model, x[:2], method, opts=ExplainOptions(baseline=-1.0))
    assert maps.shape == (2, 28, 28)
    assert maps.min() >= 0 and maps.max() == pytest.approx(1.0)


def test_gradcam_in_3d_is_upsampled_to_the_volume(data_dir) -> None:
    from medlens.datasets import load_medmnist

    bundle = load_classifier("adrenal")
    x = normalized_inputs(
        load_medmnist("adrenalmnist3d", size=64, data_dir=data_dir).split("test"), bundle.preprocessing
    )[:1]
    maps = explain(bundle.model, x, "gradcam")
    assert maps.shape == (1, 64, 64, 64)
    assert 0.0 < maps.mean() < 1.0


def test_a_layer_the_model_lacks_is_named_with_the_candidates(chest) -> None:
    bundle, x = chest
    with pytest.raises(ModelError, match="no layer 'layer9'.*layer4"):
        explain(bundle.model, x[:1], "gradcam", opts=ExplainOptions(layer="layer9"))
    with pytest.raises(ModelError, match="'fc' does not output a spatial feature map.*layer4"):
        explain(bundle.model, x[:1], "gradcam", opts=ExplainOptions(layer="fc"))


def test_maps_depend_on_the_weights_and_beat_random_insertion(chest) -> None:
    bundle, x = chest
    check = randomisation_correlation(bundle.model, x, "gradcam")
    assert check["spearman_mean"] < 0.5  # measured: -0.2 on these cases
    maps = explain(bundle.model, x, "gradcam")
    scores = deletion_insertion(bundle.model, x, maps, baseline=-1.0)
    assert all(0.0 <= scores[k] <= 1.0 for k in ("deletion", "insertion", "deletion_random", "insertion_random"))
    assert scores["insertion"] > scores["insertion_random"]


def _pydicom_data(name: str) -> Path:
    from medlens.recon.data import pydicom_data_file

    return pydicom_data_file(name)


def test_explain_cli_on_png_and_dicom_writes_overlays_and_a_secondary_capture(kermany_files, tmp_path: Path) -> None:
    chest_cr = _pydicom_data("RG1_UNCR.dcm")  # a real PA chest radiograph (CR, MONOCHROME1)
    missing = tmp_path / "missing.png"
    result = runner.invoke(
        app,
        [
            "explain",
            "pneumonia-28px",
            str(kermany_files[0][0]),
            str(chest_cr),
            str(missing),
            "--out",
            str(tmp_path / "out"),
            "--fit-input",
        ],
    )
    assert result.exit_code == 1, result.output  # the missing file fails, the others are written
    report = json.loads((tmp_path / "out" / "explain.json").read_text())
    rows = {Path(r["file"]).name: r for r in report["files"]}
    assert "no such file" in rows["missing.png"]["error"]
    assert rows[kermany_files[0][0].name]["outputs"][0].endswith("_gradcam.png")
    sc_path = Path([o for o in rows["RG1_UNCR.dcm"]["outputs"] if o.endswith(".dcm")][0])
    sc, source = pydicom.dcmread(sc_path), pydicom.dcmread(chest_cr, stop_before_pixels=True)
    assert sc.SOPClassUID == SECONDARY_CAPTURE
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns) and sc.SamplesPerPixel == 3
    assert "PixelSpacing" not in sc  # the source's spacing is 0\0 (unknown): not copied as if it were a size
    assert "not for diagnosis" in sc.DerivationDescription


def test_explain_cli_on_a_3d_nifti(data_dir, tmp_path: Path) -> None:
    from medlens.datasets import load_medmnist

    volume = load_medmnist("adrenalmnist3d", size=64, data_dir=data_dir).split("test").images[0, 0]
    path = tmp_path / "adrenal_case.nii.gz"
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), path)
    result = runner.invoke(
        app, ["explain", "adrenal", str(path), "--out", str(tmp_path / "out"), "--method", "gradcam++"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "adrenal_case_gradcam++.png").is_file()


def test_explain_cli_unknown_method_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["explain", "pneumonia-28px", "x.png", "--out", str(tmp_path), "--method", "gradcam+"])
    assert result.exit_code == 1 and "did you mean" in result.output


def test_gradcam_on_a_network_without_convolutions_points_to_other_methods(chest) -> None:
    import torch

    _bundle, x = chest
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 2))  # error path only: no feature maps
    with pytest.raises(ModelError, match="needs a convolutional layer.*occlusion or integrated-gradients"):
        explain(mlp, x[:1], "gradcam")
    assert explain(mlp, x[:1], "integrated-gradients").shape == (1, 28, 28)
