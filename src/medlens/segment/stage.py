"""The segmentation stages behind the CLI: plan, train, segment files (NIfTI / DICOM in; NIfTI, DICOM SEG, JSON out)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlens.errors import DataError, MedlensError
from medlens.io.volume import load_volume, save_nifti
from medlens.segment.data import check_dataset, load_seg_dataset
from medlens.segment.dicom_seg import write_dicom_seg
from medlens.segment.infer import label_volumes_ml, segment_volume
from medlens.segment.plan import SegPlan, fingerprint, load_plan, make_plan, save_plan
from medlens.segment.train import SegTrainConfig, train_segmenter

if TYPE_CHECKING:
    from medlens.segment.bundle import SegmenterBundle


def plan_stage(
    data: str | Path, out_dir: str | Path, dims: int = 3, memory_mb: int = 2000, width: int = 8
) -> tuple[SegPlan, dict[str, Any]]:
    """Check the dataset, measure its fingerprint, write ``fingerprint.json`` and an editable ``plan.json``."""
    fp = fingerprint(load_seg_dataset(data))
    plan = make_plan(fp, memory_budget_mb=memory_mb, dims=dims, width=width)
    save_plan(plan, fp, Path(out_dir))
    return plan, fp


def train_stage(
    data: str | Path,
    out_dir: str | Path,
    cfg: SegTrainConfig,
    plan_path: str | Path | None = None,
    show_progress: bool = True,
) -> Path:
    """Refuse a dataset with problems (listing them), plan if no plan is given, train, return the bundle folder."""
    out_dir = Path(out_dir)
    report = check_dataset(load_seg_dataset(data))
    if report["problems"]:
        raise DataError(
            f"{data}: {len(report['problems'])} problem(s), fix or leave out these cases first: "
            + "; ".join(report["problems"][:5])
        )
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


def segment_files(
    bundle: SegmenterBundle,
    inputs: list[Path],
    out_dir: str | Path,
    tta: bool = False,
    on_item: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One label map per input (same grid, same file name), DICOM SEG for DICOM inputs, ``volumes.json``; bad inputs listed.

    Streams for long lists: the next input is read by a background thread
    while the current one is segmented; each finished input's row is appended
    to ``volumes.jsonl`` and flushed to disk at once, so a crash or Ctrl-C
    loses nothing finished, and rerunning the same command skips the inputs
    already in it (whose label maps still exist). ``volumes.json`` summarises
    the run at the end. ``on_item`` is called after each input (progress).
    """
    from concurrent.futures import ThreadPoolExecutor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "volumes.jsonl"
    done = _finished_rows(journal, out)
    results, problems = [done[str(s)] for s in inputs if str(s) in done], []
    todo = [s for s in inputs if str(s) not in done]
    with ThreadPoolExecutor(max_workers=1) as reader, journal.open("a") as log_file:
        pending = reader.submit(_read, todo[0]) if todo else None
        for i, source in enumerate(todo):
            volume = pending.result() if pending is not None else None
            pending = reader.submit(_read, todo[i + 1]) if i + 1 < len(todo) else None
            try:
                if isinstance(volume, MedlensError):
                    raise volume
                row = _segment_one(bundle, source, volume, out, tta)
                results.append(row)
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                os.fsync(log_file.fileno())
            except MedlensError as exc:
                problems.append({"input": str(source), "message": str(exc)})
            if on_item is not None:
                on_item()
    (out / "volumes.json").write_text(
        json.dumps({"results": results, "problems": problems, "skipped_done": len(done)}, indent=1)
    )
    return {"results": results, "problems": problems, "skipped_done": len(done)}


def _read(source: Path) -> Any:
    """The volume, or the error reading it (raised later, in order, by the segmenting loop)."""
    try:
        return load_volume(source)
    except MedlensError as exc:
        return exc


def _segment_one(bundle: SegmenterBundle, source: Path, volume: Any, out: Path, tta: bool) -> dict[str, Any]:
    labels = segment_volume(bundle.model, volume, bundle.plan, bundle.postprocess, tta=tta)
    target = save_nifti(labels, out / output_name(source))
    row = {"input": str(source), "labels": target.name, "volumes_ml": label_volumes_ml(labels, bundle.plan.label_names)}
    if _is_dicom(source):
        row["dicom_seg"] = write_dicom_seg(
            source, labels, bundle, out / (target.name.removesuffix(".nii.gz") + "_seg.dcm")
        ).name
    return row


def _finished_rows(journal: Path, out: Path) -> dict[str, dict[str, Any]]:
    """Rows of a previous run whose outputs are still there; a line torn by a kill is ignored (that input is redone)."""
    if not journal.is_file():
        return {}
    rows = {}
    for line in journal.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (out / row["labels"]).is_file() and (not row.get("dicom_seg") or (out / row["dicom_seg"]).is_file()):
            rows[row["input"]] = row
    if journal.read_bytes()[-1:] not in (b"", b"\n"):  # end a torn last line so appended rows start on their own
        with journal.open("a") as f:
            f.write("\n")
    return rows


def _is_dicom(source: Path) -> bool:
    return source.is_dir() or source.name.lower().endswith(".dcm") or "." not in source.name
