"""Heatmaps a reader can look at: PNG overlays, and a DICOM Secondary Capture beside the source series.

2D: the image and the image with the heatmap blended over it, side by side.
3D: the three orthogonal planes through the heatmap's peak. The Secondary
Capture (highdicom) copies the patient and study from the source file, so a
PACS viewer files it in the same study as a new series, marked as derived and
not for diagnosis.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medlens import __version__
from medlens.errors import DataError
from medlens.io.dicom import read_dicom

ALPHA = 0.45


def _grey(plane: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(plane, (1, 99))
    return np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1)


def blend(plane: np.ndarray, heat: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image: the grey plane with the heatmap (jet colours) blended where it is high.

    The colour map is looked up in a 256-entry table, so a full-size radiograph blends in tens of milliseconds.
    """
    from matplotlib import colormaps

    level = np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8)
    table = colormaps["jet"](np.linspace(0, 1, 256))[:, :3].astype(np.float32)
    weight = (alpha * np.linspace(0, 1, 256, dtype=np.float32))[level][..., None]
    grey = _grey(plane).astype(np.float32)[..., None]
    return np.round((grey * (1 - weight) + table[level] * weight) * 255).astype(np.uint8)


DISPLAY_MAX = 768  # pixels: the overview PNG shows a full-size film at this size at most (the SC keeps it all)


def _for_display(plane: np.ndarray, heat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both planes shrunk by one whole factor so the longer side is at most DISPLAY_MAX (aspect ratio kept)."""
    step = int(np.ceil(max(plane.shape) / DISPLAY_MAX))
    return (plane[::step, ::step], heat[::step, ::step]) if step > 1 else (plane, heat)


def resize_map(heat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A heatmap on the model's grid -> the source image's grid (linear interpolation)."""
    from skimage.transform import resize

    return np.clip(resize(heat, shape, order=1, preserve_range=True, anti_aliasing=False), 0, 1)


def planes(image: np.ndarray, heat: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image plane, heat plane): the image itself in 2D; three planes through the peak in 3D."""
    grey = image.mean(axis=0)  # channels -> one grey image
    if heat.ndim == 2:
        return [("", grey, heat)]
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return [
        (f"axis {a} slice {peak[a]}", np.take(grey, peak[a], axis=a), np.take(heat, peak[a], axis=a)) for a in range(3)
    ]


def write_overlay_png(image: np.ndarray, heat: np.ndarray, path: Path, title: str) -> Path:
    """Image (C, *spatial) and heat (*spatial, the same grid) -> a PNG with the plain and the overlaid view(s), and a
    colour bar for the heatmap's scale."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    views = planes(image, heat)
    fig, axes = plt.subplots(len(views), 2, figsize=(6, 3 * len(views)), squeeze=False, layout="constrained")
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    for row, (name, full, hfull) in zip(axes, views):
        plane, hplane = _for_display(full, hfull)
        row[0].imshow(_grey(plane), cmap="gray")
        row[1].imshow(blend(plane, hplane))
        row[0].set_title(name or f"image ({full.shape[1]} x {full.shape[0]} px)", fontsize=8)
        row[1].set_title("heatmap", fontsize=8)
        for ax in row:
            ax.axis("off")
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps["jet"]), ax=row[1], fraction=0.046, pad=0.02)
        bar.set_label("relevance (0-1)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_secondary_capture(source: Path, heat: np.ndarray, path: Path, description: str) -> Path:
    """The source DICOM image with the heatmap overlaid, as an RGB Secondary Capture in the same study."""
    import pydicom

    ref = pydicom.dcmread(source, stop_before_pixels=True)
    pixels = read_dicom(source)  # (C, H, W) display-ready grey (MONOCHROME1 inverted by the reader)
    if pixels.ndim != 3:
        raise DataError(f"{source}: a Secondary Capture overlay needs a single 2D image, got shape {pixels.shape}")
    rgb = blend(pixels.mean(axis=0), resize_map(heat, pixels.shape[1:]))
    with warnings.catch_warnings():  # highdicom re-checks the source's person names; their format is not ours to fix
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        sc = _secondary_capture(ref, rgb)
    spacing = ref.get("PixelSpacing") or ref.get("ImagerPixelSpacing")
    if spacing is not None and all(float(v) > 0 for v in spacing):  # the source's grid, hence its spacing
        sc.PixelSpacing = [float(v) for v in spacing]
    sc.SeriesDescription = description[:64]
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = f"medlens {__version__}: {description}; research use, not for diagnosis"[:1024]
    sc.BurnedInAnnotation = "NO"
    path.parent.mkdir(parents=True, exist_ok=True)
    sc.save_as(path)
    return path


def _secondary_capture(ref: Any, rgb: np.ndarray) -> Any:
    import highdicom as hd

    orientation = tuple(ref.get("PatientOrientation", None) or ("L", "F"))[:2]
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=int(ref.get("SeriesNumber", 0) or 0) + 900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medlens",
        patient_orientation=orientation,
    )
