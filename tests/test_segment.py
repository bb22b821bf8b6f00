"""Segmentation on real MSD hippocampus cases: integrity checks, plan, a tiny end-to-end run, DICOM SEG."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medlens.cli import app
from medlens.errors import DataError
from medlens.segment.data import check_dataset, load_seg_dataset, read_pair
from medlens.segment.metrics import case_metrics
from medlens.segment.plan import fingerprint, make_plan

runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def hippo(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve real cases in the Decathlon layout (a copy, so tests can break some)."""
    root = tmp_path_factory.mktemp("data") / "msd_hippocampus"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for f in sorted((data_dir / "msd_hippocampus" / sub).glob("*.nii.gz"))[:12]:
            shutil.copy(f, root / sub / f.name)
    return root


@pytest.fixture(scope="module")
def tiny_bundle(hippo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert runner.invoke(app, ["plan", str(hippo), "--out", str(out / "plan")]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "train",
            str(hippo),
            "--task",
            "segment",
            "--out",
            str(out),
            "--plan",
            str(out / "plan" / "plan.json"),
            "--set",
            "epochs=2",
            "--set",
            "samples_per_epoch=16",
            "--set",
            "test_fraction=0.25",
        ],
    )
    assert result.exit_code == 0, result.output
    return out / "model"


def test_dataset_check_passes_on_real_cases(hippo: Path) -> None:
    report = check_dataset(load_seg_dataset(hippo))
    assert report["usable"] == 12 and report["problems"] == [] and report["label_values"] == [0, 1, 2]


def test_plan_from_fingerprint(hippo: Path) -> None:
    fp = fingerprint(load_seg_dataset(hippo))
    assert (
        fp["label_names"] == {"0": "background", "1": "anterior", "2": "posterior"} and fp["licence"] == "CC BY-SA 4.0"
    )
    plan = make_plan(fp)
    assert plan.dims == 3 and plan.target_spacing_mm == (1.0, 1.0, 1.0) and plan.normalization == "zscore"
    assert all(p % 8 == 0 and p >= s for p, s in zip(plan.patch_size, fp["median_shape"]))  # covers a median case
    small = make_plan(fp, memory_budget_mb=20)
    assert np.prod(small.patch_size) < np.prod(plan.patch_size) and small.notes  # shrunk to the budget, and says so
    assert make_plan(fp, dims=2).patch_size == plan.patch_size[:2]


def test_image_label_mismatch_and_bad_labels(hippo: Path, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(hippo, root)
    cases = sorted((root / "labelsTr").glob("*.nii.gz"))
    first = nib.load(cases[0])
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), first.affine), cases[0])  # wrong shape
    second = nib.load(cases[1])
    nib.save(nib.Nifti1Image(np.zeros(second.shape, np.uint8), second.affine), cases[1])  # empty
    third = nib.load(cases[2])
    nib.save(nib.Nifti1Image(np.asarray(third.dataobj).astype(np.uint8) * 3, third.affine), cases[2])  # label 3, 6
    shifted = nib.load(cases[3])
    moved = shifted.affine.copy()
    moved[0, 3] += 4.0
    nib.save(nib.Nifti1Image(np.asarray(shifted.dataobj), moved), cases[3])  # label placed 4 mm off the image
    dataset = load_seg_dataset(root)
    dataset.label_names = {0: "background", 1: "anterior", 2: "posterior"}
    problems = check_dataset(dataset)["problems"]
    text = "\n".join(problems)
    assert "label shape (5, 5, 5) differs from image shape" in text
    assert "label map is empty (background only)" in text
    assert "label values [3, 6] are not declared" in text
    assert "geometry (affine) differ by up to 4 mm" in text
    result = runner.invoke(app, ["train", str(root), "--task", "segment", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "problem(s), fix or leave out these cases first" in result.output
    with pytest.raises(DataError, match="label shape"):
        read_pair(next(c for c in dataset.cases if c.label == cases[0]))


def test_metrics_on_a_real_label_map(hippo: Path) -> None:
    case = load_seg_dataset(hippo).cases[0]
    _, label = read_pair(case)
    names = {0: "background", 1: "anterior", 2: "posterior"}
    perfect = case_metrics(label, label, names, (1.0, 1.0, 1.0))
    assert perfect["dice_anterior"] == 1.0 and perfect["hd95_posterior"] == 0.0 and perfect["nsd_anterior"] == 1.0
    eroded = label.copy()
    eroded[eroded == 2] = 0
    worse = case_metrics(eroded, label, names, (1.0, 1.0, 1.0))
    assert worse["dice_posterior"] == 0.0 and np.isnan(worse["hd95_posterior"]) and worse["dice_anterior"] == 1.0


def test_plan_train_segment_evaluate_end_to_end(tiny_bundle: Path, hippo: Path, tmp_path: Path) -> None:
    manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    assert manifest["task"] == "segmentation" and len(manifest["split"]["test"]) == 3 and manifest["plan"]["dims"] == 3
    test_case = manifest["split"]["test"][0]
    source = hippo / "imagesTr" / f"{test_case}.nii.gz"
    result = runner.invoke(app, ["segment", str(tiny_bundle), str(source), "--out", str(tmp_path / "seg")])
    assert result.exit_code == 0, result.output
    out = nib.load(tmp_path / "seg" / source.name)
    image = nib.load(source)
    assert out.shape == image.shape and np.allclose(out.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}
    volumes = json.loads((tmp_path / "seg" / "volumes.json").read_text())["results"][0]["volumes_ml"]
    assert set(volumes) == {"anterior", "posterior"}
    result = runner.invoke(
        app, ["evaluate", str(tiny_bundle), "--data", str(hippo), "--out", str(tmp_path / "eval"), "--bootstrap", "50"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["n"] == 3 and 0.0 <= summary["metrics"]["mean_dice"] <= 1.0
    assert (tmp_path / "eval" / "per_case.csv").read_text().count("\n") == 4


def test_dicom_input_gives_a_dicom_seg_referencing_the_series(
    tiny_bundle: Path, data_dir: Path, tmp_path: Path
) -> None:
    import highdicom as hd
    import pydicom

    series = data_dir / "dicom" / "mr_pgbm003" / "11_HCropVolume"
    result = runner.invoke(app, ["segment", str(tiny_bundle), str(series), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    seg = hd.seg.segread(tmp_path / "11_HCropVolume_seg.dcm")
    source = pydicom.dcmread(next(series.glob("*.dcm")), stop_before_pixels=True)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert len(referenced.ReferencedInstanceSequence) == 40
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["anterior", "posterior"]
    labels = nib.load(tmp_path / "11_HCropVolume.nii.gz")
    assert labels.shape == (34, 50, 40)


def test_segment_refuses_classification_bundle_and_bad_inputs(tiny_bundle: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["segment", "pneumonia-28px", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "segmentation bundle" in result.output
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    result = runner.invoke(app, ["segment", str(tiny_bundle), str(broken), "--out", str(tmp_path / "o")])
    assert (
        result.exit_code == 1
        and "broken.nii.gz" in result.output
        and "1 input(s) could not be segmented" in result.output
    )


def test_volume_larger_than_the_patch_is_tiled(tiny_bundle: Path, hippo: Path, tmp_path: Path) -> None:
    """Inference never needs the whole volume in one pass: a case padded to over twice the patch is tiled."""
    from medlens.segment.bundle import load_segmenter
    from medlens.segment.infer import segment_volume
    from medlens.types import Volume

    bundle = load_segmenter(tiny_bundle)
    image = nib.load(next((hippo / "imagesTr").glob("*.nii.gz")))
    big = np.pad(np.asarray(image.dataobj, dtype=np.float32), [(p, p) for p in bundle.plan.patch_size])
    assert all(b > 2 * p for b, p in zip(big.shape, bundle.plan.patch_size))
    labels = segment_volume(bundle.model, Volume(big, image.affine), bundle.plan, bundle.postprocess)
    assert labels.shape == big.shape


def test_shipped_hippocampus_bundle_on_held_out_cases(data_dir: Path, tmp_path: Path) -> None:
    """Golden test: the shipped model on four of its own held-out test cases, from the command line."""
    from medlens.bundle.manifest import read_manifest

    _, manifest = read_manifest("hippocampus")
    cases = manifest["split"]["test"][:4]
    images = [data_dir / "msd_hippocampus" / "imagesTr" / f"{c}.nii.gz" for c in cases]
    result = runner.invoke(app, ["segment", "hippocampus", *map(str, images), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    dice = []
    for case, image in zip(cases, images):
        pred = np.asarray(nib.load(tmp_path / image.name).dataobj)
        truth = np.asarray(nib.load(data_dir / "msd_hippocampus" / "labelsTr" / image.name).dataobj)
        for v in (1, 2):
            dice.append(2 * np.sum((pred == v) & (truth == v)) / (np.sum(pred == v) + np.sum(truth == v)))
    assert np.mean(dice) >= 0.80, dice  # the benchmark's test mean is stated in the bundle and the README


def test_csv_dataset_folds_and_anisotropic_input(tiny_bundle: Path, hippo: Path, tmp_path: Path) -> None:
    """A CSV of pairs loads like the Decathlon layout; folds split without overlap; an input at another spacing
    is resampled for the model and its label map comes back on the input's own grid."""
    from medlens.io.volume import load_volume, resample_volume, save_nifti
    from medlens.segment.bundle import load_segmenter
    from medlens.segment.infer import segment_volume
    from medlens.segment.train import SegTrainConfig, split_cases

    images = sorted((hippo / "imagesTr").glob("*.nii.gz"))
    rows = ["image,label"] + [f"{hippo.name}/imagesTr/{p.name},{hippo.name}/labelsTr/{p.name}" for p in images]
    (hippo.parent / "pairs.csv").write_text("\n".join(rows) + "\n")
    dataset = load_seg_dataset(hippo.parent / "pairs.csv")
    assert len(dataset.cases) == 12 and check_dataset(dataset)["problems"] == []
    ids = [c.case_id for c in dataset.cases]
    folds = [split_cases(ids, SegTrainConfig(folds=3, fold=k))["val"] for k in range(3)]
    assert sorted(sum(folds, [])) == sorted(ids)
    coarse = resample_volume(load_volume(images[0]), (1.5, 1.5, 2.0))
    bundle = load_segmenter(tiny_bundle)
    labels = segment_volume(bundle.model, coarse, bundle.plan, bundle.postprocess)
    assert labels.shape == coarse.shape and np.allclose(labels.affine, coarse.affine)
    assert set(np.unique(labels.array)) <= {0.0, 1.0, 2.0}
    save_nifti(labels, tmp_path / "coarse_labels.nii.gz")


def test_segment_streams_rows_and_resumes_where_it_stopped(tiny_bundle: Path, hippo: Path, tmp_path: Path) -> None:
    """Rows reach volumes.jsonl one by one; a rerun skips what is done and redoes a case whose output is gone."""
    cases = sorted((hippo / "imagesTr").glob("*.nii.gz"))[:3]
    out = tmp_path / "seg"
    first = runner.invoke(app, ["segment", str(tiny_bundle), *map(str, cases), "--out", str(out)])
    assert first.exit_code == 0, first.output
    rows = [json.loads(line) for line in (out / "volumes.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == [str(c) for c in cases]
    (out / cases[1].name).unlink()  # as if the run had been killed before this case's output was complete
    with (out / "volumes.jsonl").open("a") as f:
        f.write('{"input": "torn')  # a line cut short by a kill
    again = runner.invoke(app, ["segment", str(tiny_bundle), *map(str, cases), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "2 input(s) already in" in again.output
    summary = json.loads((out / "volumes.json").read_text())
    assert sorted(r["input"] for r in summary["results"]) == sorted(map(str, cases)) and summary["skipped_done"] == 2
    assert (out / cases[1].name).is_file()


def test_fixmatch_segmentation_learns_from_the_held_back_cases(hippo: Path, tmp_path: Path) -> None:
    """Two labelled cases, the other training cases' labels held back and used as unlabelled volumes."""
    out = tmp_path / "semi"
    assert runner.invoke(app, ["plan", str(hippo), "--out", str(out / "plan")]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "train",
            str(hippo),
            "--task",
            "segment",
            "--out",
            str(out),
            "--plan",
            str(out / "plan" / "plan.json"),
            "--set",
            "epochs=1",
            "--set",
            "samples_per_epoch=16",
            "--set",
            "test_fraction=0.25",
            "--set",
            "max_train_cases=2",
            "--set",
            "semi_supervised=fixmatch",
            "--set",
            "fixmatch_threshold=0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "model" / "bundle.json").read_text())
    split = manifest["split"]
    assert len(split["train"]) == 2 and len(split["train_unlabelled"]) == 12 - 3 - len(split["val"]) - 2
    assert not set(split["train_unlabelled"]) & set(split["train"] + split["val"] + split["test"])
    fixmatch = manifest["training"]["fixmatch"]
    assert fixmatch["unlabelled_images"] == len(split["train_unlabelled"]) and 0.0 <= fixmatch["confident_share"] <= 1.0


def test_segmentation_strong_view_keeps_every_voxel_in_place(hippo: Path) -> None:
    """The pseudo-label map must still fit the strong view: intensities change, positions do not."""
    import torch

    from medlens.preprocess.views import PHOTOMETRIC_STRONG, random_views
    from medlens.segment.preprocess import preprocess_image

    volume, _ = read_pair(load_seg_dataset(hippo).cases[0])
    plan = make_plan(fingerprint(load_seg_dataset(hippo)))
    x = torch.as_tensor(preprocess_image(volume, plan)[0][None]).float()
    y = random_views(x, PHOTOMETRIC_STRONG, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(x, y)
    corr = torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1]
    assert corr > 0.8  # an affine intensity change plus noise and a box; a shifted or rotated copy correlates far less
    shifted = torch.roll(x, 3, dims=2)
    assert torch.corrcoef(torch.stack([shifted.flatten(), y.flatten()]))[0, 1] < corr - 0.1


def test_fixmatch_segmentation_refuses_bad_unlabelled_volumes(hippo: Path, tmp_path: Path) -> None:
    from medlens.errors import ConfigError
    from medlens.segment.semi import make_seg_fixmatch_loss
    from medlens.segment.train import SegTrainConfig

    plan = make_plan(fingerprint(load_seg_dataset(hippo)))
    folder = tmp_path / "pool"
    folder.mkdir()
    case = load_seg_dataset(hippo).cases[0]
    shutil.copy(case.image, folder / "good.nii.gz")
    image = nib.load(case.image)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, 10], np.eye(4)), folder / "a_slice.nii.gz")  # 2D
    (folder / "broken.nii.gz").write_bytes(b"not a nifti")
    cfg = SegTrainConfig(semi_supervised="fixmatch", unlabelled=str(folder))
    with pytest.raises(DataError) as info:
        make_seg_fixmatch_loss(cfg, torch_nn_identity(), torch_nn_identity(), [], plan, 1)
    assert "2 of 3" in str(info.value) and "a_slice.nii.gz" in str(info.value) and "broken.nii.gz" in str(info.value)
    with pytest.raises(ConfigError, match="max_train_cases"):
        make_seg_fixmatch_loss(
            SegTrainConfig(semi_supervised="fixmatch"), torch_nn_identity(), torch_nn_identity(), [], plan, 1
        )
    with pytest.raises(ConfigError, match="torchrun"):
        make_seg_fixmatch_loss(cfg, torch_nn_identity(), torch_nn_identity(), [], plan, 2)
    with pytest.raises(ConfigError, match="semi_supervised"):
        SegTrainConfig(semi_supervised="meanteacher")


def torch_nn_identity():
    import torch

    return torch.nn.Identity()


def test_select_ranks_unlabelled_volumes_and_train_uses_the_selection(
    tiny_bundle: Path, hippo: Path, tmp_path: Path
) -> None:
    """`medlens select` on a segmentation bundle ranks a folder of volumes; `labelled_cases` trains on a given list."""
    from medlens.errors import ConfigError
    from medlens.segment.train import SegTrainConfig, limit_labels

    manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    pool = tmp_path / "pool"
    pool.mkdir()
    for case in manifest["split"]["train"][:4]:
        shutil.copy(hippo / "imagesTr" / f"{case}.nii.gz", pool / f"{case}.nii.gz")
    (pool / "broken.nii.gz").write_bytes(b"not a volume")
    out = tmp_path / "selection.csv"
    result = runner.invoke(app, ["select", str(tiny_bundle), str(pool), "--budget", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = out.read_text().splitlines()
    assert rows[0] == "rank,case,uncertainty" and len(rows) == 3
    scores = [float(r.split(",")[2]) for r in rows[1:]]
    assert scores[0] >= scores[1] and all(0.0 <= s <= 1.0 for s in scores)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["pool_size"] == 4 and summary["skipped"][0]["file"] == "broken.nii.gz"
    assert (
        runner.invoke(app, ["select", str(tiny_bundle), str(pool), "--budget", "9", "--out", str(out)]).exit_code != 0
    )

    split = {k: manifest["split"][k] for k in ("train", "val", "test")}
    limited = limit_labels(split, SegTrainConfig(labelled_cases=str(out)))
    chosen = [r.split(",")[1].removesuffix(".nii.gz") for r in rows[1:]]
    assert sorted(limited["train"]) == sorted(chosen) and len(limited["train_unlabelled"]) == len(split["train"]) - 2
    outside = tmp_path / "outside.txt"
    outside.write_text(split["test"][0] + "\n")
    with pytest.raises(ConfigError, match="not in this run's training split"):
        limit_labels(split, SegTrainConfig(labelled_cases=str(outside)))


def test_masked_pretraining_initialises_the_unet_and_guards_the_split(hippo: Path, tmp_path: Path) -> None:
    """`medlens pretrain --task segment` learns to inpaint the training images; `--init` loads every layer but the
    output layer, and refuses an encoder that saw this run's validation/test images or was built for another plan."""
    import torch

    from medlens.segment.init import initialise_unet
    from medlens.segment.plan import load_plan
    from medlens.segment.preprocess import build_unet

    enc = tmp_path / "enc"
    result = runner.invoke(
        app,
        [
            "pretrain",
            str(hippo),
            "--task",
            "segment",
            "--out",
            str(enc),
            "--method",
            "masked",
            "--set",
            "epochs=2",
            "--set",
            "samples_per_epoch=16",
            "--set",
            "test_fraction=0.25",
        ],
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((enc / "encoder.json").read_text())
    losses = [h["loss"] for h in meta["history"]]
    assert meta["task"] == "segmentation" and losses[-1] < losses[0]  # it learned to redraw hidden blocks
    held_out = meta["data"]["left_out"]["val"] + meta["data"]["left_out"]["test"]
    assert len(meta["data"]["train_cases"]) == 7 and not set(held_out) & set(meta["data"]["train_cases"])

    plan = load_plan(enc / "plan.json")
    state = torch.load(enc / "encoder.pt", weights_only=True)
    assert state and not any(k.startswith("output_block.") for k in state)
    model = build_unet(plan)
    output_before = model.output_block.conv.conv.weight.clone()
    info = initialise_unet(model, plan, enc, {"val": [], "test": held_out})
    assert info["tensors"] == len(state) and torch.equal(model.output_block.conv.conv.weight, output_before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())

    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            str(hippo),
            "--task",
            "segment",
            "--out",
            str(run),
            "--plan",
            str(enc / "plan.json"),
            "--init",
            str(enc),
            "--set",
            "epochs=1",
            "--set",
            "samples_per_epoch=8",
            "--set",
            "test_fraction=0.25",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((run / "model" / "bundle.json").read_text())["init"]["method"] == "masked"

    leaky = runner.invoke(
        app,
        [
            "train",
            str(hippo),
            "--task",
            "segment",
            "--out",
            str(tmp_path / "leaky"),
            "--plan",
            str(enc / "plan.json"),
            "--init",
            str(enc),
            "--seed",
            "1",
            "--set",
            "epochs=1",
            "--set",
            "test_fraction=0.25",
        ],
    )
    assert leaky.exit_code != 0 and "validation/test images" in leaky.output and "split_seed" in leaky.output
    assert runner.invoke(app, ["plan", str(hippo), "--out", str(tmp_path / "plan2d"), "--dims", "2"]).exit_code == 0
    other = runner.invoke(
        app,
        [
            "train",
            str(hippo),
            "--task",
            "segment",
            "--out",
            str(tmp_path / "other"),
            "--plan",
            str(tmp_path / "plan2d" / "plan.json"),
            "--init",
            str(enc),
            "--set",
            "test_fraction=0.25",
        ],
    )
    assert other.exit_code != 0 and "plan.dims=3" in other.output and "--plan" in other.output
    classifier = runner.invoke(app, ["train", "pneumoniamnist", "--out", str(tmp_path / "cls"), "--init", str(enc)])
    assert classifier.exit_code != 0 and "--task segment" in classifier.output


def test_contrastive_pretraining_saves_the_encoder_path_only(hippo: Path, tmp_path: Path) -> None:
    import torch

    assert runner.invoke(app, ["plan", str(hippo), "--out", str(tmp_path / "plan"), "--dims", "2"]).exit_code == 0
    enc = tmp_path / "enc"
    result = runner.invoke(
        app,
        [
            "pretrain",
            str(hippo),
            "--task",
            "segment",
            "--out",
            str(enc),
            "--method",
            "simclr",
            "--plan",
            str(tmp_path / "plan" / "plan.json"),
            "--set",
            "epochs=1",
            "--set",
            "samples_per_epoch=64",
        ],
    )
    assert result.exit_code == 0, result.output
    state = torch.load(enc / "encoder.pt", weights_only=True)
    assert state and all(k.startswith(("input_block.", "downsamples.", "bottleneck.")) for k in state)
    assert 0.0 <= json.loads((enc / "encoder.json").read_text())["history"][0]["score"] <= 1.0
    bad = runner.invoke(
        app, ["pretrain", str(hippo), "--task", "segment", "--out", str(tmp_path / "x"), "--method", "byol"]
    )
    assert bad.exit_code != 0 and "byol" in bad.output
