"""Clinical inputs and image + clinical fusion on the real NIH ChestX-ray14 subset (1000 images, 264 patients)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medlens.classify.bundle import load_classifier
from medlens.cli import app
from medlens.config import TrainConfig
from medlens.datasets import load_folder_dataset
from medlens.errors import ConfigError, DataError
from medlens.explain.clinical import clinical_effects
from medlens.io import read_image
from medlens.preprocess import prepare_image
from medlens.tabular.dicom import dicom_age_years, dicom_fields
from medlens.tabular.encode import ClinicalTable, fit_tabular, leakage_report, load_tabular

runner = CliRunner(env={"COLUMNS": "250"})
NIH = {"label_column": "Finding Labels", "multilabel": True, "negative_label": "No Finding"}
CLINICAL = ["--set", "numeric_columns=Patient Age", "--set", "categorical_columns=Patient Gender,View Position"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def nih_csv(data_dir: Path) -> Path:
    return data_dir / "cxr_nih14_64" / "nih1000_metadata.csv"


@pytest.fixture(scope="module")
def nih(nih_csv: Path):
    return load_folder_dataset(nih_csv, **NIH)


def test_nih_is_split_by_patient_with_fourteen_findings(nih) -> None:
    assert len(nih.label_names) == 14 and "No Finding" not in nih.label_names and nih.task == "multilabel"
    assert nih.source["split_by"] == "Patient ID"
    patients = {name: {m["Patient ID"] for m in split.metadata} for name, split in nih.splits.items()}
    assert (
        not patients["train"] & patients["test"]
        and not patients["train"] & patients["val"]
        and not patients["val"] & patients["test"]
    )
    assert sum(len(s) for s in nih.splits.values()) == 1000 and 0.6 < len(nih.splits["train"]) / 1000 < 0.8
    normal = [i for i, m in enumerate(nih.splits["train"].metadata) if m["Finding Labels"] == "No Finding"]
    assert normal and nih.splits["train"].labels[normal].sum() == 0  # "No Finding" is no label at all


def test_a_split_column_that_shares_patients_is_refused_without_naming_them(nih_csv: Path, tmp_path: Path) -> None:
    rows = read_rows(nih_csv)[:60]
    for i, row in enumerate(rows):
        row["split"] = ("train", "val", "test")[i % 3]  # patient 1's three images land in three splits
    path = tmp_path / "shared.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "images").symlink_to((nih_csv.parent / "images").resolve())  # $MEDLENS_DATA_DIR may be relative
    with pytest.raises(DataError, match="more than one split") as info:
        load_folder_dataset(path, **NIH)
    assert "lines [2, 3, 4]" in str(info.value) and "Patient ID" in str(info.value)
    data = load_folder_dataset(path, **NIH, group_column=None)  # the user may opt out, knowingly
    assert len(data.splits["test"]) == 20


def test_clinical_encoding_is_fitted_on_training_rows_only(nih) -> None:
    train, val = nih.splits["train"], nih.splits["val"]
    encoder = fit_tabular(train.metadata, ("Patient Age",), ("Patient Gender", "View Position"))
    x = encoder.transform(val.metadata, "val")
    ages = np.array([float(m["Patient Age"]) for m in train.metadata])
    fit = encoder.describe()["numeric_fit"]["Patient Age"]
    assert fit["median"] == np.median(ages) and abs(fit["mean"] - ages.mean()) < 1e-9  # train statistics, not val's
    assert x.shape == (len(val), 5) and set(np.unique(x[:, 1:])) <= {0.0, 1.0}
    gaps = [dict(m, **{"Patient Age": ""}) for m in val.metadata[:3]]
    assert np.allclose(encoder.transform(gaps)[:, 0], (fit["median"] - fit["mean"]) / fit["scale"])  # median-imputed
    with pytest.raises(DataError, match="'Patient Gender': category 'U' was not in the training data"):
        encoder.transform([dict(val.metadata[0], **{"Patient Gender": "U"})], "clinical.csv")
    with pytest.raises(DataError, match="required clinical column"):
        encoder.transform([{"Patient Age": "50"}], "clinical.csv")
    with pytest.raises(DataError, match="'fifty' is not a number"):
        encoder.transform([dict(val.metadata[0], **{"Patient Age": "fifty"})], "clinical.csv")


def test_leakage_guard_names_a_column_that_gives_the_label_away(nih) -> None:
    train = nih.splits["train"]
    warnings = leakage_report(
        train.metadata, train.labels, ("Patient Age",), ("View Position", "Finding Labels"), list(nih.label_names)
    )
    assert len(warnings) == 1 and "'Finding Labels'" in warnings[0] and "Effusion" in warnings[0]


def test_fusion_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="needs clinical columns"):
        TrainConfig(fusion="intermediate")
    with pytest.raises(ConfigError, match="both numeric and categorical"):
        TrainConfig(numeric_columns=("age",), categorical_columns=("age",))


@pytest.fixture(scope="module")
def fused_bundle(nih_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An intermediate-fusion bundle trained from the command line (one epoch: these tests check plumbing)."""
    out = tmp_path_factory.mktemp("fused")
    result = runner.invoke(
        app,
        [
            "train",
            str(nih_csv),
            "--out",
            str(out),
            "--set",
            "label_column=Finding Labels",
            "--set",
            "multilabel=true",
            "--set",
            "negative_label=No Finding",
            *CLINICAL,
            "--set",
            "model=cnn",
            "--set",
            "epochs=1",
        ],
    )
    assert result.exit_code == 0, result.output
    return out / "model"


def test_fused_model_trains_and_predicts_from_the_command_line(
    fused_bundle: Path, nih_csv: Path, tmp_path: Path
) -> None:
    """Intermediate fusion on the NIH subset: the bundle carries the clinical encoder, prediction reads a clinical
    CSV, a file without a valid row gets its own error and the others are still predicted."""
    bundle = tmp_path / "model"
    shutil.copytree(fused_bundle, bundle)  # export writes into it
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["fusion"] == "intermediate" and manifest["data"]["split_by"] == "Patient ID"
    assert manifest["tabular"]["features"][0] == "Patient Age" and not manifest["tabular"]["leakage_warnings"]
    assert load_tabular(bundle).columns == ("Patient Age", "Patient Gender", "View Position")
    evaluated = runner.invoke(
        app, ["evaluate", str(bundle), "--data", str(nih_csv), "--out", str(tmp_path / "eval"), "--bootstrap", "20"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (
        metrics["n"] == 139 and "auc/Effusion" in metrics["metrics"]
    )  # the same patient-level test split, per finding

    images = sorted((nih_csv.parent / "images").glob("*.png"))[:3]
    rows = {r["Image Index"]: r for r in read_rows(nih_csv)}
    clinical = tmp_path / "clinical.csv"
    with clinical.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "Patient Age", "Patient Gender", "View Position"])
        for image, age in zip(images[:2], ("30", "90")):
            writer.writerow([image.name, age, rows[image.name]["Patient Gender"], rows[image.name]["View Position"]])
    shutil.copy(images[0], tmp_path / "same.png")  # the same image, another age: the prediction must change
    with clinical.open("a", newline="") as f:
        csv.writer(f).writerow(
            ["same.png", "90", rows[images[0].name]["Patient Gender"], rows[images[0].name]["View Position"]]
        )
    predictions = tmp_path / "pred.csv"
    result = runner.invoke(
        app,
        [
            "predict",
            str(bundle),
            *map(str, images),
            str(tmp_path / "same.png"),
            "--clinical",
            str(clinical),
            "--out",
            str(predictions),
        ],
    )
    assert result.exit_code == 1  # one file had no clinical row
    out_rows = read_rows(predictions)
    assert [bool(r["error"]) for r in out_rows] == [False, False, True, False]
    assert "no row for" in out_rows[2]["error"]
    assert out_rows[0]["Effusion"] != out_rows[3]["Effusion"]  # same pixels, age 30 vs 90
    missing = runner.invoke(app, ["predict", str(bundle), str(images[0])])
    assert missing.exit_code != 0 and "--clinical" in missing.output
    assert ClinicalTable(clinical).by_name["same.png"]["Patient Age"] == "90"

    # explain: a heatmap with the patient's values held fixed, and what each value did to the probability
    explained = runner.invoke(
        app,
        [
            "explain",
            str(bundle),
            str(images[0]),
            str(tmp_path / "same.png"),
            "--clinical",
            str(clinical),
            "--out",
            str(tmp_path / "explain"),
        ],
    )
    assert explained.exit_code == 0, explained.output
    report = json.loads((tmp_path / "explain" / "explain.json").read_text())
    for r in report["files"]:
        assert Path(r["outputs"][0]).is_file() and not r["error"]
        assert not r["label"] or r["explained"] in r["label"].split("|")  # a finding the bundle reported
        assert [e["column"] for e in sorted(r["clinical_effects"], key=lambda e: e["column"])] == [
            "Patient Age",
            "Patient Gender",
            "View Position",
        ]
        for e in r["clinical_effects"]:  # p(as given) = p(value unknown) + effect, for the class explained
            assert abs(e["p_without"] + e["effect"] - r["probabilities"][r["explained"]]) < 2e-3
    assert "clinical effect" in explained.output
    loaded = load_classifier(bundle)
    x = np.stack([prepare_image(read_image(p), loaded.preprocessing)[0] for p in (images[0], tmp_path / "same.png")])
    table = ClinicalTable(clinical)
    young, old = (
        clinical_effects(loaded, x[i], table.row(name), 0, "test")
        for i, name in enumerate([images[0].name, "same.png"])
    )
    age = [next(e for e in effects if e["column"] == "Patient Age") for effects in (young, old)]
    assert age[0]["p_without"] == age[1]["p_without"]  # same pixels and other values: "age unknown" is one answer
    assert age[0]["effect"] != age[1]["effect"]  # ages 30 and 90 move it differently
    no_clinical = runner.invoke(app, ["explain", str(bundle), str(images[0]), "--out", str(tmp_path / "e2")])
    assert no_clinical.exit_code != 0 and "--clinical" in no_clinical.output

    # ONNX: the graph takes the raw image and the encoded clinical values, and agrees with PyTorch
    exported = runner.invoke(app, ["export", str(bundle)])  # checks on the bundle's own CSV's validation split
    assert exported.exit_code == 0, exported.output
    assert json.loads((bundle / "bundle.json").read_text())["onnx"]["clinical_input"].startswith(
        "clinical: (N, n_features)"
    )
    by_backend = {}
    for backend in ("onnxruntime", "torch"):
        target = tmp_path / f"pred-{backend}.csv"
        runner.invoke(
            app,
            [
                "predict",
                str(bundle),
                str(images[0]),
                str(tmp_path / "same.png"),
                "--clinical",
                str(clinical),
                "--backend",
                backend,
                "--out",
                str(target),
            ],
        )
        by_backend[backend] = np.array([[float(r[n]) for n in loaded.label_names] for r in read_rows(target)])
    assert by_backend["onnxruntime"].shape == (2, 14)
    np.testing.assert_allclose(by_backend["onnxruntime"], by_backend["torch"], atol=1e-4)
    # int8: calibrated and scored with each validation image's clinical values; kept only if AUC holds and it is faster
    quantized = runner.invoke(app, ["export", str(bundle), "--quantize", "static"])
    assert quantized.exit_code == 0, quantized.output
    q = json.loads((bundle / "bundle.json").read_text())["onnx"]["int8"]
    assert q["inputs"] == ["clinical", "image"] and q["calibration_images"] > 0 and 0.3 < q["val_int8"] < 1
    assert q["kept"] == (
        q["val_fp32"] - q["val_int8"] <= q["max_auc_drop"] and q["int8_images_per_s"] > q["fp32_images_per_s"]
    )
    assert (bundle / "model.int8.onnx").is_file() == q["kept"]
    int8 = runner.invoke(
        app, ["predict", str(bundle), str(images[0]), "--clinical", str(clinical), "--backend", "onnxruntime"]
    )
    assert int8.exit_code == 0, int8.output


def test_clinical_baseline_and_late_fusion_weight_chosen_on_validation(nih) -> None:
    """Gradient boosting on age/sex/view, and the late-fusion weight picked by validation AUC (never test)."""
    from sklearn.metrics import roc_auc_score

    from medlens.tabular.baselines import fit_tabular_model, late_fusion_weight, tabular_proba

    train, val = nih.splits["train"], nih.splits["val"]
    encoder = fit_tabular(train.metadata, ("Patient Age",), ("Patient Gender", "View Position"))
    model = fit_tabular_model(encoder.transform(train.metadata), train.labels, nih.task)
    assert isinstance(model[7], float)  # Hernia: one positive in training, so its prevalence, not a fitted model
    p_clinical = tabular_proba(model, encoder.transform(val.metadata))
    assert p_clinical.shape == val.labels.shape and ((0 <= p_clinical) & (p_clinical <= 1)).all()
    keep = [k for k in range(14) if 0 < val.labels[:, k].sum() < len(val)]

    def auc(y: np.ndarray, p: np.ndarray) -> float:
        return float(roc_auc_score(y[:, keep], p[:, keep], average="macro"))

    informative = val.labels.astype(float) * 0.5 + 0.25  # a stand-in image model that knows the answer
    weight, curve = late_fusion_weight(informative, p_clinical, val.labels, auc)
    assert weight == 1.0 and len(curve) == 11 and curve[-1]["score"] == 1.0
    weight, _ = late_fusion_weight(np.full_like(p_clinical, 0.5), p_clinical, val.labels, auc)
    assert weight < 1.0  # an uninformative image model gets less weight than the clinical one


def test_a_fused_bundle_is_calibrated_and_refers_its_uncertain_cases(
    fused_bundle: Path, nih_csv: Path, tmp_path: Path
) -> None:
    """Temperature and referral point fitted on the validation images *with* their clinical values; the calibrated
    bundle keeps its clinical encoder and flags cases at prediction."""
    out = tmp_path / "calibrated"
    result = runner.invoke(
        app, ["calibrate", str(fused_bundle), "--data", str(nih_csv), "--out", str(out), "--refer", "0.5"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "bundle.json").read_text())
    assert (
        manifest["calibration"]["temperature"] > 0
        and manifest["referral"]["chosen_on"] == "validation split (141 cases)"
    )
    assert load_tabular(out).columns == load_tabular(fused_bundle).columns
    test_names = {m["Image Index"] for m in load_folder_dataset(nih_csv, **NIH).splits["test"].metadata}
    rows = [r for r in read_rows(nih_csv) if r["Image Index"] in test_names][:30]
    clinical = tmp_path / "clinical.csv"
    with clinical.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "Patient Age", "Patient Gender", "View Position"])
        writer.writerows([r["Image Index"], r["Patient Age"], r["Patient Gender"], r["View Position"]] for r in rows)
    target = tmp_path / "pred.csv"
    images = [str(nih_csv.parent / "images" / r["Image Index"]) for r in rows]
    result = runner.invoke(app, ["predict", str(out), *images, "--clinical", str(clinical), "--out", str(target)])
    assert result.exit_code == 0, result.output
    assert {r["refer"] for r in read_rows(target)} == {"True", "False"}  # half of validation's uncertainty is referred


@pytest.mark.slow  # 44 s; the audit itself runs by default in tests/test_trust.py, the fused inputs in the tests above
def test_a_fused_bundle_gets_a_full_audit_with_each_cases_clinical_values(
    fused_bundle: Path, nih: object, tmp_path: Path
) -> None:
    """Every audit section runs on a fused bundle (corruptions, augmentations and maps touch the image only), and the
    clinical columns are the subgroups of the model card."""
    from medlens.trust.audit import AuditConfig, audit_bundle

    cfg = AuditConfig(
        corruptions=("gaussian-noise", "contrast"),
        severities=(3,),
        uncertainty_methods=("softmax", "tta", "mc-dropout"),
        explain_cases=3,
        shift_batch_size=16,
        shift_batches=5,
        group_columns=("Patient Gender", "View Position"),
        max_cases=60,
        n_bootstrap=50,
    )
    result = audit_bundle(load_classifier(fused_bundle), nih, tmp_path / "audit", cfg)
    assert result["performance"]["n"] == 60 and "auc/Effusion" in result["performance"]["metrics"]
    assert {m for m, r in result["referral"]["methods"].items() if "curve" in r} == {"softmax", "tta", "mc-dropout"}
    assert [r["corruption"] for r in result["robustness"]["rows"]] == ["gaussian-noise", "contrast"]
    assert result["explanations"]["n"] == 3 and result["explanations"]["randomisation"]["n"] == 3
    assert {g["group"] for g in result["subgroups"]["Patient Gender"]["groups"]} == {"F", "M"}
    card = (tmp_path / "audit" / "model_card.md").read_text()
    assert "## Subgroups" in card and "clinical values Patient Age, Patient Gender, View Position" in card


def test_dicom_header_fields_map_to_clinical_columns() -> None:
    assert [dicom_age_years(v, "x.dcm") for v in ("045Y", "006M", "026W", "", "090Y")] == [
        "45",
        "0.5",
        "0.4983",
        "",
        "90",
    ]
    with pytest.raises(DataError, match="x.dcm: PatientAge '45 years'"):
        dicom_age_years("45 years", "x.dcm")
    columns = ("Patient Age", "Patient Gender", "View Position")
    assert dicom_fields({}, columns) == {
        "Patient Age": "PatientAge",
        "Patient Gender": "PatientSex",
        "View Position": "ViewPosition",
    }
    with pytest.raises(ConfigError, match="'smoker' have no DICOM header field.*clinical_from_dicom"):
        dicom_fields({}, ("age", "smoker"))
    declared = {"routing": {"clinical_from_dicom": {"smoker": "SmokingStatus"}}}
    assert dicom_fields(declared, ("age", "smoker")) == {"age": "PatientAge", "smoker": "SmokingStatus"}
    with pytest.raises(ConfigError, match="'Smoking' .* is not a DICOM keyword"):
        dicom_fields({"routing": {"clinical_from_dicom": {"smoker": "Smoking"}}}, ("smoker",))


def test_fused_model_reads_clinical_values_from_dicom_headers_and_serves(
    fused_bundle: Path, nih_csv: Path, tmp_path: Path
) -> None:
    """Real NIH radiographs wrapped as CR studies with their own age, sex and view in the header: ``--clinical dicom``
    gives what a CSV with the same values gives; a sex the training data never had is that image's error; the
    service runs the fused bundle on the study (findings, SR, heatmap, drift reference) from the headers alone."""
    from medlens.serve.models import load_models
    from medlens.serve.monitor import build_reference
    from medlens.serve.process import run_classification
    from medlens.serve.samples import write_cr_study

    rows = {r["Image Index"]: r for r in read_rows(nih_csv)}
    images = sorted((nih_csv.parent / "images").glob("*.png"))[3:5]
    dicoms, table = [], [["file", "Patient Age", "Patient Gender", "View Position"]]
    for i, image in enumerate(images):
        meta = rows[image.name]
        dicoms.append(
            write_cr_study(
                image,
                tmp_path / "study" / f"{i}.dcm",
                f"P{i}",
                age=f"{int(meta['Patient Age']):03d}Y",
                sex=meta["Patient Gender"],
                view=meta["View Position"],
            )
        )
        table.append([dicoms[-1].name, meta["Patient Age"], meta["Patient Gender"], meta["View Position"]])
    odd = write_cr_study(images[0], tmp_path / "odd" / "odd.dcm", "P9", age="045Y", sex="O", view="PA")
    clinical = tmp_path / "clinical.csv"
    with clinical.open("w", newline="") as f:
        csv.writer(f).writerows(table)
    results = {}
    for source in ("dicom", str(clinical)):
        target = tmp_path / f"pred-{len(results)}.csv"
        runner.invoke(
            app, ["predict", str(fused_bundle), *map(str, dicoms), str(odd), "--clinical", source, "--out", str(target)]
        )
        results[source] = read_rows(target)
    header_rows, csv_rows = results["dicom"], results[str(clinical)]
    for a, b in zip(header_rows[:2], csv_rows[:2]):
        assert not a["error"] and float(a["Effusion"]) == pytest.approx(float(b["Effusion"]), abs=1e-6)
    assert (
        "DICOM header of odd.dcm" in header_rows[2]["error"]
        and "'O' was not in the training data" in header_rows[2]["error"]
    )
    png = runner.invoke(app, ["predict", str(fused_bundle), str(images[0]), "--clinical", "dicom"])
    assert png.exit_code == 1 and "not a readable DICOM file" in png.output

    models = tmp_path / "models"
    shutil.copytree(fused_bundle, models / "nih-fused")
    served = load_models(models)["nih-fused"]
    state, urgency, result = run_classification(served, dicoms + [odd], tmp_path / "job", 1, "job-1")
    assert state in ("done", "referred") and len(result["findings"]) == 14 and result["images_used"] == 2
    assert "'O' was not in the training data" in result["skipped_instances"][0]["reason"]
    assert Path(result["outputs"]["sr"]).is_file() and Path(result["outputs"]["heatmap"]).is_file()
    assert len(result["observation"]["embedding"]) == served.bundle.model.image.feature_dim  # the image branch
    assert build_reference(served, window=20) is not None  # drift alarms: the bundle's own CSV's validation split
    manifest = json.loads((models / "nih-fused" / "bundle.json").read_text())
    manifest["routing"] = {"clinical_from_dicom": {"View Position": "NotAKeyword"}}
    (models / "nih-fused" / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="nih-fused: bundle.json routing.clinical_from_dicom: 'NotAKeyword'"):
        load_models(models)
