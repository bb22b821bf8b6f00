"""Fixtures for small real data from ``$MEDLENS_DATA_DIR`` (CI: ../shared/data)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = os.environ.get("MEDLENS_DATA_DIR")
    if not root or not (Path(root) / "medmnist" / "pneumoniamnist.npz").is_file():
        pytest.skip("real data not found: set MEDLENS_DATA_DIR to the shared data folder")
    return Path(root)


@pytest.fixture(scope="session")
def pneumonia(data_dir: Path):
    from medlens.datasets import load_medmnist

    return load_medmnist("pneumoniamnist", data_dir=data_dir)


@pytest.fixture(scope="session")
def kermany_files(data_dir: Path) -> list[tuple[Path, str]]:
    """Real 224 px chest X-ray JPEGs (Kermany test split): 16 normal, 16 pneumonia."""
    with (data_dir / "cxr_kermany_224" / "kermany_subset_labels.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    chosen = [r for r in rows if r["class"] == "NORMAL"][:16] + [r for r in rows if r["class"] != "NORMAL"][:16]
    root = data_dir / "cxr_kermany_224"
    return [(root / r["image_file"], r["class"].lower()) for r in chosen]


@pytest.fixture()
def folder_dataset(tmp_path: Path, kermany_files: list[tuple[Path, str]]) -> Path:
    """A user's folder of real JPEGs plus a label CSV with an explicit split."""
    images = tmp_path / "images"
    images.mkdir()
    lines = ["file,label,split,site"]
    for i, (src, label) in enumerate(kermany_files):
        shutil.copy(src, images / src.name)
        split = "train" if i % 16 < 10 else ("val" if i % 16 < 13 else "test")
        lines.append(f"images/{src.name},{label},{split},A")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


@pytest.fixture()
def test_pngs(tmp_path, pneumonia):
    """Real PneumoniaMNIST test images written as PNG files, as a user would bring them."""
    from PIL import Image

    split = pneumonia.splits["test"]
    files = []
    for i in [0, 1, 2, 3, 300, 301]:
        path = tmp_path / f"case_{i}.png"
        Image.fromarray(split.images[i, 0]).save(path)
        files.append((path, pneumonia.label_names[split.labels[i]]))
    return files
