"""Detection metrics: COCO mAP (pycocotools), FROC (MONAI), counts, bootstrap CIs over images.

Predictions and ground truth are per image: ``{"boxes": (N, 2*dims), "labels": (N,), "scores": (N,)}`` with
boxes in one consistent corner order (``xmin, ymin, xmax, ymax``; volumes ``xmin, ymin, zmin, xmax, ymax, zmax``).

* **mAP@0.5** and **mAP@0.5:0.95** per class and averaged over classes: COCO's definitions
  (101-point interpolated precision, up to 100 detections per image), computed by
  pycocotools' ``COCOeval`` (2D boxes).
* **FROC**: sensitivity at 1/8 ... 8 false positives per image, and their mean (the CPM of LUNA16), per class and
  over all boxes, from MONAI's ``compute_froc_curve_data``; a detection is a hit at IoU >= 0.5 with an unmatched box
  of its class (greedy by score).
* **Counts**: detections at each class's counting threshold against the true number, per image.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

FROC_FPS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MATCH_IOU = 0.5

Boxes = dict[str, np.ndarray]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of ``a`` and of ``b`` (corner format, 2D or 3D), MONAI's implementation."""
    from monai.data.box_utils import box_iou as monai_iou

    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    return np.asarray(monai_iou(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)))


def match_detections(pred: Boxes, truth: Boxes, label: int, iou: float = MATCH_IOU) -> tuple[np.ndarray, np.ndarray]:
    """For class ``label`` in one image: the detections' scores (descending) and whether each is a hit (greedy by
    score, each true box hit at most once)."""
    keep = pred["labels"] == label
    scores, boxes = pred["scores"][keep], pred["boxes"][keep]
    order = np.argsort(-scores, kind="stable")
    scores, boxes = scores[order], boxes[order]
    true_boxes = truth["boxes"][truth["labels"] == label]
    overlaps = box_iou(boxes, true_boxes)
    taken = np.zeros(len(true_boxes), bool)
    hits = np.zeros(len(boxes), bool)
    for i in range(len(boxes)):
        if not len(true_boxes):
            break
        candidates = np.where(~taken & (overlaps[i] >= iou))[0]
        if len(candidates):
            j = candidates[np.argmax(overlaps[i, candidates])]
            taken[j] = hits[i] = True
    return scores, hits


def coco_map(preds: Sequence[Boxes], truths: Sequence[Boxes], label_names: Sequence[str]) -> dict[str, Any]:
    """mAP@0.5 and mAP@0.5:0.95, averaged over the classes present in ``truths`` and per class: pycocotools'
    COCOeval for 2D boxes (101-point interpolation, 100 detections per image, all object sizes); MONAI's COCO metric
    (the same definitions, written for 3D) for volumes."""
    if any(np.asarray(t["boxes"]).reshape(len(t["labels"]), -1).shape[1] == 6 for t in truths if len(t["labels"])):
        return _coco_map_3d(preds, truths, label_names)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (pred, truth) in enumerate(zip(preds, truths)):
        images.append({"id": i})
        for box, label in zip(np.asarray(truth["boxes"]).reshape(-1, 4), truth["labels"]):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(label),
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for box, label, score in zip(np.asarray(pred["boxes"]).reshape(-1, 4), pred["labels"], pred["scores"]):
            results.append(
                {
                    "image_id": i,
                    "category_id": int(label),
                    "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                    "score": float(score),
                }
            )
    present = sorted({int(a["category_id"]) for a in annotations})
    empty = {"map_50": float("nan"), "map": float("nan"), "map_50_per_class": {}, "map_per_class": {}}
    if not present:
        return empty
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k} for k in range(len(label_names))],
        }
        gt.createIndex()
        if not results:
            return {
                **empty,
                "map_50": 0.0,
                "map": 0.0,
                "map_50_per_class": {label_names[k]: 0.0 for k in present},
                "map_per_class": {label_names[k]: 0.0 for k in present},
            }
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # IoU thresholds x recall x classes (all areas, 100 dets)
    out: dict[str, Any] = {"map_50_per_class": {}, "map_per_class": {}}
    for k in present:
        at_50, every = precision[0, :, k], precision[:, :, k]
        out["map_50_per_class"][label_names[k]] = float(at_50[at_50 > -1].mean()) if (at_50 > -1).any() else 0.0
        out["map_per_class"][label_names[k]] = float(every[every > -1].mean()) if (every > -1).any() else 0.0
    out["map_50"] = float(np.mean(list(out["map_50_per_class"].values())))
    out["map"] = float(np.mean(list(out["map_per_class"].values())))
    return out


def _coco_map_3d(preds: Sequence[Boxes], truths: Sequence[Boxes], label_names: Sequence[str]) -> dict[str, Any]:
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou as monai_iou

    present = sorted({int(v) for t in truths for v in t["labels"]})
    metric = COCOMetric(
        list(label_names), iou_list=(0.5,), iou_range=(0.5, 0.95, 0.05), max_detection=(100,), verbose=False
    )
    matched = matching_batch(
        monai_iou,
        metric.iou_thresholds,
        [np.asarray(p["boxes"], np.float32).reshape(-1, 6) for p in preds],
        [np.asarray(p["labels"]) for p in preds],
        [np.asarray(p["scores"]) for p in preds],
        [np.asarray(t["boxes"], np.float32).reshape(-1, 6) for t in truths],
        [np.asarray(t["labels"]) for t in truths],
        max_detections=100,
    )
    values = metric(matched)[0]
    out: dict[str, Any] = {
        "map_50_per_class": {
            label_names[k]: float(values[f"{label_names[k]}_AP_IoU_0.50_MaxDet_100"]) for k in present
        },
        "map_per_class": {
            label_names[k]: float(values[f"{label_names[k]}_mAP_IoU_0.50_0.95_0.05_MaxDet_100"]) for k in present
        },
    }
    out["map_50"] = float(np.mean(list(out["map_50_per_class"].values()))) if present else float("nan")
    out["map"] = float(np.mean(list(out["map_per_class"].values()))) if present else float("nan")
    return out


def recall_at(
    preds: Sequence[Boxes], truths: Sequence[Boxes], n_classes: int, thresholds: Sequence[float] | None = None
) -> dict[str, float]:
    """Share of true boxes hit at IoU 0.5 by a detection of their class (at the counting thresholds, if given)."""
    hit, total = 0, 0
    for pred, truth in zip(preds, truths):
        for label in range(n_classes):
            keep = pred["scores"] >= (thresholds[label] if thresholds else 0.0)
            scores, hits = match_detections({k: v[keep] for k, v in pred.items()}, truth, label)
            hit += int(hits.sum())
            total += int((truth["labels"] == label).sum())
    return {"recall": hit / total if total else float("nan"), "hit": hit, "total": total}


def froc(preds: Sequence[Boxes], truths: Sequence[Boxes], labels: Sequence[int]) -> dict[str, Any]:
    """Sensitivity at :data:`FROC_FPS` false positives per image and their mean (CPM), over the boxes of ``labels``."""
    from monai.metrics import compute_froc_curve_data, compute_froc_score

    tp, fp, targets = [], [], 0
    for pred, truth in zip(preds, truths):
        for label in labels:
            scores, hits = match_detections(pred, truth, label)
            tp.extend(scores[hits])
            fp.extend(scores[~hits])
            targets += int((truth["labels"] == label).sum())
    if targets == 0:
        return {"cpm": float("nan"), "sensitivity": {}}
    fps, sens = compute_froc_curve_data(np.asarray(fp), np.asarray(tp), targets, len(preds))
    at = compute_froc_score(fps, sens, FROC_FPS) if len(fps) else 0.0
    per = [float(np.interp(f, fps[::-1], sens[::-1])) if len(fps) else 0.0 for f in FROC_FPS]
    return {"cpm": float(at), "sensitivity": {str(f): s for f, s in zip(FROC_FPS, per)}}


def count_errors(
    preds: Sequence[Boxes], truths: Sequence[Boxes], label_names: Sequence[str], thresholds: Sequence[float]
) -> dict[str, dict[str, float]]:
    """Per class: mean absolute count error and the share of images counted exactly, at the counting thresholds."""
    out = {}
    for k, name in enumerate(label_names):
        predicted = np.array([int(((p["labels"] == k) & (p["scores"] >= thresholds[k])).sum()) for p in preds])
        true = np.array([int((t["labels"] == k).sum()) for t in truths])
        out[name] = {
            "mean_abs_error": float(np.abs(predicted - true).mean()) if len(true) else float("nan"),
            "exact_share": float((predicted == true).mean()) if len(true) else float("nan"),
            "true_total": int(true.sum()),
            "predicted_total": int(predicted.sum()),
        }
    return out


def choose_count_thresholds(preds: Sequence[Boxes], truths: Sequence[Boxes], n_classes: int) -> list[float]:
    """Each class's score threshold for counting, on validation images only: the one with the lowest mean absolute
    count error per image; of a range of equally good scores, its middle (as the classifiers' threshold is the middle
    of Youden's best range)."""
    thresholds = []
    for label in range(n_classes):
        true = np.array([int((t["labels"] == label).sum()) for t in truths])
        scores = [np.sort(p["scores"][p["labels"] == label])[::-1] for p in preds]
        pooled = np.unique(np.concatenate(scores)) if any(len(s) for s in scores) else np.zeros(0)
        if not len(pooled) or true.sum() == 0:
            thresholds.append(0.5)
            continue
        edges = np.concatenate([[0.0], pooled, [1.0]])  # a cut between edges[i] and edges[i + 1] keeps pooled[i:]
        cuts = (edges[:-1] + edges[1:]) / 2
        errors = np.array([np.mean(np.abs([int((s >= c).sum()) for s in scores] - true)) for c in cuts])
        best = np.flatnonzero(errors <= errors.min() + 1e-12)
        run = _widest_run(best, edges)
        thresholds.append(float((edges[run[0]] + edges[run[-1] + 1]) / 2))  # the middle of that range of scores
    return thresholds


def _widest_run(indices: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Of the runs of consecutive cut ``indices``, the one spanning the widest range of scores (cut i lies
    between ``edges[i]`` and ``edges[i + 1]``)."""
    runs = np.split(indices, np.flatnonzero(np.diff(indices) != 1) + 1)
    return max(runs, key=lambda r: edges[r[-1] + 1] - edges[r[0]])


def interpolated_ap(scores: np.ndarray, hits: np.ndarray, n_true: int) -> float:
    """Average precision with COCO's 101-point interpolation from pooled detections (score, hit) of one class."""
    if n_true == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(hits[order])
    recall = tp / n_true
    precision = tp / np.arange(1, len(tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision  # the envelope
    points = np.linspace(0, 1, 101)
    at = np.searchsorted(recall, points, side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in at]))


def bootstrap_detection(
    preds: Sequence[Boxes], truths: Sequence[Boxes], label_names: Sequence[str], n_resamples: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """95% percentile intervals of mAP@0.5 (mean over classes) and each class's AP@0.5, over images resampled with
    replacement. Each image's detections are matched once (greedy by score at IoU 0.5, as COCO matches) and each
    resample re-scores the pooled matches with COCO's 101-point interpolation: a pycocotools run per resample would
    take about a second each."""
    per_image = [
        [(*match_detections(p, t, k), int((t["labels"] == k).sum())) for k in range(len(label_names))]
        for p, t in zip(preds, truths)
    ]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        idx = rng.integers(0, len(per_image), len(per_image))
        aps = {}
        for k, name in enumerate(label_names):
            parts = [per_image[i][k] for i in idx]
            n_true = sum(n for _, _, n in parts)
            if n_true:
                scores = np.concatenate([s for s, _, _ in parts])
                hits = np.concatenate([h for _, h, _ in parts])
                aps[name] = interpolated_ap(scores, hits, n_true)
        for name, value in aps.items():
            samples.setdefault(f"ap_50/{name}", []).append(value)
        samples.setdefault("map_50", []).append(float(np.mean(list(aps.values()))) if aps else float("nan"))
    return {
        k: {"low": float(np.nanpercentile(v, 2.5)), "high": float(np.nanpercentile(v, 97.5)), "n": n_resamples}
        for k, v in samples.items()
    }
