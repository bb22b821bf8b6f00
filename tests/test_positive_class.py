"""A binary task's positive class: explicit, or the label that does not name a negative; never the sort order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medlens.cli import app
from medlens.datasets.folder import binary_label_order, load_folder_dataset
from medlens.errors import DataError

runner = CliRunner()


def _csv(tmp_path: Path, kermany_files: list[tuple[Path, str]], names: dict[str, str]) -> Path:
    lines = ["file,label"]
    lines += [f"{src.resolve()},{names[label]}" for src, label in kermany_files]
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_abnormal_is_positive_and_the_report_says_so(kermany_files, tmp_path: Path) -> None:
    """'abnormal' sorts before 'normal', so the sort order would have made 'normal' the finding."""
    labels = _csv(tmp_path, kermany_files, {"normal": "normal", "pneumonia": "abnormal"})
    out = tmp_path / "run"
    settings = ["image_size=32,32", "model=resnet18", "width=0.25", "epochs=1", "batch_size=16"]
    result = runner.invoke(app, ["train", str(labels), "--out", str(out), *[f"--set={s}" for s in settings]])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "model" / "bundle.json").read_text())
    assert manifest["label_names"] == ["normal", "abnormal"] and manifest["positive_label"] == "abnormal"
    result = runner.invoke(app, ["evaluate", str(out / "model"), "--data", str(labels), "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert "Positive class: **abnormal**" in (tmp_path / "ev" / "report.md").read_text()
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["positive_label"] == "abnormal"


def test_two_labels_without_a_negative_stop_training_with_the_setting_to_use(kermany_files, tmp_path: Path) -> None:
    labels = _csv(tmp_path, kermany_files, {"normal": "cat", "pneumonia": "dog"})
    result = runner.invoke(app, ["train", str(labels), "--out", str(tmp_path / "run"), "--set", "image_size=32,32"])
    assert result.exit_code == 1
    assert "--set positive_label=dog" in result.output and "Traceback" not in result.output
    data = load_folder_dataset(labels, image_size=(32, 32), positive_label="cat")
    assert data.label_names == ("dog", "cat")


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["Normal", "Pneumonia"], ["Normal", "Pneumonia"]),
        (["benign", "malignant"], ["benign", "malignant"]),
        (["effusion", "No Finding"], ["No Finding", "effusion"]),
        (["0", "1"], ["0", "1"]),
        (["healthy", "tumour"], ["healthy", "tumour"]),
    ],
)
def test_a_label_naming_a_negative_makes_the_other_positive(names: list[str], expected: list[str]) -> None:
    assert binary_label_order(names, None, "labels.csv") == expected


def test_a_positive_label_that_is_not_a_label_is_refused() -> None:
    with pytest.raises(DataError, match="positive_label='pneumonia' is not one of the labels"):
        binary_label_order(["normal", "abnormal"], "pneumonia", "labels.csv")
    with pytest.raises(DataError, match="which of the two labels"):
        binary_label_order(["normal", "negative"], None, "labels.csv")
