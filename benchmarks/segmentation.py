"""MSD Task04 Hippocampus: a 3D and a 2D U-Net trained and tested on a fixed, seeded 80/20 split, on the CPU.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/segmentation.py [--epochs 30] [--width 8]

Training uses 80% of the 208 local cases (of which 15% validate: model selection
and post-processing are chosen there); the other 20% are the test set, segmented
from their raw files the way `medlens segment` does. Prints a table and writes
``benchmarks/results/segmentation.json``; the 3D run's bundle is left in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from medlens.segment.bundle import load_segmenter
from medlens.segment.data import load_seg_dataset
from medlens.segment.evaluate import evaluate_segmentation
from medlens.segment.plan import fingerprint, make_plan, save_plan
from medlens.segment.train import SegTrainConfig, train_segmenter

RESULTS = Path(__file__).parent / "results" / "segmentation.json"
PUBLISHED = {
    "nnU-Net (Isensee et al., Nature Methods 2021), MSD test set": {"dice_anterior": 0.90, "dice_posterior": 0.89},
    "nnU-Net 3d_fullres pretrained, mean Dice over all 260 training cases": {"mean_dice": 0.889},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples", type=int, default=250, help="3D patches per epoch")
    parser.add_argument(
        "--samples-2d", type=int, default=2000, help="2D patches per epoch (a slice is ~1/40 of a volume)"
    )
    parser.add_argument("--width", type=int, default=8, help="filters at full resolution")
    parser.add_argument("--dims", type=int, nargs="+", default=[3, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-seg"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    data = Path(os.environ.get("MEDLENS_DATA_DIR", "../shared/data")) / "msd_hippocampus"
    dataset = load_seg_dataset(data)
    fp = fingerprint(dataset)
    rows = []
    for dims in args.dims:
        plan = make_plan(fp, dims=dims, width=args.width)
        run = args.out / f"{dims}d"
        save_plan(plan, fp, run)
        samples = args.samples if dims == 3 else args.samples_2d
        cfg = SegTrainConfig(
            epochs=args.epochs,
            samples_per_epoch=samples,
            test_fraction=0.2,
            val_fraction=0.15,
            seed=args.seed,
            patience=args.epochs,
        )
        cpu0, wall0 = time.process_time(), time.perf_counter()
        bundle_path = train_segmenter(data, plan, cfg, run, show_progress=False)
        train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        bundle = load_segmenter(bundle_path)
        for tta in (False, True):
            result = evaluate_segmentation(bundle, data, run / f"test{'-tta' if tta else ''}", split="test", tta=tta)
            m, ci = result["metrics"], result["confidence_intervals"]
            rows.append(
                {
                    "model": f"{dims}D U-Net (DynUNet, width {args.width})",
                    "tta": tta,
                    "n_test": result["n"],
                    "epochs": args.epochs,
                    "patches_per_epoch": samples,
                    "batch_size": plan.batch_size,
                    "dice_anterior": m["dice_anterior"],
                    "dice_posterior": m["dice_posterior"],
                    "mean_dice": m["mean_dice"],
                    "mean_dice_ci95": [ci["mean_dice"]["low"], ci["mean_dice"]["high"]],
                    "hd95_anterior_mm": m["hd95_anterior"],
                    "hd95_posterior_mm": m["hd95_posterior"],
                    "nsd1mm_anterior": m["nsd_anterior"],
                    "nsd1mm_posterior": m["nsd_posterior"],
                    "inference_s_per_case": result["seconds_per_case"],
                    "train_wall_min": train_wall / 60,
                    "train_cpu_min": train_cpu / 60,
                    "best_epoch": bundle.manifest["training"]["best_epoch"],
                    "validation_mean_dice": bundle.manifest["metrics"]["validation"]["mean_dice"],
                    "postprocess_largest_component": bundle.postprocess,
                    "plan": plan.to_dict(),
                }
            )
            r = rows[-1]
            print(
                f"{r['model']:<32} tta={str(tta):<5} Dice ant {r['dice_anterior']:.3f} post {r['dice_posterior']:.3f} "
                f"mean {r['mean_dice']:.3f} [{r['mean_dice_ci95'][0]:.3f}-{r['mean_dice_ci95'][1]:.3f}] "
                f"HD95 {r['hd95_anterior_mm']:.2f}/{r['hd95_posterior_mm']:.2f} mm  {r['inference_s_per_case']:.2f} s/case  "
                f"train {r['train_wall_min']:.1f} min",
                flush=True,
            )
    RESULTS.parent.mkdir(exist_ok=True)
    if RESULTS.is_file():  # keep rows of models not rerun this time (e.g. --dims 2 alone)
        rerun = {r["model"] for r in rows}
        rows = [r for r in json.loads(RESULTS.read_text()).get("rows", []) if r["model"] not in rerun] + rows
    RESULTS.write_text(
        json.dumps(
            {
                "data": f"MSD Task04 Hippocampus, {len(dataset.cases)} local cases, seeded 80/20 split (seed {args.seed}); CC BY-SA 4.0",
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} CPU",
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rows": rows,
                "published": PUBLISHED,
            },
            indent=1,
        )
    )
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
