"""``medlens federate`` as one stage: split the data into hospitals, federate, score the global model everywhere.

Leaves in ``OUT``: ``sites.json`` (the split, reusable with ``--split``),
``messages.jsonl`` (what every site sent each round: names, shapes, sizes),
``history.json`` (per round: loss, pooled and per-site validation AUC, epsilon),
``model/`` (an ordinary bundle), ``evaluation/`` (the shared test set, with
bootstrap CIs) and ``federation.json`` (all of it, plus each site's test AUC on
the test set as that site's scanner would acquire it, and with ``adapt`` the
same after fine-tuning and after test-time adaptation at that site).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medlens.classify.bundle import load_classifier
from medlens.evaluate.stage import evaluate_bundle
from medlens.federated.adapt import adapt_at_test_time, finetune, site_auc
from medlens.federated.deploy import run_deployment
from medlens.federated.flower import FederateConfig, _load, run_federation
from medlens.federated.local import load_site, site_images
from medlens.federated.sites import SiteSplitConfig, load_site_split, split_sites

log = logging.getLogger(__name__)


def federate(
    cfg: FederateConfig,
    out_dir: Path,
    split_config: SiteSplitConfig | None = None,
    split_path: Path | None = None,
    data_dir: str | None = None,
    adapt: bool = False,
    n_bootstrap: int = 500,
    deployment: bool = False,
) -> dict[str, Any]:
    """Run the whole federation and write ``OUT/federation.json``; returns its contents.

    ``deployment`` runs it as separate processes (Flower's SuperLink, one SuperNode per site, ``flwr run``) on
    127.0.0.1 instead of Flower's in-process simulation engine; the result is the same kind of bundle."""

    out_dir.mkdir(parents=True, exist_ok=True)
    data = _load(cfg, data_dir)
    if split_path is None:
        split_config = split_config or SiteSplitConfig(seed=cfg.seed)
        split_path = split_sites(data.splits["train"].labels, data.splits["val"].labels, split_config).save(
            out_dir / "sites.json"
        )
    split = load_site_split(split_path)
    runner = run_deployment if deployment else run_federation
    bundle = load_classifier(runner(cfg, split_path, out_dir, data_dir))
    report = evaluate_bundle(bundle, data, out_dir / "evaluation", split="test", n_bootstrap=n_bootstrap, seed=cfg.seed)
    federation = bundle.manifest["federation"]
    result = {
        "config": federation,
        "bundle": str(bundle.path),
        "split": str(split_path),
        "engine": "Flower deployment (SuperLink + SuperNodes on 127.0.0.1)"
        if deployment
        else "Flower simulation (Ray)",
        "test": {k: report["metrics"][k] for k in ("auc", "accuracy", "sensitivity", "specificity")},
        "test_auc_ci": report["confidence_intervals"].get("auc"),
        "sites": site_report(bundle.model, data, split, adapt, cfg.seed),
    }
    (out_dir / "federation.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def site_report(model: Any, data: Any, split: Any, adapt: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Each site's test AUC for ``model``; with ``adapt`` also after fine-tuning and after test-time adaptation there."""

    rows = []
    for k, summary in enumerate(split.summary or [{} for _ in split.train]):
        x_test, y_test = site_images(data, split, k, "test")
        row = {
            "site": k,
            "shift": summary.get("shift"),
            "n_train": len(split.train[k]),
            "test_auc": site_auc(model, x_test, y_test),
        }
        if adapt and split.train[k]:
            tuned, info = finetune(model, load_site(data, split, k), seed=seed)
            tent, tent_info = adapt_at_test_time(model, x_test, seed=seed)
            row.update(
                finetuned_test_auc=site_auc(tuned, x_test, y_test),
                finetune=info,
                tta_test_auc=site_auc(tent, x_test, y_test),
                tta=tent_info,
            )
        rows.append(row)
    return rows


def federation_summary(result: dict[str, Any], out: Path, adapt: bool) -> dict[str, Any]:
    """What ``medlens federate`` shows: the rounds and the sites as tables, then the global model's test AUC, the
    privacy spent and where everything was written."""
    rounds = [
        [
            str(h["round"]),
            f"{h['train_loss']:.3f}",
            f"{h['val_auc']:.4f}",
            str(h["sites_trained"]),
            "" if "epsilon" not in h else str(round(h["epsilon"], 2)),
        ]
        for h in result["config"]["history"]
    ]
    sites = [
        [str(s["site"]), str(s["shift"] or ""), str(s["n_train"]), _auc(s["test_auc"])]
        + ([_auc(s.get("finetuned_test_auc")), _auc(s.get("tta_test_auc"))] if adapt else [])
        for s in result["sites"]
    ]
    ci, privacy = result["test_auc_ci"] or {}, result["config"]["privacy"]
    lines = [
        f"global model (round {result['config']['selected_round']}, chosen on validation): test AUC "
        f"{result['test']['auc']:.4f} (95% CI {ci.get('low', float('nan')):.4f}-{ci.get('high', float('nan')):.4f}), "
        f"accuracy {result['test']['accuracy']:.4f}"
    ]
    if privacy:
        lines.append(
            f"privacy: epsilon {privacy['epsilon_spent']:.2f} spent of {privacy['epsilon_budget']} at delta "
            f"{privacy['delta']} per site (DP-SGD, RDP accountant)"
        )
    lines.append(
        f"bundle: {result['bundle']}   report: {out / 'federation.json'}   messages sent: {out / 'messages.jsonl'}"
    )
    site_columns = ["site", "shift", "train images", "test AUC (its scanner)"] + (
        ["fine-tuned", "test-time adapted"] if adapt else []
    )
    return {
        "tables": [(["round", "train loss", "val AUC (pooled)", "sites", "epsilon"], rounds), (site_columns, sites)],
        "lines": lines,
    }


def _auc(value: float | None) -> str:
    return "n/a (one class)" if value is None else f"{value:.4f}"
