"""Label efficiency on MSD Task04 Hippocampus: test Dice with 1 ... 100 % of the training cases labelled (issue 10).

The 208 local cases are split once (seed 0, as ``benchmarks/segmentation.py``): 42 test cases, 25 validation
cases, 141 training cases; a fraction labels max(1, round(fraction x 141)) training cases, chosen by each seed.

- ``scratch``: the 2D DynUNet (width 8) from random weights on the labelled cases only;
- ``masked``: the same U-Net started from ``medlens pretrain --task segment --method masked`` (inpainting of hidden
  blocks, Models Genesis style) on all 141 training cases' images without labels (pretrained once, seed 0,
  EPOCHS x SAMPLES patches, reused by every seed and fraction; its cost is reported separately);
- ``fixmatch``: the same, plus the unlabelled training cases (their labels held back) through
  ``semi_supervised=fixmatch`` (voxel-wise pseudo-labels, threshold 0.95, photometric strong views);
- ``active``: random cases at the smallest fraction, then each round the model ranks the rest by
  :func:`medlens.segment.uncertainty.case_uncertainty` and the most uncertain are labelled up to the next fraction.

A 2D plan (slices) and a shorter recipe (EPOCHS x SAMPLES patches, half of ``benchmarks/segmentation.py``'s 2D run)
keep a run to about 5 minutes on 2 CPU cores; 10 x 640 patches was tried first and stayed at Dice 0.27 whatever the
label count (too few steps to learn the structures at all), so it was dropped. The 3D model of
``benchmarks/segmentation.py`` reaches 0.870 test Dice in 22 min with all labels. Test Dice is measured
on the 42 test cases from their raw files (as ``medlens segment`` reads them), never used for selection.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/label_efficiency_hippocampus.py [--methods scratch fixmatch]
        [--seeds 0] [--fractions 0.05 1.0] [--plot-only]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from label_efficiency import FRACTIONS, grid_arguments, merge, plot, print_table, summarise  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "label_efficiency_hippocampus.json"
PLOT = RESULTS.with_suffix(".png")
METHODS = ("scratch", "masked", "fixmatch", "active")
EPOCHS = 20
SAMPLES = 1500
RECIPE = {"epochs": EPOCHS, "samples": SAMPLES}
SHARE = 0.95  # the target: 95 % of from-scratch 100 % Dice at 10 % of the labels


SPLIT = {"test_fraction": 0.2, "val_fraction": 0.15, "split_seed": 0}


def config(method: str, seed: int, n_labelled: int | None, labelled_file: Path | None = None, init: Path | None = None):
    from medlens.segment.train import SegTrainConfig

    return SegTrainConfig(
        epochs=RECIPE["epochs"],
        samples_per_epoch=RECIPE["samples"],
        seed=seed,
        **SPLIT,
        patience=RECIPE["epochs"],
        max_train_cases=n_labelled,
        labelled_cases=str(labelled_file) if labelled_file else None,
        semi_supervised="fixmatch" if method == "fixmatch" else "none",
        init=str(init) if init else None,
    )


def pretrained(data: Path, plan, cache: Path, log: dict) -> Path:
    """The masked-inpainting encoder on the training cases' images, made once and cached (seed 0)."""
    from medlens.segment.pretrain import SegPretrainConfig, pretrain_segmenter

    folder = cache / f"hippocampus-masked-{RECIPE['epochs']}x{RECIPE['samples']}"
    if not (folder / "encoder.json").is_file():
        wall, cpu = time.perf_counter(), time.process_time()
        cfg = SegPretrainConfig(
            method="masked", epochs=RECIPE["epochs"], samples_per_epoch=RECIPE["samples"], seed=0, **SPLIT
        )
        pretrain_segmenter(data, plan, cfg, folder, show_progress=False)
        log["masked"] = {
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(time.process_time() - cpu, 1),
            "volumes": json.loads((folder / "encoder.json").read_text())["data"]["n_volumes"],
            "final_hidden_voxel_mse": round(
                json.loads((folder / "encoder.json").read_text())["history"][-1]["loss"], 4
            ),
        }
        print("pretrained:", json.dumps(log["masked"]), flush=True)
    return folder


def train_and_test(cfg, data: Path, plan, work: Path) -> tuple[dict, float, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    from medlens.segment.train import train_segmenter

    bundle_dir = train_segmenter(data, plan, cfg, work, show_progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    manifest, dice = test_dice(bundle_dir, data)
    return manifest, dice, wall, cpu


def test_dice(bundle_dir: Path, data: Path) -> tuple[dict, float]:
    """Mean foreground Dice over the test cases, segmented from their raw files as ``medlens segment`` does
    (``medlens evaluate`` adds HD95, whose surface distances take minutes on the scattered masks of 1-case models)."""
    import numpy as np

    from medlens.segment.bundle import load_segmenter
    from medlens.segment.data import load_seg_dataset, read_pair
    from medlens.segment.infer import segment_volume
    from medlens.segment.metrics import mean_foreground_dice

    bundle = load_segmenter(bundle_dir)
    by_id = {c.case_id: c for c in load_seg_dataset(data).cases}
    fg = [v for v in bundle.plan.label_names if v]
    scores = []
    for case_id in bundle.manifest["split"]["test"]:
        volume, label = read_pair(by_id[case_id])
        pred = segment_volume(bundle.model, volume, bundle.plan, bundle.postprocess).array.astype(np.uint8)
        scores.append(mean_foreground_dice(pred, label, fg))
    return bundle.manifest, float(np.mean(scores))


def row(method: str, fraction: float, seed: int, manifest: dict, dice: float, wall: float, cpu: float, **extra) -> dict:
    training = manifest["training"]
    return {
        "method": method,
        "fraction": fraction,
        "seed": seed,
        "labels": len(manifest["split"]["train"]),
        "val_labels": len(manifest["split"]["val"]),
        "test_dice": round(dice, 4),
        "val_dice": round(manifest["metrics"]["validation"]["mean_dice"], 4),
        "epochs_run": training["epochs_run"],
        "best_epoch": training["best_epoch"],
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        **({"fixmatch": training["fixmatch"]} if "fixmatch" in training else {}),
        **extra,
    }


def n_labelled(fraction: float, n_train: int) -> int | None:
    return None if fraction >= 1 else max(1, round(fraction * n_train))


def run_active(seed: int, data: Path, plan, fractions: list[float], n_train: int) -> list[dict]:
    import numpy as np

    from medlens.segment.bundle import load_segmenter
    from medlens.segment.data import load_seg_dataset
    from medlens.segment.train import load_cases
    from medlens.segment.uncertainty import case_uncertainty

    dataset = load_seg_dataset(data)
    steps = sorted(f for f in fractions if f < 1)
    rows, wall_total, cpu_total, labelled = [], 0.0, 0.0, None
    with tempfile.TemporaryDirectory() as tmp:
        for i, fraction in enumerate(steps):
            listing = None
            if labelled is not None:
                listing = Path(tmp) / f"labelled-{i}.txt"
                listing.write_text("\n".join(labelled) + "\n")
            cfg = config("active", seed, n_labelled(fraction, n_train) if labelled is None else None, listing)
            manifest, dice, wall, cpu = train_and_test(cfg, data, plan, Path(tmp) / f"round-{i}")
            wall_total, cpu_total = wall_total + wall, cpu_total + cpu
            rows.append(
                row(
                    "active",
                    fraction,
                    seed,
                    manifest,
                    dice,
                    wall_total,
                    cpu_total,
                    selection="random" if i == 0 else "uncertainty",
                )
            )
            print(json.dumps(rows[-1]), flush=True)
            if i + 1 < len(steps):
                started = time.perf_counter(), time.process_time()
                pool = manifest["split"]["train_unlabelled"]
                model = load_segmenter(Path(tmp) / f"round-{i}" / "model").model
                scores = [case_uncertainty(model, image, plan) for image in load_cases(dataset, pool, plan)[0]]
                budget = n_labelled(steps[i + 1], n_train) - len(manifest["split"]["train"])
                picked = [pool[j] for j in np.argsort(scores)[::-1][:budget]]
                labelled = manifest["split"]["train"] + picked
                wall_total += time.perf_counter() - started[0]
                cpu_total += time.process_time() - started[1]
    return rows


def main() -> None:
    from medlens.segment.data import load_seg_dataset
    from medlens.segment.plan import fingerprint, make_plan
    from medlens.segment.train import SegTrainConfig, split_cases

    parser = grid_arguments(__doc__, METHODS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--samples", type=int, default=SAMPLES, help="2D patches per epoch")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medlens-label-efficiency")
    args = parser.parse_args()
    RECIPE.update(epochs=args.epochs, samples=args.samples)
    data = Path(os.environ.get("MEDLENS_DATA_DIR", "../shared/data")).resolve() / "msd_hippocampus"
    dataset = load_seg_dataset(data)
    plan = make_plan(fingerprint(dataset), dims=2, width=8)
    ids = [c.case_id for c in dataset.cases if c.label is not None]
    n_train = len(split_cases(ids, SegTrainConfig(**SPLIT))["train"])
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": []}
    runs, pretrain_log = saved["runs"], saved.get("pretraining", {})

    def save() -> dict:
        summary = summarise(runs, METHODS, FRACTIONS, metric="dice", share=SHARE)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps(
                {
                    "benchmark": "label efficiency, MSD Task04 Hippocampus, 2D DynUNet (issue 10)",
                    "data": f"MSD Task04 Hippocampus, {len(ids)} local cases (CC BY-SA 4.0); split seed 0: {n_train} training cases",
                    "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
                    "recipe": {
                        "plan": "2D, width 8",
                        "epochs": RECIPE["epochs"],
                        "patches_per_epoch": RECIPE["samples"],
                        "batch": plan.batch_size,
                        "note": __doc__.split("\n\n")[2],
                    },
                    "active_costs": "active rows' wall_s/cpu_s add up every round before them and the selection",
                    "pretraining": pretrain_log,
                    **summary,
                    "runs": runs,
                },
                indent=1,
            )
        )
        return summary

    if not args.plot_only:
        for seed in args.seeds:
            for method in args.methods:
                if method == "active":
                    new = run_active(seed, data, plan, args.fractions, n_train)
                else:
                    new = []
                    init = pretrained(data, plan, args.cache, pretrain_log) if method == "masked" else None
                    for fraction in args.fractions:
                        if method == "fixmatch" and fraction >= 1:
                            continue  # no unlabelled cases left
                        with tempfile.TemporaryDirectory() as tmp:
                            result = train_and_test(
                                config(method, seed, n_labelled(fraction, n_train), init=init), data, plan, Path(tmp)
                            )
                        new.append(row(method, fraction, seed, *result))
                        print(json.dumps(new[-1]), flush=True)
                merge(runs, new)
                save()
    summary = save()
    plot(
        summary,
        PLOT,
        metric="dice",
        share=SHARE,
        title="MSD Hippocampus, 2D U-Net: label efficiency (mean ± SD over seeds)",
        xlabel=f"share of the {n_train} labelled training cases (log scale)",
        ylabel="test mean Dice (42 cases)",
    )
    print_table(summary, FRACTIONS, metric="dice")


if __name__ == "__main__":
    main()
