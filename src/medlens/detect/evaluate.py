"""``medlens evaluate`` on a detector: mAP (COCO), FROC, counts, bootstrap CIs over images, PR curves.

Writes ``metrics.json``, ``per_image.csv`` (true and detected counts per class)
and ``report.md`` with ``pr_curves.png`` into the output folder.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from medlens.detect.data import load_detection_dataset
from medlens.detect.metrics import bootstrap_detection, coco_map, count_errors, froc, match_detections, recall_at
from medlens.detect.network import to_xy_order
from medlens.detect.preprocess import detect_images
from medlens.detect.train import prepare_items
from medlens.errors import DataError

matplotlib.use("Agg")


def evaluate_detector(
    bundle: Any, data: str | Path, out: Path, split: str = "test", n_bootstrap: int = 200, seed: int = 0
) -> dict[str, Any]:
    dataset = load_detection_dataset(data, label_names=tuple(bundle.label_names))
    items, problems = prepare_items(dataset.split(split), bundle.preprocessing)
    if not items:
        raise DataError(f"{data}: the {split} split has no usable images" + (f" ({problems[0]})" if problems else ""))
    start = time.perf_counter()
    preds = detect_images(
        bundle.model, [i.image for i in items], bundle.preprocessing, [i.scale for i in items], bundle.device
    )
    seconds = time.perf_counter() - start
    dims = bundle.preprocessing.spatial_dims
    truths = [{"boxes": to_xy_order(i.boxes, dims) / i.scale, "labels": i.labels} for i in items]
    names = bundle.label_names
    result = score_detections(preds, truths, names, bundle.count_thresholds, n_bootstrap, seed)
    result.update(
        n=len(items), images_per_second=len(items) / seconds, problems=dataset.problems + problems, split=split
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1, default=float))
    _per_image(out / "per_image.csv", [i.name for i in items], preds, truths, names, bundle.count_thresholds)
    _pr_curves(out / "pr_curves.png", preds, truths, names)
    (out / "report.md").write_text(_report(result, names, bundle.name))
    flat = {"map_50": result["map_50"], "map_50_95": result["map"], "froc_cpm": result["froc"]["cpm"]}
    flat.update({f"ap_50/{k}": v for k, v in result["map_50_per_class"].items()})
    flat.update({f"count_exact/{k}": v["exact_share"] for k, v in result["counts"].items()})
    return {**result, "metrics": flat, "confidence_intervals": result["confidence_intervals"]}


def score_detections(
    preds: list[dict[str, np.ndarray]],
    truths: list[dict[str, np.ndarray]],
    names: list[str],
    thresholds: list[float],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Every detection figure medlens reports for one set of images (the benchmark calls this too)."""
    result: dict[str, Any] = coco_map(preds, truths, names)
    result["froc"] = froc(preds, truths, range(len(names)))
    result["froc_per_class"] = {n: froc(preds, truths, [k]) for k, n in enumerate(names)}
    result["counts"] = count_errors(preds, truths, names, thresholds)
    result["recall_50"] = recall_at(preds, truths, len(names))  # any detection (up to 300 per image)
    result["recall_50_at_count_thresholds"] = recall_at(preds, truths, len(names), thresholds)
    result["count_thresholds"] = thresholds
    two_d = all(np.asarray(t["boxes"]).reshape(len(t["labels"]), -1).shape[1] == 4 for t in truths if len(t["labels"]))
    result["confidence_intervals"] = (
        bootstrap_detection(preds, truths, names, n_bootstrap, seed) if n_bootstrap and two_d else {}
    )
    return result


def _per_image(
    path: Path, files: list[str], preds: list, truths: list, names: list[str], thresholds: list[float]
) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *(f"true_{n}" for n in names), *(f"detected_{n}" for n in names)])
        for name, pred, truth in zip(files, preds, truths):
            true = [int((truth["labels"] == k).sum()) for k in range(len(names))]
            found = [int(((pred["labels"] == k) & (pred["scores"] >= thresholds[k])).sum()) for k in range(len(names))]
            writer.writerow([name, *true, *found])


def _pr_curves(path: Path, preds: list, truths: list, names: list[str]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for k, name in enumerate(names):
        scores, hits, total = [], [], 0
        for pred, truth in zip(preds, truths):
            s, h = match_detections(pred, truth, k)
            scores.extend(s)
            hits.extend(h)
            total += int((truth["labels"] == k).sum())
        if not total:
            continue
        order = np.argsort(-np.asarray(scores))
        tp = np.cumsum(np.asarray(hits, bool)[order])
        ax.plot(tp / total, tp / np.arange(1, len(tp) + 1), label=name)
    ax.set(
        xlabel="recall (IoU >= 0.5)",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="precision-recall per class",
    )
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report(result: dict[str, Any], names: list[str], model: str) -> str:
    ci = result["confidence_intervals"]

    def with_ci(key: str, value: float) -> str:
        return f"{value:.3f}" + (f" ({ci[key]['low']:.3f}-{ci[key]['high']:.3f})" if key in ci else "")

    lines = [
        f"# {model}: detection on the {result['split']} split ({result['n']} images)",
        "",
        f"mAP@0.5 {with_ci('map_50', result['map_50'])}, mAP@0.5:0.95 {result['map']:.3f}, "
        f"FROC CPM {result['froc']['cpm']:.3f}; {result['images_per_second']:.1f} images/s.",
        "",
        "| class | AP@0.5 (95% CI) | AP@0.5:0.95 | FROC CPM | count exact | count MAE | true / detected |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        c = result["counts"][name]
        lines.append(
            f"| {name} | {with_ci('ap_50/' + name, result['map_50_per_class'].get(name, float('nan')))} | "
            f"{result['map_per_class'].get(name, float('nan')):.3f} | {result['froc_per_class'][name]['cpm']:.3f} | "
            f"{c['exact_share']:.3f} | {c['mean_abs_error']:.2f} | {c['true_total']} / {c['predicted_total']} |"
        )
    lines += ["", "![precision-recall](pr_curves.png)", ""]
    if result["problems"]:
        lines += ["Left out:", "", *(f"- {p}" for p in result["problems"][:20]), ""]
    return "\n".join(lines)
