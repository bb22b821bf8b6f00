"""DICOM files to physical pixel values, through pydicom and its decoder plugins.

Decoding is pydicom's job: GDCM (JPEG baseline/extended/lossless, JPEG-LS),
pylibjpeg-openjpeg (JPEG 2000) and pylibjpeg-rle (RLE) are installed as plugins;
pylibjpeg-libjpeg is left out on purpose because it is GPL-3.0 and medlens is
Apache-2.0. pydicom already masks the unused high bits (BitsStored) and sign-extends
signed data; this module adds the modality LUT (Hounsfield units for CT), per-frame
rescale of enhanced objects, MONOCHROME1 inversion, and errors that name the file.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import _get_jpg_parameters  # the JPEG SOF parser pydicom's own decoders use
from pydicom.tag import Tag

from medlens.errors import DicomError, InputMismatchError, MedlensError, UnsupportedTransferSyntaxError
from medlens.io.dicom_guard import (
    DEFAULT_LIMITS,
    J2K_SYNTAXES,
    DicomLimits,
    check_deflate_bomb,
    check_j2k_codestream,
    check_pixel_budget,
)

F = TypeVar("F", bound=Callable[..., Any])
RADIOGRAPHY = {"CR", "DX", "DR"}  # one kind of image under several Modality codes
NUMERIC_TAGS = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "SpacingBetweenSlices",
    "SliceThickness",
    "DoseGridScaling",
    "TriggerTime",
)
JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
}
JPEG_LS_SYNTAXES = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
_HAS_GDCM = importlib.util.find_spec("gdcm") is not None
USED_TAGS = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SeriesInstanceUID",
    "EchoNumbers",
    "ImageType",
    "InstanceNumber",
    "PhotometricInterpretation",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)  # read for every slice; the rest only for a series' first
_USED_TAG_NUMBERS = tuple(Tag(k) for k in USED_TAGS)
_NUMERIC_TAG_NUMBERS = tuple((k, Tag(k)) for k in NUMERIC_TAGS)
_ROWS, _COLUMNS = Tag("Rows"), Tag("Columns")
INTEGER_TAGS = {
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
}
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def header_errors(func: F) -> F:
    """pydicom converts values lazily, so any header access may raise on a corrupt value: such an error becomes
    a DicomError naming the file (the first Path argument), never an exception outside medlens's tree."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MedlensError:
            raise
        except Exception as exc:
            path = next((a for a in (*args, *kwargs.values()) if isinstance(a, Path)), "DICOM file")
            raise DicomError(f"{path}: corrupt header value ({_short(exc)}); the file is damaged") from exc

    return wrapper  # type: ignore[return-value]


def read_dataset(path: Path, pixels: bool = True) -> Dataset:
    """Parse one file; ``pixels=False`` defers the pixel data (read on first access) for fast header scans."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DicomError(f"{path}: cannot open ({exc.strerror}); check the path and permissions") from exc
    if size == 0:
        raise DicomError(f"{path}: empty file (0 bytes); the copy or download was interrupted")
    check_deflate_bomb(path, str(path))
    defer = None if pixels else 4096
    try:
        try:
            ds = pydicom.dcmread(path, defer_size=defer)
        except InvalidDicomError:
            if not _starts_like_raw_dataset(path):
                raise
            ds = pydicom.dcmread(path, defer_size=defer, force=True)  # legacy file without preamble and meta header
            if "SOPClassUID" not in ds and "Rows" not in ds:
                raise
        present = ds._dict  # pydicom converts values lazily: make a corrupt one we use fail here, naming the file
        for tag in _USED_TAG_NUMBERS:
            if tag in present:
                ds[tag]
        return ds
    except InvalidDicomError as exc:
        raise DicomError(f"{path}: not a DICOM file (no 'DICM' marker after the 128-byte preamble)") from exc
    except Exception as exc:  # pydicom raises many types on malformed input (struct, Unicode, Value, EOF...)
        raise DicomError(f"{path}: unreadable DICOM header, the file is truncated or corrupt ({_short(exc)})") from exc


@header_errors
def decode_frames(ds: Dataset, path: Path, header_checked: bool = False) -> np.ndarray:
    """Decode the pixel data as float32 ``(frames, rows, cols)`` (``(..., 3)`` for colour) in physical units.

    CT comes out in Hounsfield units; per-frame rescale of enhanced objects is honoured.
    """
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise DicomError(
            f"{path}: no pixel data (SOP class {_sop_name(ds)}); it is not an image, e.g. a report or "
            "presentation state: leave it out"
        )
    if not header_checked:  # the series reader checked it while scanning headers
        check_numeric_tags(ds, path)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if str(syntax) in JPEG_SYNTAXES:
        _check_jpeg_frame_header(ds, path)
        if str(syntax) in JPEG_LS_SYNTAXES and _HAS_GDCM:  # CharLS (pyjpegls) spends seconds on a corrupt stream that
            ds.pixel_array_options(decoding_plugin="gdcm")  # GDCM refuses in a millisecond: no slow fallback
    elif str(syntax) in J2K_SYNTAXES:
        check_j2k_codestream(_first_frame(ds, path), ds, str(path))
    try:
        stored = ds.pixel_array
    except NotImplementedError as exc:
        raise _no_decoder(path, syntax, exc) from exc
    except RuntimeError as exc:
        if "exceptions were raised by all" in str(exc) and "support" not in str(exc):  # each decoder refused the data
            raise DicomError(
                f"{path}: cannot decode pixel data, the compressed stream is corrupt ({_decoder_detail(exc)})"
            ) from exc
        if "plugin" in str(exc) or "decoder" in str(exc).lower():
            raise _no_decoder(path, syntax, exc) from exc
        raise DicomError(f"{path}: cannot decode pixel data ({_short(exc)})") from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # truncated data, inconsistent Rows/Columns/Bits, bad fragments; Rust decoders
        # (pylibjpeg-rle) signal corrupt input with a PanicException, which is not an Exception subclass
        raise DicomError(f"{path}: cannot decode pixel data, the file is truncated or corrupt ({_short(exc)})") from exc
    frames = int(ds.get("NumberOfFrames") or 1)
    colour = int(ds.get("SamplesPerPixel", 1)) > 1
    stored = stored.reshape((frames,) + stored.shape[-3 if colour else -2 :])
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":  # indices into a colour table: show the colours
        return np.asarray(apply_color_lut(stored, ds), dtype=np.float32)
    values = _apply_rescale(stored, ds)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        low, high = stored_range(ds)
        values = (low + high) - values if low is not None else values.max() + values.min() - values
    # integers times a finite slope stay finite unless the slope is absurd; float pixel data is checked always
    if (
        stored.dtype.kind == "f"
        or abs(float(ds.get("RescaleSlope", 1) or 1)) > 1e20
        or "PerFrameFunctionalGroupsSequence" in ds
    ) and not np.isfinite(values).all():
        raise DicomError(f"{path}: pixel data contains NaN or inf after rescale; the file is corrupt")
    return values.astype(np.float32, copy=False)


def _check_jpeg_frame_header(ds: Dataset, path: Path) -> None:
    """Compare the first JPEG frame's SOF header with Rows/Columns/SamplesPerPixel/BitsAllocated before decoding.

    GDCM aborts the whole process (an uncaught C++ exception) when they disagree,
    which a corrupt file must not be able to do to a batch job or a server.
    """
    try:
        params = _get_jpg_parameters(_first_frame(ds, path))
    except DicomError:
        raise
    except Exception as exc:  # a marker segment cut short
        raise DicomError(f"{path}: compressed pixel data is damaged ({str(exc)[:120]}); the file is corrupt") from exc
    found = (params.get("height"), params.get("width"), params.get("components"))
    expected = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1)))
    if (
        found != expected
        or int(params.get("precision", 0)) > int(ds.get("BitsAllocated", 0))
        or not params.get("precision")
    ):
        raise DicomError(
            f"{path}: the JPEG stream is {found[0]}x{found[1]}, {found[2]} component(s), {params.get('precision')} bits "
            f"but the header says {expected[0]}x{expected[1]}, {expected[2]} sample(s), {ds.get('BitsAllocated')} bits "
            "allocated; the file is corrupt"
        )


def _first_frame(ds: Dataset, path: Path) -> bytes:
    try:
        return next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1)))
    except Exception as exc:  # broken encapsulation: fragment lengths, missing items
        raise DicomError(f"{path}: compressed pixel data is damaged ({str(exc)[:120]}); the file is corrupt") from exc


@header_errors
def check_numeric_tags(
    ds: Dataset, path: Path, limits: DicomLimits = DEFAULT_LIMITS, file_bytes: int | None = None
) -> None:
    """pydicom keeps an invalid number as text: refuse it here, naming the tag, so later arithmetic can trust it."""
    for keyword, tag in _NUMERIC_TAG_NUMBERS:
        element = ds.get(tag)
        value = None if element is None else element.value
        if value is None or value == "":
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if (
            keyword in INTEGER_TAGS
            and np.isfinite(number)
            and (not float(number).is_integer() or number < 0 or "." in str(value))
        ):
            number = float("nan")
        if not np.isfinite(number):
            raise DicomError(f"{path}: {keyword} holds {str(value)[:40]!r}, not a number; the header is corrupt")
    if ds.get(_ROWS) is None or ds.get(_COLUMNS) is None or not ds[_ROWS].value or not ds[_COLUMNS].value:
        raise DicomError(f"{path}: Rows/Columns missing or zero; the header is corrupt")
    check_pixel_budget(ds, str(path), file_bytes if file_bytes is not None else _file_bytes(path), limits)


def _file_bytes(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except (OSError, TypeError, AttributeError):
        return None


def stored_range(ds: Dataset) -> tuple[float | None, float | None]:
    """The physical range that BitsStored allows after rescale: MONOCHROME1 is inverted within it, not within the data."""
    if "ModalityLUTSequence" in ds or "BitsStored" not in ds:
        return None, None
    bits = int(ds.BitsStored)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.get("PixelRepresentation", 0) == 1 else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    return low * slope + intercept, high * slope + intercept


def _starts_like_raw_dataset(path: Path) -> bool:
    """A dataset written without preamble starts with a group 0002 or 0008 tag (either byte order)."""
    with path.open("rb") as f:
        head = f.read(4)
    return head[:2] in (b"\x02\x00", b"\x00\x02", b"\x08\x00", b"\x00\x08")


def has_dicom_marker(path: Path) -> bool:
    """The 'DICM' marker after the 128-byte preamble: how a suffix-less file is recognised as DICOM."""
    try:
        with path.open("rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


@header_errors
def read_dicom(path: Path, expected_modality: str | None = None) -> np.ndarray:
    """Read one DICOM image as float32 ``(C, H, W)`` or ``(1, frames, H, W)`` for a classifier.

    With ``expected_modality`` (a model's), a contradicting Modality tag (a CT
    slice into a chest X-ray model) is refused before the pixels are decoded.
    """
    ds = read_dataset(path)
    check_modality(path, str(ds.get("Modality", "")), expected_modality)
    frames = decode_frames(ds, path)
    if frames.ndim == 4:  # colour: (frames, H, W, 3) -> (3, H, W) for the first frame
        return np.ascontiguousarray(np.moveaxis(frames[0], -1, 0))
    return frames[:1] if frames.shape[0] == 1 else frames[None]


def check_modality(path: Path, found: str, expected: str | None) -> None:
    if not found or expected in (None, "", "unknown") or found == expected or {found, expected} <= RADIOGRAPHY:
        return
    raise InputMismatchError(
        f"{path.name}: DICOM Modality is {found}, the model was trained on {expected} images; "
        "use a model trained for this modality"
    )


def _apply_rescale(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Top-level modality LUT or rescale, or the per-frame Pixel Value Transformation of enhanced objects.

    Arithmetic is float32 (exact for integers up to 2^24, which covers 16-bit
    data and Hounsfield units), so no float64 copy of a large series is made.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    elif per_frame and "RescaleSlope" not in ds:
        shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
        values = stored.astype(np.float32)
        for i in range(values.shape[0]):
            slope, intercept = _frame_rescale(per_frame[i] if i < len(per_frame) else None, shared)
            _rescale_inplace(values[i], slope, intercept)
    else:
        values = stored.astype(np.float32)
        _rescale_inplace(values, float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
    if ds.get("Modality") == "RTDOSE" and ds.get("DoseGridScaling"):
        values = values * float(ds.DoseGridScaling)  # stored integers to dose in DoseUnits (Gy)
    return values


def _rescale_inplace(values: np.ndarray, slope: float, intercept: float) -> None:
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)


def _frame_rescale(frame_group: Any, shared: Any) -> tuple[float, float]:
    for group in (frame_group, shared):
        item = group.get("PixelValueTransformationSequence") if group is not None else None
        if item:
            return float(item[0].get("RescaleSlope", 1) or 1), float(item[0].get("RescaleIntercept", 0) or 0)
    return 1.0, 0.0


def _no_decoder(path: Path, syntax: Any, exc: Exception) -> UnsupportedTransferSyntaxError:
    name = getattr(syntax, "name", None) or str(syntax)
    detail = " ".join(line.strip() for line in str(exc).splitlines()[1:4]) or _short(exc)
    hint = (
        "12-bit JPEG Extended needs pylibjpeg-libjpeg, left out of medlens because it is GPL-3.0: install it "
        "yourself if its licence suits you, or"
        if "12-bit" in str(exc)
        else "medlens decodes uncompressed, RLE, JPEG baseline/lossless, JPEG-LS and JPEG 2000:"
    )
    return UnsupportedTransferSyntaxError(
        f"{path}: pixel data is compressed as {name} ({syntax}) and no installed decoder handles it; {hint} "
        f"convert the file to an uncompressed syntax (e.g. `gdcmconv --raw IN OUT`) [{detail[:300]}]"
    )


def _decoder_detail(exc: Exception) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines()[1:3])[:200] or _short(exc)


def _sop_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", None) or str(uid or "unknown")


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
