"""De-identification on real studies: no identifier of the PS3.15 basic profile survives, series still link."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from medlens.cli import app
from medlens.io.deid import DeidOptions, action_for, deidentify_tree, verify_tree
from medlens.io.dicom_meta import TECHNICAL_TAGS
from tests.test_dicom_series import pydicom_data

runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def study(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real MR series and the KiTS CT slices, plus a Siemens MR with overlays and a US image."""
    root = tmp_path_factory.mktemp("study")
    shutil.copytree(data_dir / "dicom" / "mr_pgbm003" / "11-T1post-18670", root / "Smith^John" / "t1post")
    shutil.copytree(data_dir / "dicom" / "mr_pgbm003" / "37830-T2reg-78532", root / "Smith^John" / "t2")
    shutil.copytree(data_dir / "dicom" / "ct_kits_slices", root / "kits")
    shutil.copy(pydicom_data("MR-SIEMENS-DICOM-WithOverlays.dcm"), root / "overlay.dcm")
    shutil.copy(pydicom_data("US1_UNCR.dcm"), root / "us.dcm")
    return root


def _identifiers(root: Path) -> set[str]:
    """Every non-trivial value of an attribute the basic profile removes, blanks, replaces or remaps."""
    values: set[str] = set()

    def collect(ds: pydicom.Dataset) -> None:
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    collect(item)
            elif (
                action_for(element.tag)
                and element.VR in ("PN", "LO", "SH", "UI", "DA", "DT", "LT", "ST", "AE")
                and element.value
            ):
                for v in element.value if element.VM > 1 else [element.value]:
                    if len(str(v)) >= 6:
                        values.add(str(v))

    for f in root.rglob("*"):
        if f.is_file() and f.suffix != ".txt":
            collect(pydicom.dcmread(f, stop_before_pixels=True))
    return values


@pytest.fixture(scope="module")
def deidentified(study: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("deid")
    return out, deidentify_tree(study, out, DeidOptions(key="test-key"))


def test_no_identifier_of_the_basic_profile_survives(study: Path, deidentified: tuple[Path, dict]) -> None:
    out, report = deidentified
    identifiers = _identifiers(study)
    assert len(identifiers) > 50  # names, IDs, dates, UIDs, institution were there
    leaked = {}
    for f in out.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)  # pixel bytes can match a value by chance
        text = "\n".join(str(e.value) for e in [*ds.file_meta, *ds.iterall()] if e.VR != "SQ")
        hits = [v for v in identifiers if v in text]
        if hits:
            leaked[f.name] = hits[:3]
    assert not leaked
    assert report["files_written"] == 57 and len(report["problems"]) == 1  # the citation .txt is not DICOM
    assert "Smith" not in json.dumps(report) and all("Smith" not in str(p) for p in out.rglob("*"))


def test_output_is_marked_and_verifies_clean(deidentified: tuple[Path, dict]) -> None:
    out, report = deidentified
    result = verify_tree(out)
    flagged = [f for f in result["findings"] if f["attribute"] != "BurnedInAnnotation"]
    assert not flagged and result["files_checked"] == 57
    ds = pydicom.dcmread(next(out.rglob("*.dcm")))
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert ds.PatientName == ds.PatientID and str(ds.PatientID).startswith("ANON-")
    assert not any(e.tag.is_private for e in ds)


def test_verify_finds_identifiers_in_the_original(study: Path) -> None:
    result = verify_tree(study / "Smith^John" / "t2")
    attributes = {f["attribute"] for f in result["findings"]}
    assert {"PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID"} <= attributes
    assert not result["clean"]
    assert all("PGBM" not in f["problem"] for f in result["findings"])  # findings never quote the value


def test_uids_remapped_consistently_so_series_still_link(
    study: Path, deidentified: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = deidentified
    originals = [pydicom.dcmread(f, stop_before_pixels=True) for f in (study / "Smith^John" / "t2").glob("*.dcm")]
    copies = [pydicom.dcmread(f, stop_before_pixels=True) for f in out.rglob("*.dcm")]
    t2 = [c for c in copies if c.get("SeriesNumber") == originals[0].SeriesNumber and c.Modality == "MR"]
    assert len(t2) == 22 and len({c.SeriesInstanceUID for c in t2}) == 1 and len({c.SOPInstanceUID for c in t2}) == 22
    assert t2[0].SeriesInstanceUID != originals[0].SeriesInstanceUID and str(t2[0].StudyInstanceUID).startswith("2.25.")
    t1 = [c for c in copies if c.get("SeriesNumber") == 11 and c.Modality == "MR"]
    assert {c.StudyInstanceUID for c in t1} == {t2[0].StudyInstanceUID}  # the two series stay one study
    assert {c.FrameOfReferenceUID for c in t1} == {
        c.FrameOfReferenceUID for c in t2
    }  # registered series stay registered
    again = deidentify_tree(study / "Smith^John" / "t2", tmp_path / "again", DeidOptions(key="test-key"))
    assert again["files_written"] == 22
    assert {pydicom.dcmread(f).SeriesInstanceUID for f in (tmp_path / "again").rglob("*.dcm")} == {
        t2[0].SeriesInstanceUID
    }
    other = deidentify_tree(study / "Smith^John" / "t2", tmp_path / "other", DeidOptions(key="another-key"))
    assert other["files_written"] == 22
    assert {pydicom.dcmread(f).SeriesInstanceUID for f in (tmp_path / "other").rglob("*.dcm")} != {
        t2[0].SeriesInstanceUID
    }


def test_date_shift_keeps_intervals(study: Path, tmp_path: Path) -> None:
    original = pydicom.dcmread(next((study / "Smith^John" / "t2").glob("*.dcm")), stop_before_pixels=True)
    deidentify_tree(study / "Smith^John" / "t2", tmp_path, DeidOptions(key="k", shift_days=-100))
    shifted = pydicom.dcmread(next(tmp_path.rglob("*.dcm")), stop_before_pixels=True)
    import datetime as dt

    days = (dt.datetime.strptime(shifted.StudyDate, "%Y%m%d") - dt.datetime.strptime(original.StudyDate, "%Y%m%d")).days
    assert days == -100 and shifted.LongitudinalTemporalInformationModified == "MODIFIED"
    assert verify_tree(tmp_path)["clean"]


def test_overlays_removed_and_burned_in_flagged(deidentified: tuple[Path, dict]) -> None:
    out, report = deidentified
    copies = [pydicom.dcmread(f, stop_before_pixels=True) for f in out.rglob("*.dcm")]
    assert not any(e.tag.group & 0xFF00 == 0x6000 for ds in copies for e in ds)
    assert len(report["burned_in_check"]) == 1 and "US image" in report["burned_in_check"][0]["reason"]
    assert {"attribute": "PatientName", "action": "Z", "count": 57} in report["changes"]


def test_sidecar_whitelist_holds_nothing_the_profile_touches() -> None:
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag

    touched = [k for k in TECHNICAL_TAGS if action_for(Tag(tag_for_keyword(k)))]
    assert touched == []


def test_cli_deid_then_verify(study: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["deid", str(study / "Smith^John"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "44 file(s) written" in result.output
    assert runner.invoke(app, ["deid", "--verify", str(tmp_path / "out")]).exit_code == 0
    dirty = runner.invoke(app, ["deid", "--verify", str(study / "Smith^John")])
    assert dirty.exit_code == 1 and "identifier finding(s)" in dirty.output
    assert runner.invoke(app, ["deid", str(study)]).exit_code == 1  # no output folder: one clear line


def _report_with_free_text(out: Path) -> Path:
    """pydicom's real SR test file with a TEXT content item naming someone, and a file meta that names the sender."""
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = (
        "CONTAINS",
        "TEXT",
        "Seen by Dr MARKERDOC for MARKERPATIENT, bed 7",
    )
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121106", "DCM", "Comment"
    item.ConceptNameCodeSequence = [concept]
    ds.ContentSequence[0].ContentSequence = [*ds.ContentSequence[0].get("ContentSequence", []), item]
    ds.file_meta.SourceApplicationEntityTitle = "MARKERSRC"
    ds.file_meta.SendingApplicationEntityTitle = "MARKERSEND"
    ds.preamble = b"MARKERPREAMBLE".ljust(128, b"\0")
    ds.save_as(out)
    return out


def test_free_text_file_meta_and_preamble_are_cleaned_and_verify_sees_them(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    _report_with_free_text(source / "sr.dcm")
    found = {(f["attribute"], f["problem"].split(";")[0]) for f in verify_tree(source)["findings"]}
    assert {"TextValue", "SourceApplicationEntityTitle", "SendingApplicationEntityTitle", "preamble"} <= {
        a for a, _ in found
    }
    deidentify_tree(source, tmp_path / "out", DeidOptions(key="k"))
    written = next((tmp_path / "out").rglob("*.dcm"))
    raw = written.read_bytes()
    for marker in (b"MARKERDOC", b"MARKERPATIENT", b"MARKERSRC", b"MARKERSEND", b"MARKERPREAMBLE"):
        assert marker not in raw, marker
    assert raw[:128] == b"\0" * 128 and verify_tree(tmp_path / "out")["clean"], verify_tree(tmp_path / "out")[
        "findings"
    ]
    assert (
        pydicom.dcmread(written).ContentSequence[0].ContentSequence[-1].TextValue == "ANONYMIZED"
    )  # the structure stays


def test_instances_sharing_a_sop_uid_are_reported_not_overwritten(data_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    shutil.copytree(data_dir / "dicom" / "ct_kits_slices", source / "a")
    shutil.copytree(
        data_dir / "dicom" / "ct_kits_slices", source / "b"
    )  # the same instances again, under another folder
    n = len(list((source / "a").glob("*.dcm")))
    report = deidentify_tree(source, tmp_path / "out", DeidOptions(key="k"))
    on_disk = len(list((tmp_path / "out").rglob("*.dcm")))
    shared_uid = [p for p in report["problems"] if "same SOP Instance UID" in p["message"]]
    assert report["files_written"] == on_disk == n and len(shared_uid) == n  # was: 2n reported written, n on disk
    shared = [f for f in verify_tree(source)["findings"] if f["problem"].startswith("shared with")]
    assert len(shared) == n


def test_a_missing_key_file_is_one_clear_line_without_a_traceback(study: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["deid", str(study / "kits"), str(tmp_path / "out"), "--key-file", str(tmp_path / "missing.txt")]
    )
    assert result.exit_code == 1 and "no such file" in result.output and "Traceback" not in result.output
    (tmp_path / "empty.txt").write_text("\n")
    result = runner.invoke(
        app, ["deid", str(study / "kits"), str(tmp_path / "out"), "--key-file", str(tmp_path / "empty.txt")]
    )
    assert result.exit_code == 1 and "is empty" in result.output


def test_verbose_tracebacks_never_show_local_variables() -> None:
    from medlens.cli.serve import token_app

    assert app.pretty_exceptions_show_locals is False and token_app.pretty_exceptions_show_locals is False
