"""Reconstruction and enhancement on real images: undersampled MRI, low-dose CT, super-resolution.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/reconstruction.py [--parts mri ct sr] [--ship]

Each part trains its learned models, selects on a validation split, and scores every
method on a test split no training slice comes from; rows of all parts go into one
table in ``benchmarks/results/reconstruction.json`` (a part rerun replaces its rows).
``--ship`` also writes the learned models as the shipped bundles
(``src/medlens/pretrained/{mri-recon,ct-denoise,upscale}``).

Splits (exactly):
- MRI, TCIA PGBM-003 (one patient, so split by series/contrast): train T1 post-contrast and
  T1 pre-contrast (44 slices), validation FLAIR (22), test T2 (22). k-space simulated from the
  magnitude (single coil, no phase); fastMRI random masks, 4x with 8% centre, 8x with 4%.
- CT, three patients: train the 10 distinct C4KC-KiTS slices (patient A), validation pydicom's
  CT_small (patient B), test the 2 frames of pydicom-data's eCT_Supplemental (patient C).
- Super-resolution: train the MRI train series + KiTS; validation FLAIR + CT_small; test T2
  (MR) and eCT_Supplemental (CT), reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medlens.recon.learn import CENTRE_FRACTIONS, EnhanceTrainConfig, MRIMaskConfig, mri_reconstruct, train_mri
from medlens.recon.metrics import volume_metrics
from medlens.recon.mri import cs_reconstruct, to_kspace, undersample, zero_filled

RESULTS = Path(__file__).parent / "results" / "reconstruction.json"
PRETRAINED = Path(__file__).parents[1] / "src" / "medlens" / "pretrained"
MR_SERIES = {"train": ["11-T1post-18670", "26401-T1prereg-52906"], "val": ["36468-FLAIRreg-58706"], "test": ["37830-T2reg-78532"]}
MRI_NETWORKS = {
    "unet-recon": {"features": [16, 32, 64, 128, 256, 16]},
    "varnet": {"cascades": 4, "features": [12, 12, 24, 48, 96, 12]},
}


def data_root() -> Path:
    return Path(os.environ.get("MEDLENS_DATA_DIR", "../shared/data"))


def mr_slices(names: list[str]) -> list[np.ndarray]:
    from medlens.io.series import read_dicom_volume

    out = []
    for name in names:
        volume = read_dicom_volume(data_root() / "dicom" / "mr_pgbm003" / name)
        out.extend(np.transpose(np.asarray(volume.array), (2, 1, 0)))
    return out


def score_rows(setting: dict, method: str, truth: list[np.ndarray], produce: Callable[[int], np.ndarray],
               metric: Callable[[np.ndarray, np.ndarray], dict] = volume_metrics) -> dict:
    """Run ``produce(i)`` for each test slice (timed), score the volume and each slice (mean +- sd)."""
    recon, seconds = [], []
    for i in range(len(truth)):
        started = time.perf_counter()
        recon.append(produce(i))
        seconds.append(time.perf_counter() - started)
    per_slice = [metric(g, r) for g, r in zip(truth, recon)]
    row = {**setting, "method": method, "volume": metric(np.stack(truth), np.stack(recon)),
           "seconds_per_slice": float(np.mean(seconds)), "slices": len(truth)}
    for key in per_slice[0]:
        values = [p[key] for p in per_slice]
        row[f"slice_{key}_mean"], row[f"slice_{key}_sd"] = float(np.mean(values)), float(np.std(values))
    v = row["volume"]
    print(f"{json.dumps(setting):<40} {method:<48} " + "  ".join(f"{k} {v[k]:.4g}" for k in v)
          + f"  (slice PSNR {row['slice_psnr_mean']:.2f} +- {row['slice_psnr_sd']:.2f})  {row['seconds_per_slice']:.3f} s/slice", flush=True)
    return row


def mri_part(args: argparse.Namespace) -> dict:
    data = {split: mr_slices(names) for split, names in MR_SERIES.items()}
    masks = MRIMaskConfig(accelerations=(4, 8))
    models, infos = {}, {}
    for name, kwargs in MRI_NETWORKS.items():
        cfg = EnhanceTrainConfig(network=name, network_kwargs=kwargs, epochs=args.epochs, samples_per_epoch=args.samples)
        models[name], infos[name] = train_mri(data["train"], data["val"], cfg, args.out / "mri" / name, masks)
        print(f"{name}: best epoch {infos[name]['best_epoch']}, val PSNR {infos[name]['val_score']:.2f} dB, "
              f"{infos[name]['train_seconds'] / 60:.1f} min", flush=True)
    rows = []
    for acc in masks.accelerations:
        centre = CENTRE_FRACTIONS[acc]
        val_masks = [undersample(to_kspace(im), "random", acc, centre, seed=9_000 + i) for i, im in enumerate(data["val"])]
        lam = max((3e-5, 1e-4, 3e-4, 1e-3), key=lambda lam_: np.mean(
            [volume_metrics(im, cs_reconstruct(m, c, lamda=lam_, iterations=30))["psnr"] for im, (m, _, c) in zip(data["val"], val_masks)]))
        test = [undersample(to_kspace(im), "random", acc, centre, seed=50_000 + i) for i, im in enumerate(data["test"])]
        setting = {"part": "mri", "acceleration": acc, "centre_fraction": centre}
        rows.append(score_rows(setting, "zero-filled", data["test"], lambda i: zero_filled(test[i][0])))
        rows.append(score_rows(setting, f"compressed sensing (sigpy L1-wavelet, lambda {lam:g})", data["test"],
                               lambda i: cs_reconstruct(test[i][0], test[i][2], lamda=lam, iterations=30)))
        for name, model in models.items():
            rows.append(score_rows(setting, f"{name} + data consistency", data["test"],
                                   lambda i, m=model: mri_reconstruct(m, test[i][0], test[i][2])))
            rows[-1].update({"best_epoch": infos[name]["best_epoch"], "val_psnr": infos[name]["val_score"],
                             "train_minutes": infos[name]["train_seconds"] / 60})
    best = max(models, key=lambda n: infos[n]["val_score"])  # chosen on validation, never on test
    if args.ship:
        from medlens.recon.bundle import save_enhance_bundle

        test_rows = {r["acceleration"]: r["volume"] for r in rows if r["method"] == f"{best} + data consistency"}
        save_enhance_bundle(PRETRAINED / "mri-recon", models[best], "mri-reconstruction", best, MRI_NETWORKS[best], {
            "input": {"modality": "MR", "mask": "random", "accelerations": list(masks.accelerations),
                      "centre_fractions": {str(a): CENTRE_FRACTIONS[a] for a in masks.accelerations},
                      "simulation": "single-coil Cartesian k-space of magnitude images"},
            "summary": f"{best}, PSNR 4x {test_rows[4]['psnr']:.2f} dB / 8x {test_rows[8]['psnr']:.2f} dB",
            "metrics": {"test": {f"{a}x": v for a, v in test_rows.items()}, "validation_psnr": infos[best]["val_score"]},
            "data": {"dataset": "TCIA PGBM-003", "licence": "CC BY 3.0", "split": MR_SERIES}})
        print(f"shipped {best} as mri-recon")
    return {"data": "TCIA PGBM-003: train T1post+T1prereg (44 slices), val FLAIR (22), test T2 (22); single-coil k-space "
                    "simulated from magnitude; random masks; one model per network trained on 4x and 8x",
            "epochs": args.epochs, "samples_per_epoch": args.samples, "selected_network": best, "rows": rows,
            "context": "fastMRI single-coil knee U-Net ~32 dB PSNR / 0.72 SSIM at 4x (different data)"}


PARTS: dict[str, Callable[[argparse.Namespace], dict]] = {"mri": mri_part}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=64, help="training samples per epoch")
    parser.add_argument("--ship", action="store_true", help="write the learned models as the shipped bundles")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-recon"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results = results if "parts" in results else {"parts": {}}
    for part in args.parts:
        results["parts"][part] = PARTS[part](args)
        results["machine"] = f"{os.cpu_count()}-core CPU, torch {torch.__version__}"
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1))
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
