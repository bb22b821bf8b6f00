"""The audit stage: everything a reviewer asks of a classifier, as numbers, in one folder.

``audit_bundle`` scores a bundle on a dataset's test split (performance with
CIs), fits/checks calibration on validation, draws referral curves for each
uncertainty method, runs the corruption suite with shift detection and
batch-norm adaptation, checks the explanations (randomisation, deletion /
insertion) and, when the data has metadata, per-group performance. It writes
``audit.json`` and the plots; :mod:`medlens.trust.model_card` turns them into
the model card. A fused (image + clinical) bundle is audited with each case's
own clinical values: corruptions, augmentations and explanations touch the
image only, and shift is watched on the image branch's embedding.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.bundle.manifest import json_default
from medlens.classify.data import subsample
from medlens.datasets import ClassificationData
from medlens.datasets.catalog import resolve_data_dir
from medlens.errors import MedlensError, ModelError
from medlens.evaluate.metrics import classification_metrics
from medlens.evaluate.stage import evaluate_bundle
from medlens.explain.clinical import WithClinical
from medlens.explain.maps import ExplainOptions, explain
from medlens.explain.overlay import write_overlay_png
from medlens.explain.sanity import deletion_insertion, randomisation_correlation
from medlens.explain.stage import black_level
from medlens.models.fusion import image_network
from medlens.models.ood import embeddings
from medlens.models.probs import predict_logits, scale_logits
from medlens.models.uncertainty import (
    REFERRAL_FRACTIONS,
    SampleOptions,
    probability_samples,
    referral_curve,
    referral_threshold,
    uncertainty_scores,
)
from medlens.preprocess.pipeline import normalize_intensity
from medlens.trust import plots
from medlens.trust.calibrate import fit_temperature, map_threshold
from medlens.trust.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from medlens.trust.fairness import check_columns, group_values, subgroup_metrics
from medlens.trust.model_card import write_model_card
from medlens.trust.ood_check import gate_rates, reference_ood_sets
from medlens.trust.shift import BatchShiftScorer, batch_indices, bn_adapted, detection_auroc

if TYPE_CHECKING:
    from medlens.classify.bundle import ClassifierBundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditConfig:
    """What the audit runs; the defaults are the benchmark's."""

    split: str = "test"
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS.names())
    severities: tuple[int, ...] = SEVERITIES
    uncertainty_methods: tuple[str, ...] = ("softmax", "tta", "mc-dropout", "ensemble")
    referral_fraction: float = 0.1
    explain_method: str = "gradcam"
    explain_cases: int = 32
    shift_batch_size: int = 32
    shift_batches: int = 50
    group_columns: tuple[str, ...] | None = None  # None: every metadata column with 2-20 groups
    max_cases: int | None = None  # score a stratified subset of the split (quick checks)
    n_bootstrap: int = 1000
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Ctx:
    bundle: ClassifierBundle
    data: ClassificationData
    cfg: AuditConfig
    out: Path
    members: list[ClassifierBundle]
    temperature: float = 1.0
    thresholds: list[float] = field(default_factory=list)

    def inputs(self, part: Any, images: np.ndarray | None = None) -> Any:
        """What the network takes for ``part`` (or its ``images`` replaced, e.g. corrupted): normalised images, and
        for a fused bundle the cases' encoded clinical values beside them."""
        x = normalize_raw(part.images if images is None else images, self.bundle.preprocessing)
        if self.bundle.tabular is None:
            return x
        return x, self.bundle.tabular.transform(part.metadata, f"{self.data.name}: audited cases")

    def metrics(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        return classification_metrics(self.bundle.task, labels, probs, self.bundle.label_names, self.thresholds)

    def split(self, name: str) -> Any:
        part = self.data.split(name)
        if name == self.cfg.split and self.cfg.max_cases and self.cfg.max_cases < len(part):
            part = subsample(part, self.cfg.max_cases, self.cfg.seed)
        return part


def audit_bundle(
    bundle: ClassifierBundle,
    data: ClassificationData,
    out_dir: Path,
    cfg: AuditConfig = AuditConfig(),
    members: list[ClassifierBundle] | None = None,
) -> dict[str, Any]:
    """Run every audit section and write ``audit.json``, the plots and the model card into ``out_dir``.

    ``members``: other bundles of the same model trained with different seeds, for the deep-ensemble rows.
    """

    ctx = _Ctx(bundle, data, cfg, out_dir, list(members or []))
    if cfg.group_columns:  # fail before the long sections, not after them
        check_columns(ctx.split(cfg.split).metadata, cfg.group_columns)
    out_dir.mkdir(parents=True, exist_ok=True)
    calibration = audit_calibration(ctx)  # sets the temperature the other sections use
    subset = data
    if cfg.max_cases:
        subset = ClassificationData(
            data.name,
            data.task,
            data.label_names,
            {**data.splits, cfg.split: ctx.split(cfg.split)},
            data.modality,
            data.intensity_range,
            data.source,
        )
    calibrated = _with_temperature(bundle, ctx)
    performance = evaluate_bundle(calibrated, subset, out_dir / "evaluation", cfg.split, cfg.n_bootstrap, cfg.seed)
    result = {
        "bundle": {
            "path": str(bundle.path),
            "name": bundle.manifest.get("name", bundle.path.name),
            "task": bundle.task,
            "label_names": bundle.label_names,
            "positive_label": bundle.positive_label,
            "network": bundle.manifest.get("network", {}),
            "data": bundle.manifest.get("data", {}),
            "training": _training_summary(bundle),
            "clinical_inputs": list(bundle.tabular.columns) if bundle.tabular is not None else [],
        },
        "data": {"dataset": data.name, "split": cfg.split, **data.source},
        "config": asdict(cfg),
        "performance": {
            k: performance[k] for k in ("n", "metrics", "confidence_intervals", "prevalence", "thresholds")
        },
        "calibration": calibration,
        "ood_gate": audit_gate(bundle, performance),
        "referral": audit_referral(ctx),
        "robustness": audit_robustness(ctx),
        "explanations": audit_explanations(ctx),
        "subgroups": audit_subgroups(ctx),
    }
    (out_dir / "audit.json").write_text(json.dumps(result, indent=1, default=json_default))
    result["model_card"] = [str(p) for p in write_model_card(result, out_dir)]
    return result


def audit_gate(bundle: ClassifierBundle, performance: dict[str, Any]) -> dict[str, Any]:
    """The out-of-distribution gate: how it was fitted, the share of the audited split it turns away, and the share
    of each reference set of other images (:mod:`medlens.trust.ood_check`, when the data folder is known)."""
    if bundle.gate is None:
        return {"skipped": "the bundle has no out-of-distribution gate (fit one with `medlens calibrate`)"}
    data_dir = resolve_data_dir()
    sets = reference_ood_sets(data_dir) if data_dir is not None and data_dir.is_dir() else {}
    return {
        **bundle.manifest["ood_gate"],
        "audited_split": performance.get("ood_gate", {}),
        "reference_sets": gate_rates(bundle, sets),
    }


def _training_summary(bundle: ClassifierBundle) -> dict[str, Any]:
    training = bundle.manifest.get("training", {})
    return {k: training.get(k) for k in ("best_epoch", "epochs_run", "seconds")} | {
        "n_train": bundle.manifest.get("data", {}).get("n_train"),
        "n_val": bundle.manifest.get("data", {}).get("n_val"),
    }


def _with_temperature(bundle: ClassifierBundle, ctx: _Ctx) -> ClassifierBundle:
    """The same network with the audit's temperature and mapped thresholds (the bundle on disk is untouched)."""
    from dataclasses import replace

    calibration = {**bundle.manifest.get("calibration", {}), "temperature": ctx.temperature}
    return replace(bundle, manifest={**bundle.manifest, "calibration": calibration, "thresholds": ctx.thresholds})


def audit_calibration(ctx: _Ctx) -> dict[str, Any]:
    """ECE before and after temperature scaling, on validation (where T is fitted) and on the audited split."""
    bundle, task = ctx.bundle, ctx.bundle.task
    stored = bundle.manifest.get("calibration", {})
    raw_thresholds = stored.get("uncalibrated_thresholds", bundle.manifest.get("thresholds", []))
    logits = {}
    for name in ("val", ctx.cfg.split):
        part = ctx.split(name)
        logits[name] = (part.labels, ctx.bundle.predict_logits(ctx.inputs(part)))
    if "temperature" in stored:
        temperature, source = float(stored["temperature"]), "stored in the bundle (medlens calibrate)"
    else:
        temperature, source = (
            fit_temperature(logits["val"][1], logits["val"][0], task),
            "fitted on validation by this audit",
        )
    ctx.temperature = temperature
    ctx.thresholds = [map_threshold(t, temperature) for t in raw_thresholds]
    ece: dict[str, float] = {}
    curves = {}
    for name, (labels, z) in logits.items():
        for when, t, th in (("before", 1.0, list(raw_thresholds)), ("after", temperature, ctx.thresholds)):
            probs = scale_logits(z, task, t)
            ece[f"{name}_{when}"] = classification_metrics(task, labels, probs, bundle.label_names, th)["ece"]
            if name == ctx.cfg.split:
                curves[when] = (labels, probs)
    plot = plots.reliability(ctx.out / "calibration_before_after.png", curves, task, bundle.label_names)
    return {
        "temperature": temperature,
        "source": source,
        "ece": ece,
        "plot": plot.name,
        "split_prevalence": {n: _prevalence(lab, task) for n, (lab, _z) in logits.items()},
    }


def _prevalence(labels: np.ndarray, task: str) -> list[float]:
    if task == "multilabel":
        return labels.mean(axis=0).round(4).tolist()
    return (np.bincount(labels.astype(int)) / len(labels)).round(4).tolist()


def _opts(ctx: _Ctx) -> SampleOptions:
    return SampleOptions(modality=ctx.bundle.preprocessing.modality, temperature=ctx.temperature)


def audit_referral(ctx: _Ctx) -> dict[str, Any]:
    """Per uncertainty method: the referral curve on the audited split and the validation-chosen operating point."""

    val, test = ctx.split("val"), ctx.split(ctx.cfg.split)
    x_val, x_test = ctx.inputs(val), ctx.inputs(test)
    results: dict[str, Any] = {}
    for method in ctx.cfg.uncertainty_methods:
        models = [ctx.bundle.model] + [m.model for m in ctx.members]
        if method == "ensemble" and not ctx.members:
            results[method] = {"skipped": "needs other bundles of the same model trained with other seeds (--ensemble)"}
            continue
        try:
            s_val = probability_samples(method, models, x_val, ctx.bundle.task, _opts(ctx))
            s_test = probability_samples(method, models, x_test, ctx.bundle.task, _opts(ctx))
        except MedlensError as exc:
            results[method] = {"skipped": str(exc)}
            continue
        u_val = uncertainty_scores(s_val, ctx.bundle.task, ctx.thresholds)
        u_test = uncertainty_scores(s_test, ctx.bundle.task, ctx.thresholds)
        threshold = referral_threshold(u_val, ctx.cfg.referral_fraction)
        kept = u_test < threshold
        probs = s_test.mean(axis=0)
        point = {
            "validation_fraction": ctx.cfg.referral_fraction,
            "threshold": threshold,
            "referred_fraction": float(1 - kept.mean()),
            **_pick(ctx.metrics(test.labels[kept], probs[kept])),
        }
        results[method] = {
            "samples": int(len(s_test)),
            "all_cases": _pick(ctx.metrics(test.labels, probs)),
            "operating_point": point,
            "curve": referral_curve(ctx.metrics, test.labels, probs, u_test, REFERRAL_FRACTIONS),
        }
    plot = plots.referral(ctx.out / "referral.png", {m: r["curve"] for m, r in results.items() if "curve" in r})
    return {"methods": results, "plot": plot.name}


def _pick(metrics: dict[str, float]) -> dict[str, float]:
    return {k: metrics[k] for k in ("auc", "accuracy", "sensitivity", "specificity", "ece") if k in metrics}


def audit_robustness(ctx: _Ctx) -> dict[str, Any]:
    """Metrics under each corruption and severity; shift-detection AUROC; batch-norm adaptation gain."""

    model, task = ctx.bundle.model, ctx.bundle.task
    val, test = ctx.split("val"), ctx.split(ctx.cfg.split)
    x_val = ctx.inputs(val)
    scorer = BatchShiftScorer(
        scale_logits(predict_logits(model, x_val), task, ctx.temperature),
        embeddings(image_network(model), _images(x_val)),
    )
    batches = batch_indices(len(test), ctx.cfg.shift_batch_size, ctx.cfg.shift_batches, ctx.cfg.seed)

    def score(images: np.ndarray) -> tuple[dict[str, Any], list[float], list[float]]:
        x = ctx.inputs(test, images)
        probs = scale_logits(predict_logits(model, x), task, ctx.temperature)
        emb = embeddings(image_network(model), _images(x))
        row: dict[str, Any] = _pick(ctx.metrics(test.labels, probs))
        try:
            adapted = scale_logits(predict_logits(bn_adapted(model, x), x), task, ctx.temperature)
            row["bn_adapted"] = _pick(ctx.metrics(test.labels, adapted))
        except ModelError as exc:
            row["bn_adapted"] = {"skipped": str(exc)}
        conf = [scorer.confidence_score(probs[b]) for b in batches]
        embs = [scorer.embedding_score(emb[b]) for b in batches]
        return row, conf, embs

    clean, clean_conf, clean_emb = score(test.images)
    rows = []
    for name in ctx.cfg.corruptions:
        for severity in ctx.cfg.severities:
            images = corrupt(test.images, name, severity, ctx.bundle.preprocessing.input_range, ctx.cfg.seed)
            row, conf, embs = score(images)
            row.update(
                {
                    "corruption": name,
                    "severity": severity,
                    "detection_auroc": {
                        "confidence": detection_auroc(clean_conf, conf),
                        "embedding": detection_auroc(clean_emb, embs),
                    },
                }
            )
            rows.append(row)
            log.info("corruption %s severity %d: %s", name, severity, row.get("auc"))
    plot = plots.robustness(ctx.out / "robustness.png", clean, rows)
    return {
        "clean": clean,
        "rows": rows,
        "batch_size": ctx.cfg.shift_batch_size,
        "batches": ctx.cfg.shift_batches,
        "plot": plot.name,
    }


def _images(inputs: Any) -> np.ndarray:
    return inputs[0] if isinstance(inputs, tuple) else inputs


def normalize_raw(images: np.ndarray, prep: Any) -> np.ndarray:
    return normalize_intensity(np.asarray(images, dtype=np.float32), prep)


def audit_explanations(ctx: _Ctx) -> dict[str, Any]:
    """Randomisation sanity check and deletion/insertion faithfulness on a seeded sample; example overlays."""

    test = ctx.split(ctx.cfg.split)
    rng = np.random.default_rng(ctx.cfg.seed)
    index = np.sort(rng.choice(len(test), size=min(ctx.cfg.explain_cases, len(test)), replace=False))
    x = normalize_raw(test.images[index], ctx.bundle.preprocessing)
    method, model = ctx.cfg.explain_method, ctx.bundle.model
    opts = ExplainOptions(baseline=black_level(ctx.bundle))
    if ctx.bundle.tabular is None:
        maps = explain(model, x, method, opts=opts)
        randomisation = randomisation_correlation(model, x, method, opts)
        faithfulness = deletion_insertion(model, x, maps, baseline=opts.baseline, seed=ctx.cfg.seed)
    else:
        clinical = ctx.bundle.tabular.transform([test.metadata[i] for i in index], f"{ctx.data.name}: explained cases")
        maps, randomisation, faithfulness = _explain_fused(model, x, clinical, method, opts, ctx.cfg.seed)
    examples = []
    for k in range(min(4, len(index))):
        name = f"explain_{method}_{test.ids[index[k]]}".replace("/", "_").replace(":", "_")
        label = (
            ctx.bundle.label_names[int(np.asarray(test.labels[index[k]]).argmax())]
            if test.labels.ndim > 1
            else ctx.bundle.label_names[int(test.labels[index[k]])]
        )
        examples.append(
            write_overlay_png(
                x[k], maps[k], ctx.out / "examples" / f"{name}.png", f"{test.ids[index[k]]} (truth: {label}), {method}"
            )
            .relative_to(ctx.out)
            .as_posix()
        )
    return {
        "method": method,
        "n": int(len(index)),
        "randomisation": randomisation,
        "faithfulness": faithfulness,
        "examples": examples,
    }


def _explain_fused(
    model: Any, x: np.ndarray, clinical: np.ndarray, method: str, opts: Any, seed: int
) -> tuple[np.ndarray, dict[str, float], dict[str, float]]:
    """The explanation checks case by case, each with its own clinical values held fixed (the maps and checks
    perturb the image alone); the same summaries as for an image-only bundle."""

    per_case = [WithClinical(model, clinical[i]) for i in range(len(x))]
    maps = np.concatenate([explain(m, x[i : i + 1], method, opts=opts) for i, m in enumerate(per_case)])
    rhos = [randomisation_correlation(m, x[i : i + 1], method, opts)["spearman_mean"] for i, m in enumerate(per_case)]
    curves = [
        deletion_insertion(m, x[i : i + 1], maps[i : i + 1], baseline=opts.baseline, seed=seed + i)
        for i, m in enumerate(per_case)
    ]
    faithfulness = {
        k: float(np.mean([c[k] for c in curves]))
        for k in ("deletion", "insertion", "deletion_random", "insertion_random")
    }
    return (
        maps,
        {"spearman_mean": float(np.mean(rhos)), "spearman_sd": float(np.std(rhos)), "n": len(rhos)},
        faithfulness | {"n": len(curves)},
    )


def audit_subgroups(ctx: _Ctx) -> dict[str, Any]:
    """Per-group metrics for the split's metadata columns (none: says so)."""

    test = ctx.split(ctx.cfg.split)
    if not test.metadata:
        return {"skipped": f"{ctx.data.name} has no metadata columns (site, sex, age, scanner) to group by"}
    columns = ctx.cfg.group_columns
    if columns is None:
        candidates = sorted({k for row in test.metadata for k in row})
        columns = tuple(c for c in candidates if 2 <= len(set(group_values(test.metadata, c))) <= 20)
        if not columns:
            return {
                "skipped": f"no metadata column of {ctx.data.name} ({', '.join(candidates)}) has 2-20 groups "
                "in this split; name columns with --groups"
            }
    probs = _with_temperature(ctx.bundle, ctx).predict_proba(ctx.inputs(test))
    return subgroup_metrics(
        ctx.metrics,
        test.labels,
        probs,
        test.metadata,
        columns,
        ctx.bundle.task,
        n_bootstrap=min(ctx.cfg.n_bootstrap, 500),
        seed=ctx.cfg.seed,
    )
