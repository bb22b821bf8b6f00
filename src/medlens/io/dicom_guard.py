"""Bounds on untrusted DICOM before any costly or native work: what a header may ask the reader to do.

A header is data a stranger wrote. Three things in it can turn a small file
into a large cost or a dead process, and each is checked here before pydicom
or a decoder is asked to act on it:

- a *deflated* dataset (transfer syntax 1.2.840.10008.1.2.1.99) is inflated by
  pydicom in one call, so a 1.5 MB file can ask for gigabytes: its inflated
  size is measured first, streaming, in 1 MiB pieces;
- ``NumberOfFrames x Rows x Columns x SamplesPerPixel x BitsAllocated`` is the
  pixel data the reader will allocate and loop over: it must fit a stated
  limit, and uncompressed pixel data must fit in the file that claims it;
- compressed frames are decoded by native libraries (GDCM aborts the whole
  process on a stream that disagrees with the header): the JPEG 2000
  codestream's SIZ marker must agree with Rows, Columns and SamplesPerPixel.

The limits are a :class:`DicomLimits`; ``DEFAULT_LIMITS`` suits radiology
(a 4 GiB enhanced CT or a gigapixel slide level is refused: read it with a
whole-slide reader instead). The service passes its own, smaller limits.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble  # the file-meta parser dcmread itself uses

from medlens.errors import DicomError

DEFLATED = "1.2.840.10008.1.2.1.99"
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", DEFLATED}
J2K_SYNTAXES = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
_PIECE = 1 << 20


@dataclass(frozen=True)
class DicomLimits:
    """What one DICOM object may ask of the reader: inflated dataset bytes and decoded pixel bytes."""

    max_inflated_bytes: int = 1 << 30
    max_pixel_bytes: int = 4 << 30


DEFAULT_LIMITS = DicomLimits()


def check_deflate_bomb(source: bytes | Path, where: str, limits: DicomLimits = DEFAULT_LIMITS) -> None:
    """Refuse a deflated dataset that inflates past ``limits.max_inflated_bytes``, measured without keeping it.

    Anything that is not a deflated Part 10 file passes (the parser then says what is wrong with it).
    """
    with BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb") as fp:
        start = _deflated_body_offset(fp)
        if start is None:
            return
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while (piece := fp.read(_PIECE)) and not inflater.eof:
            while piece and not inflater.eof:
                try:
                    out = inflater.decompress(piece, _PIECE)
                except zlib.error as exc:
                    raise DicomError(f"{where}: the deflated dataset is corrupt ({exc}); the file is damaged") from exc
                if not out and inflater.unconsumed_tail == piece:  # no progress: leave the rest to the parser
                    return
                total += len(out)
                piece = inflater.unconsumed_tail
                if total > limits.max_inflated_bytes:
                    raise DicomError(
                        f"{where}: the deflated dataset inflates to more than {limits.max_inflated_bytes / 2**20:.0f} MiB "
                        "(the stated limit); it is a decompression bomb or too large to read: send it uncompressed"
                    )


def _deflated_body_offset(fp: BinaryIO) -> int | None:
    try:
        if read_preamble(fp, force=False) is None:
            return None
        meta = _read_file_meta_info(fp)
        deflated = str(meta.get("TransferSyntaxUID", "")) == DEFLATED
    except Exception:  # not a Part 10 file, or a broken meta group: the parser reports it with its own words
        return None
    return fp.tell() if deflated else None


def check_pixel_budget(ds: Dataset, where: str, file_bytes: int | None, limits: DicomLimits = DEFAULT_LIMITS) -> None:
    """Frames x rows x columns x samples x bits within the limit, and within the file for uncompressed data.

    Call after the numeric tags were checked to be non-negative integers.
    """
    frames, rows, columns = (int(ds.get(k) or d) for k, d in (("NumberOfFrames", 1), ("Rows", 0), ("Columns", 0)))
    samples, bits = int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 8)
    wanted = frames * rows * columns * samples * max(bits, 1) // 8
    shape = f"NumberOfFrames {frames} x Rows {rows} x Columns {columns} x SamplesPerPixel {samples} x {bits} bits"
    if wanted > limits.max_pixel_bytes:
        raise DicomError(
            f"{where}: the header describes {_size(wanted)} of pixel data ({shape}), over the limit of "
            f"{_size(limits.max_pixel_bytes)}; the header is corrupt, or the image is too large for this reader"
        )
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    if syntax in UNCOMPRESSED and syntax != DEFLATED and file_bytes is not None and wanted > file_bytes:
        raise DicomError(
            f"{where}: the header describes {_size(wanted)} of uncompressed pixel data ({shape}) but the "
            f"file holds {_size(file_bytes)}; the file is truncated or its header is corrupt"
        )
    if (
        syntax not in UNCOMPRESSED and file_bytes is not None and frames * 8 > file_bytes
    ):  # >= one 8-byte item per frame
        raise DicomError(
            f"{where}: NumberOfFrames {frames} cannot fit in a file of {file_bytes} bytes (each compressed "
            "frame needs at least one 8-byte fragment); the header is corrupt"
        )


def check_j2k_codestream(frame: bytes, ds: Dataset, where: str) -> None:
    """The first JPEG 2000 frame's SIZ marker must agree with the header before a native decoder sees it."""
    siz = _j2k_siz(frame)
    if siz is None:
        raise DicomError(
            f"{where}: the pixel data is not a JPEG 2000 codestream (no SOC/SIZ markers); the file is corrupt"
        )
    expected = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1)))
    if siz["shape"] != expected or siz["precision"] > int(ds.get("BitsAllocated", 0) or 0):
        found = siz["shape"]
        raise DicomError(
            f"{where}: the JPEG 2000 stream is {found[0]}x{found[1]}, {found[2]} component(s), {siz['precision']} bits but "
            f"the header says {expected[0]}x{expected[1]}, {expected[2]} sample(s), {ds.get('BitsAllocated')} bits "
            "allocated; the file is corrupt"
        )


def _j2k_siz(frame: bytes) -> dict[str, Any] | None:
    """Height, width, components and precision from the SIZ marker (ISO/IEC 15444-1 A.5.1); a JP2 wrapper is skipped."""
    offset = frame.find(b"\xff\x4f\xff\x51", 0, 4096)
    if offset < 0 or len(frame) < offset + 4 + 41:
        return None
    body = frame[offset + 4 :]
    x, y, x0, y0 = (int.from_bytes(body[i : i + 4], "big") for i in (4, 8, 12, 16))
    components = int.from_bytes(body[36:38], "big")
    if len(body) < 38 + 3 * components or components == 0:
        return None
    precision = max((body[38 + 3 * c] & 0x7F) + 1 for c in range(components))
    return {"shape": (y - y0, x - x0, components), "precision": precision}


def _size(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"
