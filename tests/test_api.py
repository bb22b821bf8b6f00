"""The public Python API: ``medlens.open_bundle(...).predict(...)`` for every kind, and the bundle format."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import medlens
from medlens.bundle.manifest import BUNDLE_FORMAT, READABLE_FORMATS, pretrained_names, save_bundle
from medlens.classify.bundle import ClassifierBundle
from medlens.errors import ModelError
from medlens.kinds import KINDS, kinds_supporting
from medlens.recon.bundle import EnhancerBundle
from medlens.segment.bundle import SegmenterBundle

SHIPPED_KINDS = {
    "pneumonia-28px": "classifier",
    "cxr-pneumonia": "classifier",
    "adrenal": "classifier",
    "hippocampus": "segmenter",
    "blood-cells": "detector",
    "ct-denoise": "enhancer",
    "mri-recon": "enhancer",
    "upscale": "enhancer",
}


def test_import_medlens_loads_no_deep_learning_library() -> None:
    code = "import sys, medlens; print('torch' in sys.modules, 'numpy' in sys.modules, sorted(medlens.__all__)[:3])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False False"), out


@pytest.mark.parametrize("name", sorted(SHIPPED_KINDS))
def test_every_shipped_bundle_opens_as_its_kind(name: str) -> None:
    bundle = medlens.open_bundle(name)
    manifest = json.loads((bundle.path / "bundle.json").read_text())
    assert manifest["format"] in READABLE_FORMATS  # shipped bundles of format 1 keep loading
    assert bundle.kind == SHIPPED_KINDS[name] and bundle.license  # every shipped bundle names its data's licence
    assert not bundle.model.training and "predict" in bundle.supports


def test_the_shipped_names_are_the_ones_tested() -> None:
    assert set(pretrained_names()) == set(SHIPPED_KINDS)  # a new shipped bundle needs its line above
    assert set(KINDS.names()) == {"classifier", "segmenter", "detector", "survival", "enhancer"}


def test_a_bundle_written_now_has_the_current_format_and_kind(tmp_path: Path) -> None:
    old = medlens.open_bundle("pneumonia-28px")
    manifest = {k: v for k, v in old.manifest.items() if k not in ("format", "kind")}
    manifest["data"] = {**manifest["data"], "licence": manifest["data"].pop("license")}  # the older spelling
    save_bundle(tmp_path / "copy", old.model, manifest, half=True)
    written = json.loads((tmp_path / "copy" / "bundle.json").read_text())
    assert written["format"] == BUNDLE_FORMAT and written["kind"] == "classifier"
    assert written["data"]["license"] == "CC BY 4.0" and "licence" not in written["data"]
    again = medlens.open_bundle(tmp_path / "copy")
    assert isinstance(again, ClassifierBundle) and again.label_names == old.label_names


def test_classifier_predict_on_real_radiographs(kermany_files: list[tuple[Path, str]], tmp_path: Path) -> None:
    files = [kermany_files[0][0], kermany_files[-1][0], tmp_path / "missing.png"]
    rows = medlens.open_bundle("pneumonia-28px").predict(files, adapt=True)
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert rows[0]["label"] in ("normal", "pneumonia") and rows[0]["normal"] + rows[0]["pneumonia"] == pytest.approx(
        1, abs=1e-5
    )
    assert rows[2]["error"] and not rows[0]["error"]  # a bad file gets its error; the others are predicted


def test_segmenter_predict_returns_label_maps_and_volumes(data_dir: Path, tmp_path: Path) -> None:
    case = data_dir / "msd_hippocampus" / "imagesTr" / "hippocampus_004.nii.gz"
    bundle = medlens.open_bundle("hippocampus")
    assert isinstance(bundle, SegmenterBundle)
    row = bundle.predict([case])[0]
    assert row["error"] == "" and row["labels"].array.shape == medlens.load_volume(case).array.shape
    assert 0.2 < row["volumes_ml"]["anterior"] + row["volumes_ml"]["posterior"] < 10  # a human hippocampus: a few mL
    written = bundle.predict([case], out=tmp_path / "seg")[0]
    assert (tmp_path / "seg" / written["labels"]).is_file() and written["volumes_ml"] == pytest.approx(
        row["volumes_ml"]
    )


def test_enhancer_predict_writes_the_denoised_ct(data_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "ct"
    source.mkdir()
    shutil.copy(data_dir / "dicom" / "ct_kits_slices" / "CT2.dcm", source / "CT2.dcm")
    bundle = medlens.open_bundle("ct-denoise")
    assert isinstance(bundle, EnhancerBundle)
    rows = bundle.predict([source / "CT2.dcm", tmp_path / "nothing.dcm"], out=tmp_path / "out")
    assert rows[0]["error"] == "" and Path(rows[0]["output"]).exists() and rows[0]["removed_sd_hu"] > 0
    assert rows[1]["error"]


def test_a_kind_that_cannot_do_an_operation_says_which_can() -> None:
    with pytest.raises(ModelError, match="hippocampus is a segmenter bundle .*explain takes classifier bundles"):
        medlens.open_bundle("hippocampus", needs="explain")
    assert kinds_supporting("export") == ["classifier", "segmenter"]
    with pytest.raises(ModelError, match="it supports: predict"):
        medlens.open_bundle("upscale").require("calibrate")


def test_an_unknown_name_suggests_the_shipped_one() -> None:
    with pytest.raises(medlens.UnknownNameError, match="pneumonia"):
        medlens.open_bundle("pneumona")
    with pytest.raises(medlens.UnknownNameError, match="now 'pneumonia-28px'.*use 'cxr-pneumonia'"):
        medlens.open_bundle("pneumonia")  # the 28-px model's old name
