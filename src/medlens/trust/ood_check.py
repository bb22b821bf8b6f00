"""How well a classifier's out-of-distribution gate turns away images that are not what it was trained on.

:func:`reference_ood_sets` reads images no chest radiograph model has ever
seen from the real data folder (``$MEDLENS_DATA_DIR``): dermoscopy photographs,
blood smears, brain MRI and abdominal CT slices, H&E pathology tiles, and the
photographs that ship with scikit-image. A grey model gets colour images as
grey (the luminance), the hard case: a colour image is refused by the channel
check before the gate ever sees it. :func:`gate_rates` gives the share each set
has flagged; :func:`flag_rate` the share of any images.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.classify.predict import gate_flags
from medlens.errors import MedlensError, ModelError
from medlens.io import read_image
from medlens.preprocess.pipeline import fit_image

if TYPE_CHECKING:
    from medlens.classify.bundle import ClassifierBundle

log = logging.getLogger(__name__)

SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel", "horse",
    "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "text", "rocket",
    "motorcycle_left", "colorwheel", "checkerboard", "shepp_logan_phantom", "binary_blobs", "retina",
)  # fmt: skip


def reference_ood_sets(data_dir: str | Path, per_set: int = 100) -> dict[str, list[np.ndarray]]:
    """Channel-first float images per set (at most ``per_set`` each); sets whose folder is absent are left out."""
    root = Path(data_dir)
    sets: dict[str, list[np.ndarray]] = {}
    for name, files in (
        ("skin photographs (HAM10000)", sorted((root / "skin_ham10000_224" / "images").glob("*.jp*g"))),
        ("blood smears (BCCD)", sorted((root / "microscopy_bccd_detection" / "JPEGImages").glob("*.jp*g"))),
        ("abdominal CT slices (KiTS)", sorted((root / "dicom" / "ct_kits_slices").glob("*.dcm"))),
    ):
        if files:
            sets[name] = [read_image(f) for f in _spread(files, per_set)]
    hippocampus = sorted((root / "msd_hippocampus" / "imagesTr").glob("*.nii.gz"))
    if hippocampus:
        sets["brain MRI slices (MSD hippocampus)"] = [_mid_slice(f) for f in _spread(hippocampus, per_set)]
    slide = root / "pathology_wsi" / "cmu-1-small-region-dicom" / "level-0-frames-0-30.dcm"
    if slide.is_file():
        sets["H&E pathology tiles"] = _spread(_tiles(slide), per_set)
    sets["photographs (scikit-image data)"] = _skimage_photos()
    return sets


def _spread(items: list[Any], n: int) -> list[Any]:
    """At most ``n`` items spread evenly over the list (deterministic)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def _mid_slice(path: Path) -> np.ndarray:
    import nibabel as nib

    volume = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    return volume[:, :, volume.shape[2] // 2][None]


def _tiles(path: Path) -> list[np.ndarray]:
    """The frames of a DICOM whole-slide level (each a tile of the slide), channel-first."""
    import warnings

    import pydicom

    with warnings.catch_warnings():  # the JPEG frames' colour-space marker disagrees with the header: harmless here
        warnings.simplefilter("ignore", UserWarning)
        frames = pydicom.dcmread(path).pixel_array  # (frames, H, W, 3) uint8
    return [np.moveaxis(frame, -1, 0).astype(np.float32) for frame in frames]


def _skimage_photos() -> list[np.ndarray]:
    from skimage import data

    photos = []
    for name in SKIMAGE_PHOTOS:
        try:
            image = np.asarray(getattr(data, name)(), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - a few need a download; offline they are skipped, and said so
            log.info("scikit-image photograph %s skipped (%s)", name, type(exc).__name__)
            continue
        if image.max() <= 1.0:
            image = image * 255.0
        image = image[..., :3] if image.ndim == 3 else image
        photos.append(np.moveaxis(image, -1, 0) if image.ndim == 3 else image[None])
    return photos


def flag_rate(bundle: ClassifierBundle, images: Iterable[np.ndarray]) -> dict[str, Any]:
    """The share of ``images`` (channel-first, any size) the bundle's gate turns away, and how many were tried."""
    if bundle.gate is None:
        raise ModelError(f"{bundle.path} has no out-of-distribution gate; fit one with `medlens calibrate`")
    fitted = []
    for image in images:
        if image.shape[0] == 3 and bundle.preprocessing.channels == 1:
            image = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        try:
            fitted.append(fit_image(image, bundle.preprocessing, adapt=True)[0])
        except MedlensError as exc:  # e.g. a uniform image: refused before the gate, which counts as turned away
            log.info("image refused before the gate: %s", exc)
            fitted.append(None)
    ready = [f for f in fitted if f is not None]
    inside = gate_flags(bundle, np.stack(ready)) if ready else np.zeros(0, bool)
    flagged = int((~inside).sum()) + sum(f is None for f in fitted)
    return {"n": len(fitted), "flagged": flagged, "flag_rate": flagged / max(len(fitted), 1)}


def gate_rates(bundle: ClassifierBundle, sets: dict[str, list[np.ndarray]]) -> dict[str, dict[str, Any]]:
    """:func:`flag_rate` for each named set."""
    return {name: flag_rate(bundle, images) for name, images in sets.items()}
