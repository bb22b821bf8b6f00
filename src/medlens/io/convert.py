"""The ``convert`` stage: DICOM folder -> one NIfTI per volume, a PHI-free JSON sidecar each, and ``convert.json``.

Unevenly spaced series are equalized (linear interpolation onto the smallest
measured step, like dcm2niix's ``_Eq`` files) and say so in their sidecar, or,
with ``equalize=False``, are listed as problems instead of being written with a
geometry NIfTI cannot represent.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medlens.errors import GeometryError
from medlens.io.series import FileProblem, read_dicom_volumes
from medlens.io.volume import equalize_slices, save_nifti
from medlens.types import Volume


def convert_dicom(source: str | Path, out_dir: str | Path, equalize: bool = True) -> dict[str, Any]:
    """Convert every series below ``source``; returns (and writes as ``convert.json``) what was written and what failed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scan = read_dicom_volumes(source)
    written: list[dict[str, Any]] = []
    for index, volume in enumerate(scan.volumes, start=1):
        stem = f"{index:02d}_{volume.meta['name']}"
        if not volume.regular:
            if not equalize:
                scan.problems.append(
                    FileProblem(
                        stem,
                        GeometryError.__name__,
                        f"{stem}: {volume.warnings[0]}; not written (run without --no-equalize to resample it)",
                    )
                )
                continue
            volume, stem = equalize_slices(volume), stem + "_Eq"
        path = save_nifti(volume, out / f"{stem}.nii.gz")
        sidecar = volume_sidecar(volume)
        (out / f"{stem}.json").write_text(json.dumps(sidecar, indent=2))
        written.append(
            {"file": path.name, **{k: sidecar[k] for k in ("shape", "spacing_mm", "orientation", "warnings")}}
        )
    report = {
        "source": str(source),
        "volumes": written,
        "problems": [asdict(p) for p in scan.problems],
        "notes": scan.notes,
    }
    (out / "convert.json").write_text(json.dumps(report, indent=2))
    return report


def volume_sidecar(volume: Volume) -> dict[str, Any]:
    """Geometry plus the whitelisted technical tags; nothing that identifies the patient."""
    return {
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing_mm],
        "orientation": volume.orientation,
        "origin_ras_mm": [round(v, 4) for v in volume.origin_ras],
        "affine_ras": [[round(float(v), 6) for v in row] for row in volume.affine],
        "slice_positions_mm": [round(p, 4) for p in volume.slice_positions_mm] if volume.slice_positions_mm else None,
        "warnings": list(volume.warnings),
        **volume.meta,
    }
