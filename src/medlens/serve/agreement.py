"""Second-reader agreement: the model's call against radiologists' reads, per model and finding.

Each read (one radiologist, one finding, one study) is a pair (model present?,
radiologist present?). Reported: agreement rate, Cohen's kappa (scikit-learn),
and the model's sensitivity and specificity taking the radiologist as the
reference, with the discordant studies listed for review. Kappa is undefined
(None) while every pair has the same value on one side.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def agreement_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``rows``: reads joined with their job (``model``, ``result``, ``job_id``, ``reader``, ``finding``, ``present``)."""
    pairs: dict[tuple[str, str], list[tuple[bool, bool, int, str]]] = defaultdict(list)
    for row in rows:
        calls = {f["name"]: bool(f["present"]) for f in (row.get("result") or {}).get("findings", [])}
        if row["finding"] in calls:
            pairs[(row["model"], row["finding"])].append(
                (calls[row["finding"]], bool(row["present"]), row["job_id"], row["reader"])
            )
    table = [_summary(model, finding, items) for (model, finding), items in sorted(pairs.items())]
    return {"rows": table, "reads": sum(r["n"] for r in table)}


def _summary(model: str, finding: str, items: list[tuple[bool, bool, int, str]]) -> dict[str, Any]:
    from sklearn.metrics import cohen_kappa_score

    ai = np.array([i[0] for i in items])
    human = np.array([i[1] for i in items])
    kappa = None
    if len(set(ai)) > 1 or len(set(human)) > 1:
        value = float(cohen_kappa_score(human, ai))
        kappa = value if np.isfinite(value) else None
    positives, negatives = human.sum(), (~human).sum()
    return {
        "model": model,
        "finding": finding,
        "n": len(items),
        "agreement": float((ai == human).mean()),
        "kappa": kappa,
        "sensitivity": float((ai & human).sum() / positives) if positives else None,
        "specificity": float((~ai & ~human).sum() / negatives) if negatives else None,
        "discordant": [
            {"job": job, "reader": reader, "model_says": a, "reader_says": h} for a, h, job, reader in items if a != h
        ],
    }
