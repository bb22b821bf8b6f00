"""Copy a benchmark's segmentation bundle into the package as a shipped model (float16 weights + test metrics).

    python benchmarks/ship_bundle.py runs/bench-seg/3d/model runs/bench-seg/3d/test/metrics.json hippocampus

The test metrics are those of the benchmark's held-out split, measured by
``evaluate_segmentation`` on that same bundle; the training cases' root path is
replaced by the dataset's name, so the shipped manifest holds no local paths.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

PRETRAINED = Path(__file__).resolve().parents[1] / "src" / "medlens" / "pretrained"


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    source, metrics_file, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    manifest = json.loads((source / "bundle.json").read_text())
    test = json.loads(metrics_file.read_text())
    manifest["metrics"]["test"] = {**test["metrics"], "n": test["n"], "seconds_per_case": test["seconds_per_case"]}
    manifest["metrics"]["test_confidence_intervals"] = test["confidence_intervals"]
    manifest["data"]["root"] = manifest["data"]["dataset"]
    manifest["training"].pop("history", None)
    target = PRETRAINED / name
    target.mkdir(parents=True, exist_ok=True)
    state = torch.load(source / "weights.pt", map_location="cpu", weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, target / "weights.pt")
    (target / "bundle.json").write_text(json.dumps(manifest, indent=1))
    print(f"shipped {name}: test mean Dice {test['metrics']['mean_dice']:.3f} (n={test['n']}) -> {target}")


if __name__ == "__main__":
    main()
