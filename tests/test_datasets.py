import urllib.error

import numpy as np
import pytest

from medlens.datasets import catalog, dataset_names, get_dataset_info, load_folder_dataset, load_medmnist
from medlens.errors import ConfigError, DataError, DatasetNotFoundError, UnknownNameError


def test_catalog_has_every_medmnist_set_and_size():
    names = dataset_names()
    assert len(names) == 18 and "pneumoniamnist" in names and "adrenalmnist3d" in names
    assert sorted(get_dataset_info("pathmnist").files) == [28, 64, 128, 224]
    assert sorted(get_dataset_info("adrenalmnist3d").files) == [28, 64]
    entry = get_dataset_info("adrenalmnist3d").files[64]
    assert entry.url.startswith("https://zenodo.org/records/10519652/") and len(entry.md5) == 32
    assert {get_dataset_info(n).task for n in names} == {"binary", "multiclass", "multilabel", "ordinal"}


def test_unknown_dataset_and_size():
    with pytest.raises(UnknownNameError, match="did you mean 'pneumoniamnist'"):
        get_dataset_info("pneumonimnist")
    with pytest.raises(ConfigError, match="has no size 128; available sizes: 28, 64"):
        catalog.resolve_dataset_file("adrenalmnist3d", 128)


def test_official_checksum_matches_local_adrenal(data_dir):
    path = catalog.resolve_dataset_file("adrenalmnist3d", 64, data_dir=data_dir, download=False)
    assert catalog.file_md5(path) == get_dataset_info("adrenalmnist3d").files[64].md5


def test_offline_and_missing_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "DEFAULT_CACHE", tmp_path / "cache")
    monkeypatch.delenv("MEDLENS_DATA_DIR", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(catalog.urllib.request, "urlopen", offline)
    with pytest.raises(
        DatasetNotFoundError, match=r"breastmnist\.npz not found .*download failed.*zenodo\.org.*MEDLENS_DATA_DIR"
    ):
        catalog.resolve_dataset_file("breastmnist", 28, data_dir=tmp_path)


def test_load_pneumoniamnist_official_counts(pneumonia):
    assert pneumonia.task == "binary" and pneumonia.label_names == ("normal", "pneumonia")
    assert {k: len(v) for k, v in pneumonia.splits.items()} == {"train": 4708, "val": 524, "test": 624}
    assert pneumonia.splits["train"].images.shape[1:] == (1, 28, 28)
    assert np.bincount(pneumonia.splits["test"].labels).tolist() == [234, 390]


def test_load_adrenal_3d(data_dir):
    data = load_medmnist("adrenalmnist3d", size=64, data_dir=data_dir)
    assert data.spatial_dims == 3 and data.image_shape == (64, 64, 64)
    assert len(data.splits["test"]) == 298


def test_truncated_file_is_refused(tmp_path, pneumonia):
    arrays = {f"{s}_images": pneumonia.splits[s].images[:10, 0] for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": pneumonia.splits[s].labels[:10, None] for s in ("train", "val", "test")}
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    with pytest.raises(DataError, match="split 'train' has 10 images, the official pneumoniamnist has 4708"):
        load_medmnist("pneumoniamnist", data_dir=tmp_path)


def test_not_an_npz(tmp_path):
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_medmnist("pneumoniamnist", data_dir=tmp_path)


def test_multilabel_npz_layout(tmp_path, pneumonia):
    from medlens.datasets.medmnist import read_medmnist_npz

    images = pneumonia.splits["test"].images[:12, 0]
    labels = np.stack([pneumonia.splits["test"].labels[:12], 1 - pneumonia.splits["test"].labels[:12]], axis=1)
    np.savez(
        tmp_path / "x.npz",
        **{f"{s}_images": images for s in ("train", "val", "test")},
        **{f"{s}_labels": labels for s in ("train", "val", "test")},
    )
    splits = read_medmnist_npz(tmp_path / "x.npz", dims=2, multilabel=True)
    assert splits["train"].labels.shape == (12, 2) and splits["train"].images.shape == (12, 1, 28, 28)


def test_folder_dataset(folder_dataset):
    data = load_folder_dataset(folder_dataset, image_size=(64, 64))
    assert data.label_names == ("normal", "pneumonia") and data.task == "binary"
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 20, "val": 6, "test": 6}
    assert data.image_shape == (64, 64) and data.n_channels == 1
    assert data.splits["train"].metadata[0] == {"site": "A"}


def test_folder_dataset_mixed_sizes_need_image_size(folder_dataset, tmp_path):
    from PIL import Image

    first = folder_dataset.read_text().splitlines()[1].split(",")[0]
    Image.open(tmp_path / first).resize((100, 80)).save(tmp_path / first)
    with pytest.raises(
        DataError, match=r"has \(1, 80, 100\); images of one dataset must share a shape: set image_size"
    ):
        load_folder_dataset(folder_dataset)


def test_folder_dataset_errors(folder_dataset, tmp_path):
    text = folder_dataset.read_text().splitlines()
    missing = tmp_path / "missing.csv"
    missing.write_text("\n".join([text[0], "images/nope.jpeg,normal,train,A", *text[2:]]))
    with pytest.raises(DataError, match=r"1 of 32 images could not be loaded: line 2: 'images/nope.jpeg' not found"):
        load_folder_dataset(missing, image_size=(64, 64))
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("file,diagnosis\na.png,x\n")
    with pytest.raises(
        DataError,
        match="needs a 'file' column .* and a 'label' column .*label_column=NAME.*; found columns: file, diagnosis",
    ):
        load_folder_dataset(no_label)
    one_class_val = tmp_path / "oneclass.csv"
    rows = [r if not (",val," in r and ",normal," in r) else r.replace(",val,", ",train,") for r in text]
    one_class_val.write_text("\n".join(rows))
    with pytest.raises(DataError, match="the val split has no example of class\\(es\\) normal"):
        load_folder_dataset(one_class_val, image_size=(64, 64))
    bad_split = tmp_path / "badsplit.csv"
    bad_split.write_text("\n".join([text[0], text[1].replace(",train,", ",training,"), *text[2:]]))
    with pytest.raises(DataError, match=r"column 'split' has value\(s\) \['training'\]"):
        load_folder_dataset(bad_split)
