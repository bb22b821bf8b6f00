"""DICOM series loading speed and peak memory: medlens vs a plain pydicom loop vs SimpleITK's ImageSeriesReader.

Data: the real series in ``$MEDLENS_DATA_DIR/dicom`` (PGBM-003 MR, KiTS CT), plus
one larger series of at least 500 slices made by repeating the PGBM-003 T1 series
along its slice normal (new positions and UIDs, same real pixels), stored
uncompressed and as lossless JPEG 2000. Every method runs in a fresh process;
time is the median of ``--repeats`` runs after one warm-up (files in the page
cache), memory is the process's peak RSS above its RSS after imports.

    python benchmarks/io.py            # prints a table, writes benchmarks/results/io.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "io.json"
METHODS = ["medlens", "pydicom-loop", "simpleitk"]


def load(method: str, folder: Path) -> tuple[int, tuple[int, ...]]:
    """Load one series folder into a sorted float32 volume; returns (slices, shape)."""
    files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    if method.startswith("medlens"):
        from medlens.io.series import read_dicom_volumes

        volumes = read_dicom_volumes(folder).volumes
        return sum(v.shape[2] for v in volumes), volumes[0].shape
    if method == "pydicom-loop":  # what a script does: read, rescale, sort by position along z, stack
        import pydicom

        slices = []
        for f in files:
            ds = pydicom.dcmread(f)
            values = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
                ds.get("RescaleIntercept", 0)
            )
            slices.append((float(ds.ImagePositionPatient[2]), values))
        slices.sort(key=lambda s: s[0])
        volume = np.stack([s[1] for s in slices])
        return len(slices), volume.shape
    if method == "simpleitk":
        import SimpleITK as sitk

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        image = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
        array = sitk.GetArrayViewFromImage(image)
        return array.shape[0], array.shape
    raise SystemExit(f"unknown method {method}")


def run_one(method: str, folder: Path) -> None:
    """Child process: import, then time one load and report peak RSS growth in MB."""
    import pydicom  # noqa: F401  imports are not what we measure
    import SimpleITK  # noqa: F401

    import medlens.io.series  # noqa: F401

    base_kb = _rss_kb()
    start = time.perf_counter()
    n, shape = load(method, folder)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps({"seconds": seconds, "slices": n, "shape": list(shape), "peak_mb": max(0, peak_kb - base_kb) / 1024})
    )


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def make_large_series(source: Path, out: Path, copies: int, compress: bool) -> Path:
    """Repeat a real series along its normal: new ImagePositionPatient and UIDs, the same real pixels."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless, generate_uid

    out.mkdir(parents=True, exist_ok=True)
    files = sorted(source.glob("*.dcm"))
    first = pydicom.dcmread(files[0])
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    positions = [
        float(np.dot(np.asarray(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, float), normal))
        for f in files
    ]
    extent = (max(positions) - min(positions)) + float(first.get("SpacingBetweenSlices", 6.5))
    series_uid = generate_uid()
    index = 0
    for copy in range(copies):
        for f in files:
            ds = pydicom.dcmread(f)
            ds.ImagePositionPatient = [
                round(float(v), 4) for v in np.asarray(ds.ImagePositionPatient, float) + copy * extent * normal
            ]
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = index + 1
            if compress:
                ds.compress(JPEG2000Lossless)
            ds.save_as(out / f"{index:05d}.dcm")
            index += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--copies", type=int, default=25, help="times the 22-slice series is repeated (25 -> 550 slices)"
    )
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one[0], Path(args.one[1]))
        return
    data = Path(os.environ.get("MEDLENS_DATA_DIR", "../shared/data")) / "dicom"
    if not data.is_dir():
        raise SystemExit(f"{data} not found: set MEDLENS_DATA_DIR to the shared data folder")
    with tempfile.TemporaryDirectory() as tmp:
        t1 = data / "mr_pgbm003" / "11-T1post-18670"
        cases = {
            "PGBM-003 T1 post (MR, 22 x 320x280)": t1,
            "KiTS CT (11 files, 512x512, uneven)": data / "ct_kits_slices",
            f"PGBM-003 T1 x{args.copies} ({22 * args.copies} slices, uncompressed)": make_large_series(
                t1, Path(tmp) / "raw", args.copies, False
            ),
            f"PGBM-003 T1 x{args.copies} ({22 * args.copies} slices, JPEG 2000 lossless)": make_large_series(
                t1, Path(tmp) / "j2k", args.copies, True
            ),
        }
        rows = []
        for case, folder in cases.items():
            for method in METHODS:
                runs = [_child(method, folder) for _ in range(args.repeats + 1)][1:]
                seconds = statistics.median(r["seconds"] for r in runs)
                rows.append(
                    {
                        "case": case,
                        "method": method,
                        "slices": runs[0]["slices"],
                        "seconds": round(seconds, 4),
                        "slices_per_second": round(runs[0]["slices"] / seconds, 1),
                        "peak_mb": round(max(r["peak_mb"] for r in runs), 1),
                    }
                )
                print(
                    f"{case:<55} {method:<20} {rows[-1]['slices']:>5} slices {seconds:8.3f} s "
                    f"{rows[-1]['slices_per_second']:>8.1f} slices/s {rows[-1]['peak_mb']:>7.1f} MB",
                    flush=True,
                )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                "python": platform.python_version(),
                "repeats": args.repeats,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"written {RESULTS}")


def _child(method: str, folder: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", method, str(folder)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
