"""The real images and the exact splits and seeds of the reconstruction benchmark.

Kept in the library (not only in ``benchmarks/``) so the shipped bundles can be
checked against their benchmark numbers on precisely the same test slices, masks
and noise realisations. Data come from ``MEDLENS_DATA_DIR`` (PGBM-003, C4KC-KiTS)
and the ``pydicom`` / ``pydicom-data`` packages (other patients' CT).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlens.datasets.catalog import resolve_data_dir
from medlens.errors import DataError
from medlens.io.series import read_dicom_volume, read_dicom_volumes
from medlens.recon.ct import simulate_low_doses
from medlens.recon.learn import CENTRE_FRACTIONS
from medlens.recon.mri import to_kspace, undersample

MR_SERIES = {
    "train": ["11-T1post-18670", "26401-T1prereg-52906"],
    "val": ["36468-FLAIRreg-58706"],
    "test": ["37830-T2reg-78532"],
}
MRI_TEST_SEED = 50_000  # test slice i at acceleration a uses mask seed MRI_TEST_SEED + i
CT_VAL_POSITIONS = (3, 8)  # KiTS slice indices (sorted by position) kept for validation
CT_TEST_FILES = {
    "explicit_VR-UN.dcm": "abdomen, NIH Pancreas-CT PANCREAS_0001",
    "693_UNCR.dcm": "head, CQ500-CT-310",
    "bad_sequence.dcm": "neck/spine, zoomed field of view",
}
DOSES = (0.25, 0.1)


def data_root() -> Path:
    """``$MEDLENS_DATA_DIR``, which must hold ``dicom/mr_pgbm003`` and ``dicom/ct_kits_slices``."""
    root = resolve_data_dir()
    if root is None or not (root / "dicom").is_dir():
        raise DataError(
            f"{root or '$MEDLENS_DATA_DIR (not set)'}: no dicom/ folder; set MEDLENS_DATA_DIR to the folder "
            "holding dicom/mr_pgbm003 and dicom/ct_kits_slices (TCIA PGBM-003 and C4KC-KiTS; see the "
            "data page of the documentation)"
        )
    return root


def mr_slices(split: str) -> list[np.ndarray]:
    """The PGBM-003 slices of a split as ``(rows, cols)`` magnitude images, series by series."""

    out = []
    for name in MR_SERIES[split]:
        volume = read_dicom_volume(data_root() / "dicom" / "mr_pgbm003" / name)
        out.extend(np.transpose(np.asarray(volume.array), (2, 1, 0)))
    return out


def pydicom_data_file(name: str) -> Path:
    """A real CT file from the installed ``pydicom-data`` package (the test extra)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        return Path(str(distribution("pydicom-data").locate_file(f"data_store/data/{name}")))
    except PackageNotFoundError as exc:
        raise DataError("the CT test images come from the pydicom-data package: pip install -e '.[test]'") from exc


def ct_images() -> dict[str, list[tuple[np.ndarray, float]]]:
    """(HU slice ``(rows, cols)``, pixel mm) per split: train/val KiTS patient A, test four other patients."""
    import pydicom

    def rows_cols(volume) -> list[tuple[np.ndarray, float]]:
        # outside the field of view some scanners store -3024 HU: padding, not anatomy
        return [
            (np.maximum(np.asarray(volume.array[:, :, k], dtype=np.float32).T, -1024.0), float(volume.spacing_mm[0]))
            for k in range(volume.array.shape[2])
        ]

    kits = rows_cols(read_dicom_volumes(data_root() / "dicom" / "ct_kits_slices").volumes[0])
    test = []
    for path in [pydicom_data_file(name) for name in CT_TEST_FILES] + [
        Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    ]:
        test += rows_cols(read_dicom_volume(path))
    return {
        "train": [s for i, s in enumerate(kits) if i not in CT_VAL_POSITIONS],
        "val": [s for i, s in enumerate(kits) if i in CT_VAL_POSITIONS],
        "test": test,
    }


def ct_low_dose_settings(image_index: int, realisations: int) -> list[tuple[float, int]]:
    """``(dose, seed)`` pairs for one image: every dose, ``realisations`` noise draws each."""
    return [(d, 1000 * image_index + 10 * j + int(d * 100)) for d in DOSES for j in range(realisations)]


def mri_test_cases(acceleration: int) -> list[tuple[np.ndarray, object, np.ndarray]]:
    """(truth, masked k-space, sampled columns) for each T2 test slice, with the benchmark's random masks."""

    out = []
    for i, image in enumerate(mr_slices("test")):
        masked, _, columns = undersample(
            to_kspace(image), "random", acceleration, CENTRE_FRACTIONS[acceleration], seed=MRI_TEST_SEED + i
        )
        out.append((image, masked, columns))
    return out


def ct_pairs(
    split: str, realisations: int, doses: tuple[float, ...] = DOSES
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(low-dose HU, full-dose HU, dose) for every image of a split, the benchmark's seeds."""

    out = []
    for k, (hu, mm) in enumerate(ct_images()[split]):
        settings = [s for s in ct_low_dose_settings(k, realisations) if s[0] in doses]
        out.extend((low, hu, dose) for (dose, _), low in zip(settings, simulate_low_doses(hu, mm, settings)))
    return out
