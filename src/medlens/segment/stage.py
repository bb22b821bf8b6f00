"""The segmentation stages behind the CLI: plan, train, segment files (NIfTI / DICOM in; NIfTI, DICOM SEG, JSON out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medlens.errors import DataError, MedlensError
from medlens.io.volume import load_volume, save_nifti
from medlens.segment.data import check_dataset, load_seg_dataset
from medlens.segment.evaluate import SegBundle
from medlens.segment.infer import label_volumes_ml, segment_volume
from medlens.segment.plan import SegPlan, fingerprint, load_plan, make_plan, save_plan
from medlens.segment.train import SegTrainConfig, train_segmenter


def plan_stage(data: str | Path, out_dir: str | Path, dims: int = 3, memory_mb: int = 2000, width: int = 8) -> tuple[SegPlan, dict[str, Any]]:
    """Check the dataset, measure its fingerprint, write ``fingerprint.json`` and an editable ``plan.json``."""
    fp = fingerprint(load_seg_dataset(data))
    plan = make_plan(fp, memory_budget_mb=memory_mb, dims=dims, width=width)
    save_plan(plan, fp, Path(out_dir))
    return plan, fp


def train_stage(data: str | Path, out_dir: str | Path, cfg: SegTrainConfig, plan_path: str | Path | None = None,
                show_progress: bool = True) -> Path:
    """Refuse a dataset with problems (listing them), plan if no plan is given, train, return the bundle folder."""
    out_dir = Path(out_dir)
    report = check_dataset(load_seg_dataset(data))
    if report["problems"]:
        raise DataError(f"{data}: {len(report['problems'])} problem(s), fix or leave out these cases first: "
                        + "; ".join(report["problems"][:5]))
    plan = load_plan(plan_path) if plan_path else plan_stage(data, out_dir)[0]
    return train_segmenter(data, plan, cfg, out_dir, show_progress=show_progress)


def output_name(source: Path) -> str:
    """``case.nii.gz`` keeps its name; a DICOM folder or file becomes ``<name>.nii.gz``."""
    name = source.name
    if name.lower().endswith((".nii", ".nii.gz")):
        return name
    for suffix in (".nrrd", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return f"{name}.nii.gz"


def segment_files(bundle: SegBundle, inputs: list[Path], out_dir: str | Path, tta: bool = False) -> dict[str, Any]:
    """One label map per input (same grid, same file name), DICOM SEG for DICOM inputs, ``volumes.json``; bad inputs listed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, problems = [], []
    for source in inputs:
        try:
            volume = load_volume(source)
            labels = segment_volume(bundle.model, volume, bundle.plan, bundle.postprocess, tta=tta)
            target = save_nifti(labels, out / output_name(source))
            row = {"input": str(source), "labels": target.name, "volumes_ml": label_volumes_ml(labels, bundle.plan.label_names)}
            if _is_dicom(source):
                from medlens.segment.dicom_seg import write_dicom_seg

                row["dicom_seg"] = write_dicom_seg(source, labels, bundle, out / (target.name.removesuffix(".nii.gz") + "_seg.dcm")).name
            results.append(row)
        except MedlensError as exc:
            problems.append({"input": str(source), "message": str(exc)})
    (out / "volumes.json").write_text(json.dumps({"results": results, "problems": problems}, indent=1))
    return {"results": results, "problems": problems}


def _is_dicom(source: Path) -> bool:
    return source.is_dir() or source.name.lower().endswith(".dcm") or "." not in source.name
