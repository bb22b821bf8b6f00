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
- CT, three patients: train 8 of the 10 distinct C4KC-KiTS abdominal slices (patient A), validation
  the other 2 (KiTS positions 3 and 8: same patient, used only to choose epochs and NLM strength),
  test four other patients: pydicom-data's abdominal CT (NIH Pancreas-CT PANCREAS_0001), head CT
  (CQ500-CT-310) and zoomed neck CT, and pydicom's CT_small (128x128), each at 2 noise realisations
  per dose. Full dose = 1e7 photons per ray and view.
- Super-resolution: train the MRI train series + the 8 KiTS train slices; validation FLAIR + the 2 KiTS
  validation slices; test T2 (MR) and the four CT test images, reported separately.
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

from medlens.recon.data import DOSES, MR_SERIES, ct_images, ct_pairs, mr_slices, mri_test_cases
from medlens.recon.learn import CENTRE_FRACTIONS, EnhanceTrainConfig, MRIMaskConfig, mri_reconstruct, train_mri
from medlens.recon.metrics import volume_metrics
from medlens.recon.mri import cs_reconstruct, to_kspace, undersample, zero_filled

RESULTS = Path(__file__).parent / "results" / "reconstruction.json"
PRETRAINED = Path(__file__).parents[1] / "src" / "medlens" / "pretrained"
MRI_NETWORKS = {
    "unet-recon": {"features": [16, 32, 64, 128, 256, 16]},
    "unrolled-unet": {"iterations": 3, "features": [16, 32, 64, 128, 256, 16]},  # fine-tuned from unet-recon
}


def score_rows(
    setting: dict,
    method: str,
    truth: list[np.ndarray],
    produce: Callable[[int], np.ndarray],
    metric: Callable[[np.ndarray, np.ndarray], dict] = volume_metrics,
) -> dict:
    """Run ``produce(i)`` for each test slice (timed), score the volume and each slice (mean +- sd)."""
    recon, seconds = [], []
    for i in range(len(truth)):
        started = time.perf_counter()
        recon.append(produce(i))
        seconds.append(time.perf_counter() - started)
    per_slice = [metric(g, r) for g, r in zip(truth, recon)]
    row = {**setting, "method": method, "seconds_per_slice": float(np.mean(seconds)), "slices": len(truth)}
    for key in per_slice[0]:
        values = [p[key] for p in per_slice]
        row[f"slice_{key}_mean"], row[f"slice_{key}_sd"] = float(np.mean(values)), float(np.std(values))
    same_shape = len({t.shape for t in truth}) == 1
    # fastMRI scores MRI per volume; CT test images differ in size, so there the mean over images is the score
    row["volume"] = (
        metric(np.stack(truth), np.stack(recon)) if same_shape else {k: row[f"slice_{k}_mean"] for k in per_slice[0]}
    )
    v = row["volume"]
    print(
        f"{json.dumps(setting):<40} {method:<48} "
        + "  ".join(f"{k} {v[k]:.4g}" for k in v)
        + f"  (slice PSNR {row['slice_psnr_mean']:.2f} +- {row['slice_psnr_sd']:.2f})  {row['seconds_per_slice']:.3f} s/slice",
        flush=True,
    )
    return row


def mri_part(args: argparse.Namespace) -> dict:
    data = {split: mr_slices(split) for split in MR_SERIES}
    masks = MRIMaskConfig(accelerations=(4, 8))
    models, infos = {}, {}
    for name, kwargs in MRI_NETWORKS.items():
        unrolled = name == "unrolled-unet"
        cfg = EnhanceTrainConfig(
            network=name,
            network_kwargs=kwargs,
            epochs=args.epochs // 2 if unrolled else args.epochs,
            samples_per_epoch=args.samples,
            lr=3e-4 if unrolled else 1e-3,
        )
        init = models["unet-recon"].state_dict() if unrolled else None  # same parameter names: the shared U-Net
        models[name], infos[name] = train_mri(
            data["train"], data["val"], cfg, args.out / "mri" / name, masks, init=init
        )
        print(
            f"{name}: best epoch {infos[name]['best_epoch']}, val PSNR {infos[name]['val_score']:.2f} dB, "
            f"{infos[name]['train_seconds'] / 60:.1f} min",
            flush=True,
        )
    rows = []
    for acc in masks.accelerations:
        centre = CENTRE_FRACTIONS[acc]
        val_masks = [
            undersample(to_kspace(im), "random", acc, centre, seed=9_000 + i) for i, im in enumerate(data["val"])
        ]
        lam = max(
            (3e-5, 1e-4, 3e-4, 1e-3),
            key=lambda lam_: np.mean(
                [
                    volume_metrics(im, cs_reconstruct(m, c, lamda=lam_, iterations=30))["psnr"]
                    for im, (m, _, c) in zip(data["val"], val_masks)
                ]
            ),
        )
        test = [(masked, None, columns) for _, masked, columns in mri_test_cases(acc)]
        setting = {"part": "mri", "acceleration": acc, "centre_fraction": centre}
        rows.append(score_rows(setting, "zero-filled", data["test"], lambda i: zero_filled(test[i][0])))
        rows.append(
            score_rows(
                setting,
                f"compressed sensing (sigpy L1-wavelet, lambda {lam:g})",
                data["test"],
                lambda i: cs_reconstruct(test[i][0], test[i][2], lamda=lam, iterations=30),
            )
        )
        for name, model in models.items():
            rows.append(
                score_rows(
                    setting,
                    f"{name} + data consistency",
                    data["test"],
                    lambda i, m=model: mri_reconstruct(m, test[i][0], test[i][2]),
                )
            )
            rows[-1].update(
                {
                    "best_epoch": infos[name]["best_epoch"],
                    "val_psnr": infos[name]["val_score"],
                    "train_minutes": infos[name]["train_seconds"] / 60,
                }
            )
    best = max(models, key=lambda n: infos[n]["val_score"])  # chosen on validation, never on test
    if args.ship:
        from medlens.recon.bundle import save_enhance_bundle

        test_rows = {r["acceleration"]: r["volume"] for r in rows if r["method"] == f"{best} + data consistency"}
        save_enhance_bundle(
            PRETRAINED / "mri-recon",
            models[best],
            "mri-reconstruction",
            best,
            MRI_NETWORKS[best],
            {
                "input": {
                    "modality": "MR",
                    "mask": "random",
                    "accelerations": list(masks.accelerations),
                    "centre_fractions": {str(a): CENTRE_FRACTIONS[a] for a in masks.accelerations},
                    "simulation": "single-coil Cartesian k-space of magnitude images",
                },
                "summary": f"{best}, PSNR 4x {test_rows[4]['psnr']:.2f} dB / 8x {test_rows[8]['psnr']:.2f} dB",
                "metrics": {
                    "test": {f"{a}x": v for a, v in test_rows.items()},
                    "validation_psnr": infos[best]["val_score"],
                },
                "data": {"dataset": "TCIA PGBM-003", "licence": "CC BY 3.0", "split": MR_SERIES},
            },
        )
        print(f"shipped {best} as mri-recon")
    return {
        "data": "TCIA PGBM-003: train T1post+T1prereg (44 slices), val FLAIR (22), test T2 (22); single-coil k-space "
        "simulated from magnitude; random masks; one model per network trained on 4x and 8x",
        "epochs": args.epochs,
        "samples_per_epoch": args.samples,
        "selected_network": best,
        "rows": rows,
        "context": "fastMRI single-coil knee U-Net ~32 dB PSNR / 0.72 SSIM at 4x (different data)",
    }


NOISE_SCALE = (0.25, 1.5)  # dose augmentation for RED-CNN (see PatchPairs)
CT_EPOCHS = 25


def ct_part(args: argparse.Namespace) -> dict:
    from medlens.recon.ct import DoseSimulation, ct_metrics, nlm_denoise
    from medlens.recon.enhance import CT_SCALE_HU, PatchPairs, denoise_ct
    from medlens.recon.learn import train_enhancer
    from medlens.recon.networks import build_recon_network

    sim = DoseSimulation()
    images = ct_images()
    started = time.perf_counter()
    pairs = {split: ct_pairs(split, {"train": 4, "val": 1, "test": 2}[split]) for split in images}
    print(
        f"simulated {sum(map(len, pairs.values()))} low-dose slices in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    noise = {
        d: float(
            np.mean(
                [
                    np.std(
                        (lo - hu)[
                            hu.shape[0] // 2 - 32 : hu.shape[0] // 2 + 32, hu.shape[1] // 2 - 32 : hu.shape[1] // 2 + 32
                        ]
                    )
                    for lo, hu, dd in pairs["val"]
                    if dd == d
                ]
            )
        )
        for d in DOSES
    }
    strengths = {}
    for dose in DOSES:
        val = [(lo, hu) for lo, hu, d in pairs["val"] if d == dose]
        strengths[dose] = max(
            (0.8, 1.2, 1.6, 2.0, 2.5, 3.0),
            key=lambda s_: np.mean([ct_metrics(hu, nlm_denoise(lo, s_))["psnr"] for lo, hu in val]),
        )
    kwargs = {"width": 48}
    cfg = EnhanceTrainConfig(
        network="redcnn",
        network_kwargs=kwargs,
        epochs=args.ct_epochs,
        samples_per_epoch=args.patch_samples,
        batch_size=16,
        lr=5e-4,
    )
    torch.manual_seed(cfg.seed)
    model = build_recon_network("redcnn", **kwargs)
    batches = PatchPairs(
        [(lo / CT_SCALE_HU, hu / CT_SCALE_HU) for lo, hu, _ in pairs["train"]],
        64,
        cfg.samples_per_epoch // cfg.batch_size,
        cfg.batch_size,
        cfg.seed,
        noise_scale=NOISE_SCALE,
    )
    model, info = train_enhancer(
        model,
        batches,
        lambda m: np.mean([ct_metrics(hu, denoise_ct(m, lo))["psnr"] for lo, hu, _ in pairs["val"]]),
        cfg,
        args.out / "ct",
    )
    print(
        f"RED-CNN: best epoch {info['best_epoch']}, val PSNR {info['val_score']:.2f} dB, {info['train_seconds'] / 60:.1f} min",
        flush=True,
    )
    rows = []
    for dose in DOSES:
        test = [(lo, hu) for lo, hu, d in pairs["test"] if d == dose]
        truth = [hu for _, hu in test]
        setting = {"part": "ct", "dose_fraction": dose}
        rows.append(score_rows(setting, "low-dose FBP (no denoising)", truth, lambda i: test[i][0], ct_metrics))
        rows.append(
            score_rows(
                setting,
                f"non-local means (scikit-image, h = {strengths[dose]:g} sigma)",
                truth,
                lambda i: nlm_denoise(test[i][0], strengths[dose]),
                ct_metrics,
            )
        )
        rows.append(score_rows(setting, "RED-CNN", truth, lambda i: denoise_ct(model, test[i][0]), ct_metrics))
        rows[-1].update(
            {
                "best_epoch": info["best_epoch"],
                "val_psnr": info["val_score"],
                "train_minutes": info["train_seconds"] / 60,
            }
        )
    if args.ship:
        from medlens.recon.bundle import save_enhance_bundle

        test_rows = {r["dose_fraction"]: r["volume"] for r in rows if r["method"] == "RED-CNN"}
        save_enhance_bundle(
            PRETRAINED / "ct-denoise",
            model,
            "ct-denoising",
            "redcnn",
            kwargs,
            {
                "input": {
                    "modality": "CT",
                    "units": "HU",
                    "scale_hu": CT_SCALE_HU,
                    "doses": list(DOSES),
                    "simulation": sim.to_dict(),
                },
                "summary": f"RED-CNN, PSNR 25% {test_rows[0.25]['psnr']:.2f} dB / 10% {test_rows[0.1]['psnr']:.2f} dB (W400 L40)",
                "metrics": {
                    "test": {f"{int(d * 100)}%": v for d, v in test_rows.items()},
                    "validation_psnr": info["val_score"],
                },
                "data": {"dataset": "TCIA C4KC-KiTS (8 slices of one patient)", "licence": "CC BY 3.0"},
            },
        )
        print("shipped RED-CNN as ct-denoise")
    return {
        "data": "train 8 KiTS slices (patient A, 4 noise realisations per dose), val 2 KiTS slices, test 4 images of 4 "
        "other patients (pydicom-data abdomen PANCREAS_0001, head CQ500-CT-310, neck; pydicom CT_small), "
        "2 realisations per dose; metrics per image then "
        "averaged; PSNR/SSIM in the W400 L40 window, RMSE in HU over the whole image",
        "simulation": {**sim.to_dict(), "method": "Zeng et al. 2015 added-noise model, skimage radon/iradon ramp"},
        "added_noise_sd_hu_val_centre": {str(d): v for d, v in noise.items()},
        "nlm_strength": {str(d): v for d, v in strengths.items()},
        "epochs": args.ct_epochs,
        "noise_scale_augmentation": NOISE_SCALE,
        "patches_per_epoch": args.patch_samples,
        "rows": rows,
    }


SR_SCALES = (2, 4)


def sr_part(args: argparse.Namespace) -> dict:
    from medlens.recon.ct import ct_metrics
    from medlens.recon.enhance import PatchPairs, bicubic, crop_to_multiple, degrade, sr_pair, upscale
    from medlens.recon.learn import train_enhancer
    from medlens.recon.networks import build_recon_network

    mr = {split: mr_slices(split) for split in MR_SERIES}
    ct = {split: [hu for hu, _ in slices] for split, slices in ct_images().items()}
    train_pairs = [sr_pair(im, s) for s in SR_SCALES for im in mr["train"] + ct["train"]]
    val = [(im, s) for s in SR_SCALES for im in mr["val"] + ct["val"]]
    kwargs = {"features": [16, 32, 64, 128, 256, 16]}
    cfg = EnhanceTrainConfig(
        network="residual-unet",
        network_kwargs=kwargs,
        epochs=args.patch_epochs,
        samples_per_epoch=args.patch_samples,
        batch_size=16,
        lr=1e-3,
    )
    torch.manual_seed(cfg.seed)
    model = build_recon_network("residual-unet", **kwargs)
    batches = PatchPairs(train_pairs, 64, cfg.samples_per_epoch // cfg.batch_size, cfg.batch_size, cfg.seed)

    def val_score(m) -> float:  # PSNR gain over bicubic, averaged over MR and CT validation slices and both scales
        gains = []
        for im, s in val:
            truth, low = crop_to_multiple(im, s), degrade(im, s)
            metric = ct_metrics if im.min() < -500 else volume_metrics
            gains.append(metric(truth, upscale(m, low, s))["psnr"] - metric(truth, bicubic(low, s))["psnr"])
        return float(np.mean(gains))

    model, info = train_enhancer(model, batches, val_score, cfg, args.out / "sr")
    print(
        f"SR U-Net: best epoch {info['best_epoch']}, val gain over bicubic {info['val_score']:.2f} dB, "
        f"{info['train_seconds'] / 60:.1f} min",
        flush=True,
    )
    rows = []
    for modality, images, metric in (("MR", mr["test"], volume_metrics), ("CT", ct["test"], ct_metrics)):
        for s in SR_SCALES:
            truth = [crop_to_multiple(im, s) for im in images]
            lows = [degrade(im, s) for im in images]
            setting = {"part": "sr", "modality": modality, "scale": s}
            rows.append(score_rows(setting, "bicubic", truth, lambda i: bicubic(lows[i], s), metric))
            rows.append(score_rows(setting, "residual U-Net", truth, lambda i: upscale(model, lows[i], s), metric))
            rows[-1].update(
                {
                    "best_epoch": info["best_epoch"],
                    "val_gain_db": info["val_score"],
                    "train_minutes": info["train_seconds"] / 60,
                }
            )
    if args.ship:
        from medlens.recon.bundle import save_enhance_bundle

        gains = {f"{r['modality']} {r['scale']}x": r["volume"] for r in rows if r["method"] == "residual U-Net"}
        save_enhance_bundle(
            PRETRAINED / "upscale",
            model,
            "super-resolution",
            "residual-unet",
            kwargs,
            {
                "input": {
                    "modalities": ["CT", "MR"],
                    "scales": list(SR_SCALES),
                    "degradation": "area average",
                    "intensity": "scaled by the input's 0.5-99.5 percentile range",
                },
                "summary": "residual U-Net on bicubic, "
                + ", ".join(f"{k} {v['psnr']:.2f} dB" for k, v in gains.items()),
                "metrics": {"test": gains, "validation_gain_db": info["val_score"]},
                "data": {"dataset": "TCIA PGBM-003 (T1 series) + C4KC-KiTS (8 slices)", "licence": "CC BY 3.0"},
            },
        )
        print("shipped the SR U-Net as upscale")
    return {
        "data": "train PGBM-003 T1post+T1prereg (44) + 8 KiTS slices, val FLAIR + 2 KiTS slices, test MR: T2 (22, "
        "fastMRI-style per-volume metrics), CT: the CT part's 4 test images (W400 L40 metrics); "
        "area-average degradation; one model for 2x and 4x",
        "epochs": args.patch_epochs,
        "patches_per_epoch": args.patch_samples,
        "rows": rows,
    }


PARTS: dict[str, Callable[[argparse.Namespace], dict]] = {"mri": mri_part, "ct": ct_part, "sr": sr_part}


def markdown_table(results: dict) -> str:
    """The one table of every part: setting, method, mean +- sd over test slices, the fastMRI per-volume PSNR for MRI."""
    lines = ["| part | setting | method | PSNR dB | SSIM | NMSE / RMSE HU | s/slice |", "|---|---|---|---|---|---|---|"]
    for part in ("mri", "ct", "sr"):
        for r in results.get("parts", {}).get(part, {}).get("rows", []):
            setting = {
                "mri": lambda: f"{r['acceleration']}x",
                "ct": lambda: f"{int(r['dose_fraction'] * 100)}% dose",
                "sr": lambda: f"{r['modality']} {r['scale']}x",
            }[part]()
            error = ("nmse", "NMSE {:.4f}") if "slice_nmse_mean" in r else ("rmse_hu", "{:.1f} HU")
            volume = f" (volume {r['volume']['psnr']:.2f})" if part == "mri" else ""
            lines.append(
                f"| {part} | {setting} | {r['method']} | {r['slice_psnr_mean']:.2f} ± {r['slice_psnr_sd']:.2f}{volume} "
                f"| {r['slice_ssim_mean']:.3f} ± {r['slice_ssim_sd']:.3f} "
                f"| {error[1].format(r[f'slice_{error[0]}_mean'])} | {r['seconds_per_slice']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=64, help="MRI training slices per epoch")
    parser.add_argument("--patch-epochs", type=int, default=15, help="epochs for the super-resolution network")
    parser.add_argument("--ct-epochs", type=int, default=CT_EPOCHS, help="epochs for RED-CNN")
    parser.add_argument("--patch-samples", type=int, default=512, help="64x64 patches per epoch (CT, super-resolution)")
    parser.add_argument("--ship", action="store_true", help="write the learned models as the shipped bundles")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-recon"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    for part in args.parts:
        rows = PARTS[part](args)
        results = json.loads(args.results.read_text()) if args.results.is_file() else {}
        results = results if "parts" in results else {"parts": {}}  # re-read: another part may have run meanwhile
        results["parts"][part] = rows
        results["machine"] = f"{os.cpu_count()}-core CPU, torch {torch.__version__}"
        args.results.parent.mkdir(exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1))
    print(markdown_table(json.loads(args.results.read_text())))
    print(f"written {args.results}")


if __name__ == "__main__":
    main()
