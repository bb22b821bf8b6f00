"""Clinical values from the DICOM header, so a fused model runs where only the images arrive (a PACS).

A chest radiograph's header already carries what the NIH-style clinical
columns hold: ``PatientAge`` (``045Y``), ``PatientSex`` (``M``/``F``/``O``) and
``ViewPosition`` (``PA``/``AP``/``LL``). :class:`DicomClinical` reads them per
instance with the same interface as a clinical CSV
(:class:`medlens.tabular.encode.ClinicalTable`), so ``medlens predict
--clinical dicom``, ``medlens explain`` and the service feed a fused bundle
without a side file.

Which header field feeds which column: the bundle's ``bundle.json`` may say so
in its routing block, ``"clinical_from_dicom": {"Patient Age": "PatientAge"}``
(DICOM keywords); otherwise columns named like age, sex/gender, view or body
part map to the usual fields. A column with neither is an error at load time
naming the column and the fix. Values go through the bundle's own encoder, so
an empty field counts as missing and a category the training data never had
(``PatientSex`` ``O`` for a model trained on M/F) is an error for that image,
never a silent guess.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import ConfigError, DataError
from medlens.tabular.encode import ClinicalTable

DEFAULT_FIELDS = {
    "age": "PatientAge",
    "patientage": "PatientAge",
    "sex": "PatientSex",
    "gender": "PatientSex",
    "patientsex": "PatientSex",
    "patientgender": "PatientSex",
    "view": "ViewPosition",
    "viewposition": "ViewPosition",
    "bodypart": "BodyPartExamined",
    "bodypartexamined": "BodyPartExamined",
}
AGE_UNITS = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}  # divisor to years


def dicom_age_years(value: str, where: str) -> str:
    """A DICOM Age String (``nnnD|W|M|Y``, e.g. ``045Y``, ``006M``) in years as text; empty stays empty."""
    raw = str(value or "").strip()
    if not raw:
        return ""
    match = re.fullmatch(r"(\d{1,3})\s*([DWMY])", raw.upper())
    if match is None:
        raise DataError(
            f"{where}: PatientAge {raw!r} is not a DICOM age (nnnD, nnnW, nnnM or nnnY, e.g. 045Y); "
            "fix the header or leave it empty"
        )
    return f"{int(match.group(1)) / AGE_UNITS[match.group(2)]:.4g}"


def dicom_fields(manifest: dict[str, Any], columns: tuple[str, ...]) -> dict[str, str]:
    """Column -> DICOM keyword for a fused bundle: its routing block's ``clinical_from_dicom``, else the defaults."""
    from pydicom.datadict import keyword_dict

    declared = manifest.get("routing", {}).get("clinical_from_dicom", {})
    fields, unknown = {}, []
    for column in columns:
        keyword = declared.get(column) or DEFAULT_FIELDS.get(re.sub(r"[^a-z]", "", column.lower()))
        if keyword is None:
            unknown.append(column)
        elif keyword not in keyword_dict:
            raise ConfigError(
                f"bundle.json routing.clinical_from_dicom: {keyword!r} (for {column!r}) is not a DICOM "
                "keyword; use one such as PatientAge, PatientSex, ViewPosition"
            )
        else:
            fields[column] = keyword
    if unknown:
        raise ConfigError(
            f"the bundle's clinical column(s) {', '.join(map(repr, unknown))} have no DICOM header field; "
            'add "clinical_from_dicom": {"COLUMN": "DicomKeyword"} to the routing block of its bundle.json, '
            "or give the values with --clinical CSV"
        )
    return fields


class DicomClinical:
    """Each image's clinical values read from its own DICOM header (same interface as ``ClinicalTable``)."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields

    @classmethod
    def for_bundle(cls, bundle: Any) -> DicomClinical:
        return cls(dicom_fields(bundle.manifest, tuple(bundle.tabular.columns)))

    def where(self, image: str) -> str:
        return f"DICOM header of {Path(image).name}"

    def row(self, image: str) -> dict[str, str]:
        import pydicom
        from pydicom.errors import InvalidDicomError

        try:
            header = pydicom.dcmread(image, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            raise DataError(
                f"{Path(image).name}: not a readable DICOM file ({type(exc).__name__}), so its clinical "
                "values cannot come from a header; give them with --clinical CSV"
            ) from None
        row = {}
        for column, keyword in self.fields.items():
            value = header.get(keyword, "")
            value = "" if value is None else str(value).strip()
            row[column] = dicom_age_years(value, self.where(image)) if keyword == "PatientAge" else value
        return row

    def features(self, encoder: Any, image: str) -> np.ndarray:
        return encoder.transform([self.row(image)], self.where(image))


def clinical_source(value: Path | None, bundle: Any) -> Any:
    """What ``--clinical`` names: ``dicom`` (each image's header) or a CSV; None when not given."""
    if value is None:
        return None
    if str(value).lower() == "dicom" and not value.is_file():
        if bundle.tabular is None:
            raise ConfigError(f"--clinical dicom: {bundle.path} takes no clinical values")
        return DicomClinical.for_bundle(bundle)

    return ClinicalTable(value)
