"""10,000-image batch prediction: memory stays flat, a killed run resumes without losing or repeating rows.

Writes 10,000 real PneumoniaMNIST training images as PNG files (as a clinic's
export folder would hold them), runs ``medlens predict pneumonia FOLDER --out
rows.csv`` in a child process, kills it with SIGKILL part-way, reruns the same
command, and checks the CSV holds every file exactly once. Peak memory is the
child's resident set, sampled every 50 ms, at 1,000 and at 10,000 files.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/streaming.py
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from medlens.datasets import load_medmnist

RESULTS = Path(__file__).parent / "results" / "streaming.json"
MEDLENS = [sys.executable, "-m", "medlens.cli"]


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def run(folder: Path, out: Path, kill_after_rows: int | None = None) -> dict:
    """Run predict; optionally SIGKILL once the CSV holds ``kill_after_rows`` rows. Returns time and peak RSS."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [*MEDLENS, "predict", "pneumonia-28px", str(folder), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak, killed = 0.0, False
    while child.poll() is None:
        peak = max(peak, rss_mb(child.pid))
        if kill_after_rows and out.is_file() and out.read_bytes().count(b"\n") > kill_after_rows:
            os.kill(child.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.05)
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak,
        "killed": killed,
        "returncode": child.returncode,
    }


def rows_in(out: Path) -> list[str]:
    with out.open(newline="") as f:
        return [r["file"] for r in csv.DictReader(f)]


def main() -> None:
    images = load_medmnist("pneumoniamnist", data_dir=os.environ.get("MEDLENS_DATA_DIR")).split("train").images
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1000, 10000):
            folder = Path(tmp) / f"png{n}"
            folder.mkdir()
            for i in range(n):
                Image.fromarray(images[i % len(images), 0]).save(folder / f"img_{i:05d}.png")
            clean = run(folder, Path(tmp) / f"clean{n}.csv")
            result[f"{n} files"] = {
                **clean,
                "images_per_s": n / clean["seconds"],
                "rows": len(rows_in(Path(tmp) / f"clean{n}.csv")),
            }
        out = Path(tmp) / "killed.csv"
        first = run(Path(tmp) / "png10000", out, kill_after_rows=4000)
        after_kill = len(rows_in(out))
        second = run(Path(tmp) / "png10000", out)
        files = rows_in(out)
        result["kill and resume, 10000 files"] = {
            "first_run": first,
            "rows_after_kill": after_kill,
            "second_run": second,
            "rows_final": len(files),
            "unique_files": len(set(files)),
            "every_file_once": len(files) == len(set(files)) == 10000,
        }
    RESULTS.write_text(json.dumps({"machine": f"{os.cpu_count()}-core CPU", **result}, indent=1))
    for k, v in result.items():
        print(k, json.dumps(v))
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
