"""Detection on real BCCD blood smears: annotation formats and their bad cases, the shipped `blood-cells` detector,
``medlens detect`` outputs, and the DICOM SR read back with highdicom."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from typer.testing import CliRunner

from medlens.cli import app
from medlens.detect.bundle import load_detector
from medlens.detect.data import load_detection_dataset
from medlens.detect.metrics import coco_map
from medlens.detect.network import to_xy_order
from medlens.detect.preprocess import DetectPreprocessing, detect_images, prepare_image
from medlens.detect.train import DetectConfig, prepare_items, train_detector
from medlens.errors import DataError
from medlens.io.volume import load_volume
from medlens.serve.samples import write_smear_image

runner = CliRunner()


@pytest.fixture(scope="module")
def bccd(data_dir: Path) -> Path:
    return (data_dir / "microscopy_bccd_detection").resolve()  # CSVs written here name files from another folder


def _boxes_csv(path: Path, bccd: Path, split: str, n: int, order=("xmin", "xmax", "ymin", "ymax"), more=()) -> Path:
    """The first ``n`` images of a split as a box CSV, with BCCD's own column order (xmin, xmax, ymin, ymax);
    ``more``: (split, n) pairs added with a ``split`` column."""
    data = load_detection_dataset(bccd)
    rows = []
    for name, count in ((split, n), *more):
        for item in data.split(name)[:count]:
            for box, label in zip(item.boxes, item.labels):
                values = dict(zip(("xmin", "ymin", "xmax", "ymax"), box.tolist()))
                row = {"file": str(item.file), "label": data.label_names[label], **{k: values[k] for k in order}}
                rows.append({**row, "split": name} if more else row)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "label", *order, *(["split"] if more else [])])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_voc_folder_loads_with_the_official_split_and_reports_degenerate_boxes(bccd: Path) -> None:
    data = load_detection_dataset(bccd)
    assert data.label_names == ("Platelets", "RBC", "WBC")
    counts = data.counts()
    assert [counts[s]["images"] for s in ("train", "val", "test")] == [205, 87, 72]
    assert sum(c[n] for c in counts.values() for n in data.label_names) == 4888 - 2
    degenerate = [p for p in data.problems if "no width or height" in p]
    assert len(degenerate) == 2 and any("BloodImage_00338" in p for p in degenerate)


def test_csv_columns_are_read_by_name_in_any_order(tmp_path: Path, bccd: Path) -> None:
    voc = load_detection_dataset(bccd).split("train")[:3]
    path = _boxes_csv(tmp_path / "boxes.csv", bccd, "train", 3)
    data = load_detection_dataset(path)
    assert len(data.items) == 3
    for a, b in zip(sorted(data.items, key=lambda i: i.name), sorted(voc, key=lambda i: i.name)):
        np.testing.assert_allclose(a.boxes, b.boxes)


def test_coco_json_gives_the_same_boxes(tmp_path: Path, bccd: Path) -> None:
    voc = load_detection_dataset(bccd)
    items = voc.split("val")[:4]
    coco = {
        "categories": [{"id": k, "name": n} for k, n in enumerate(voc.label_names)],
        "images": [
            {"id": i, "file_name": str(it.file), "split": "val" if i else "train"} for i, it in enumerate(items)
        ],
        "annotations": [
            {
                "image_id": i,
                "category_id": int(label),
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            }
            for i, it in enumerate(items)
            for b, label in zip(it.boxes, it.labels)
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    data = load_detection_dataset(tmp_path / "coco.json")
    np.testing.assert_allclose(data.items[1].boxes, items[1].boxes)
    assert [i.split for i in data.items] == ["train", "val", "val", "val"]


def test_bad_annotations_name_the_file(tmp_path: Path, bccd: Path) -> None:
    (tmp_path / "empty.csv").write_text("file,label,xmin,ymin,xmax,ymax\n")
    with pytest.raises(DataError, match="empty.csv: no rows"):
        load_detection_dataset(tmp_path / "empty.csv")
    (tmp_path / "cells.csv").write_text("filename,cell_type,xmin,xmax,ymin,ymax\nBloodImage_00000.jpg,WBC,1,2,3,4\n")
    with pytest.raises(DataError, match="missing column.*file, label"):
        load_detection_dataset(tmp_path / "cells.csv")
    path = _boxes_csv(tmp_path / "boxes.csv", bccd, "train", 2)
    with pytest.raises(DataError, match="'WBC' are not among"):
        load_detection_dataset(path, label_names=("Platelets", "RBC"))
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "Annotations" / "broken.xml").write_text("<annotation><object><name>RBC</name>")
    with pytest.raises(DataError, match="broken.xml: not a readable VOC annotation"):
        load_detection_dataset(voc)


def test_a_box_outside_its_image_is_reported_and_the_rest_goes_on(tmp_path: Path, bccd: Path) -> None:

    data = load_detection_dataset(bccd)
    items = data.split("val")[:3]
    items[1].boxes = items[1].boxes.copy()
    items[1].boxes[0] = [600, 400, 700, 470]  # 700 > 640 columns
    prepared, problems = prepare_items(items, DetectPreprocessing(2, 3, 320))
    assert len(prepared) == 2 and len(problems) == 1
    assert items[1].name in problems[0] and "outside the 640 x 480 image" in problems[0]


def test_shipped_detector_finds_the_cells_of_test_images(bccd: Path) -> None:

    bundle = load_detector("blood-cells")
    data = load_detection_dataset(bccd, label_names=tuple(bundle.label_names))
    items, _ = prepare_items(data.split("test")[:12], bundle.preprocessing)
    preds = detect_images(
        bundle.model, [i.image for i in items], bundle.preprocessing, [i.scale for i in items], bundle.device
    )
    truths = [{"boxes": to_xy_order(i.boxes, 2) / i.scale, "labels": i.labels} for i in items]
    scores = coco_map(preds, truths, bundle.label_names)
    assert scores["map_50"] > 0.8, scores  # the benchmark's figure on all 72 is in benchmarks/results/detection.json
    assert scores["map_50_per_class"]["WBC"] > 0.9, scores


def test_detect_writes_boxes_counts_overlays_and_an_sr_that_reads_back(tmp_path: Path, bccd: Path) -> None:
    jpeg = bccd / "JPEGImages" / "BloodImage_00007.jpg"
    dicom = write_smear_image(jpeg, tmp_path / "smear.dcm", "SMEAR1")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect", "blood-cells", str(jpeg), str(broken), str(dicom), "--out", str(out)])
    assert result.exit_code == 1 and "broken.jpg" in result.output, (
        result.output
    )  # the bad file is named, the rest done
    with (out / "detections.csv").open() as f:
        rows = list(csv.DictReader(f))
    from_jpeg = [r for r in rows if r["file"].endswith(".jpg")]
    from_dicom = [r for r in rows if r["file"].endswith(".dcm")]
    assert from_jpeg and len(from_jpeg) == len(from_dicom)
    assert {r["label"] for r in from_jpeg} <= {"Platelets", "RBC", "WBC"} and any(
        r["label"] == "WBC" for r in from_jpeg
    )
    assert all(
        0 <= float(r["xmin"]) < float(r["xmax"]) <= 640 and 0 <= float(r["ymin"]) < float(r["ymax"]) <= 480
        for r in rows
    )
    assert all(float(r["longest_mm"]) > 0 for r in from_dicom) and all(r.get("longest_mm", "") == "" for r in from_jpeg)
    with (out / "counts.csv").open() as f:
        counts = {Path(r["file"]).suffix: r for r in csv.DictReader(f)}
    assert int(counts[".jpg"]["RBC"]) == sum(r["label"] == "RBC" for r in from_jpeg)
    assert (out / "overlays" / "BloodImage_00007.png").is_file() and (out / "problems.csv").is_file()
    sr = hd.sr.srread(out / "sr" / "smear.dcm")
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(from_dicom)
    for group, row in zip(groups, from_dicom):
        corners = group.roi.value
        np.testing.assert_allclose(corners.min(0), [float(row["xmin"]), float(row["ymin"])], atol=0.06)
        np.testing.assert_allclose(corners.max(0), [float(row["xmax"]), float(row["ymax"])], atol=0.06)
        assert group.finding_type.meaning == row["label"]
        diameter = [m for m in group.get_measurements() if m.name.meaning == "Diameter"][0]
        assert diameter.value == pytest.approx(float(row["longest_mm"]), rel=1e-3)
    assert sr.SeriesDescription.endswith("(preliminary, not verified)")


def test_evaluate_a_detector_writes_map_froc_and_counts(tmp_path: Path, bccd: Path) -> None:
    path = _boxes_csv(tmp_path / "test.csv", bccd, "test", 8, more=(("train", 1), ("val", 1)))
    result = runner.invoke(
        app, ["evaluate", "blood-cells", "--data", str(path), "--out", str(tmp_path / "ev"), "--bootstrap", "20"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (
        metrics["n"] == 8
        and metrics["map_50"] > 0.7
        and set(metrics["map_50_per_class"]) == {"Platelets", "RBC", "WBC"}
    )
    assert 0 < metrics["froc"]["cpm"] <= 1 and "map_50" in metrics["confidence_intervals"]
    assert (tmp_path / "ev" / "pr_curves.png").is_file() and "| WBC |" in (tmp_path / "ev" / "report.md").read_text()


def test_the_3d_path_trains_on_hippocampus_boxes_and_answers_in_voxels(tmp_path: Path, data_dir: Path) -> None:
    """Boxes around the MSD hippocampus labels (anterior, posterior) of 16 volumes: one quick epoch through the
    3D ResNet RetinaNet, then ``predict`` gives boxes with z in voxel indices and sizes in mm."""

    root = (data_dir / "msd_hippocampus").resolve()
    rows = ["file,label,xmin,ymin,zmin,xmax,ymax,zmax,split"]
    for i, image in enumerate(sorted((root / "imagesTr").glob("*.nii.gz"))[:16]):
        labels = load_volume(root / "labelsTr" / image.name).array.astype(int)
        for value, name in ((1, "anterior"), (2, "posterior")):
            where = np.argwhere(labels == value)
            low, high = where.min(0), where.max(0) + 1
            split = "train" if i < 12 else ("val" if i < 14 else "test")
            rows.append(f"{image},{name},{','.join(map(str, low))},{','.join(map(str, high))},{split}")
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    cfg = DetectConfig(dataset=str(tmp_path / "boxes.csv"), epochs=1, batch_size=4, fpn_channels=16)
    folder = train_detector(cfg, tmp_path / "run", show_progress=False)
    bundle = load_detector(folder)
    assert bundle.spec.spatial_dims == 3 and bundle.label_names == ["anterior", "posterior"]
    test = sorted((root / "imagesTr").glob("*.nii.gz"))[15]

    image, scale = prepare_image(test, bundle.preprocessing)
    raw = detect_images(bundle.model, [image], bundle.preprocessing, [scale], bundle.device)[0]
    assert raw["boxes"].shape[1] == 6 and len(bundle.count_thresholds) == 2
    shape = load_volume(test).shape
    assert ((raw["boxes"][:, 3:] <= np.array(shape) + 1) & (raw["boxes"][:, :3] >= -1)).all()
    (row,) = bundle.predict([test])
    assert row["error"] == "" and set(row["counts"]) == {"anterior", "posterior"}
    assert all(b["longest_mm"] > 0 and b["zmax"] <= shape[2] + 1 for b in row["boxes"])
