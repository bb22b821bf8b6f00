"""The preprocessing a model bundle declares, applied identically in training and prediction.

Training normalises batches with :func:`normalize_intensity`; prediction first
checks a file against the bundle's expected input with :func:`prepare_image`
(dimensions, channels, size, intensity range) and then calls the same
:func:`normalize_intensity`. An input that does not fit is refused unless the
caller explicitly asks to adapt it (``adapt=True``), and every adaptation is
reported back so it is never silent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from medlens.errors import InputMismatchError

if TYPE_CHECKING:
    from medlens.datasets.base import Split

ArrayT = TypeVar("ArrayT")
PER_IMAGE = "per-image"
INTENSITY_OPTIONS = ("fixed", PER_IMAGE)
PER_IMAGE_RANGE = (0.0, 1.0)
PER_IMAGE_PERCENTILES = (0.5, 99.5)
GREY_RGB_TOLERANCE = 8.0  # max channel difference (of 255) still treated as grey stored as RGB (JPEG chroma noise)


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects and how raw pixels become model input.

    ``input_range`` is the raw intensity range the model was trained on (0-255
    for 8-bit images); it is mapped to [0, 1] and then standardised with
    ``mean``/``std``. ``resize`` says the pipeline itself resizes any input to
    ``spatial_shape`` (declared at training time, e.g. for a folder dataset of
    mixed sizes); otherwise inputs must already have that shape.
    """

    spatial_shape: tuple[int, ...]
    channels: int = 1
    input_range: tuple[float, float] = (0.0, 255.0)
    mean: float = 0.5
    std: float = 0.5
    resize: bool = False
    modality: str = "unknown"
    window: tuple[float, float] | None = (
        None  # (center, width): CT/HU input clipped to this window instead of input_range
    )
    layout: str = field(default="channel-first (C, H, W) or (C, D, H, W)")
    intensity: str = "fixed"  # "per-image": each image rescaled by its own percentiles (any bit depth, any scanner)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Preprocessing":
        raw = dict(raw)
        raw["spatial_shape"] = tuple(raw["spatial_shape"])
        raw["input_range"] = tuple(raw["input_range"])
        if raw.get("window") is not None:
            raw["window"] = tuple(raw["window"])
        return cls(**raw)


def normalize_intensity(x: ArrayT, prep: Preprocessing) -> ArrayT:
    """Map raw intensities (numpy or torch, any shape) to standardised model input.

    With a ``window`` (CT in HU), values are windowed and clipped to [0, 1] the way
    a radiologist views them (:func:`medlens.preprocess.window.apply_window`); otherwise
    ``input_range`` is mapped linearly to [0, 1].
    """
    if prep.window is not None:
        center, width = prep.window
        scaled = ((x - (center - width / 2.0)) / width).clip(0.0, 1.0)  # type: ignore[operator, union-attr]
    else:
        low, high = prep.input_range
        scaled = (x - low) / (high - low)  # type: ignore[operator]
    return (scaled - prep.mean) / prep.std


def rescale_per_image(image: np.ndarray) -> np.ndarray:
    """An image's 0.5th-99.5th intensity percentiles mapped to [0, 1], clipped: 8-bit JPEG, 12-bit CR and 16-bit
    DX radiographs all become the same kind of input, whatever the detector's range or the window it was stored in."""
    low, high = np.percentile(image, PER_IMAGE_PERCENTILES)
    if high - low < 1e-6:
        raise InputMismatchError(
            f"the image is uniform (all pixels about {float(low):g}): there is nothing to read; check the file"
        )
    return ((image.astype(np.float32) - low) / (high - low)).clip(0.0, 1.0).astype(np.float32)


def resize_image(image: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Resize a channel-first image with area averaging (MONAI ``Resize``), keeping float32."""
    from monai.transforms import Resize

    if tuple(image.shape[1:]) == tuple(spatial_shape):
        return image
    resized = Resize(spatial_size=tuple(spatial_shape), mode="area")(image)
    return np.asarray(resized, dtype=np.float32)


def prepare_image(image: np.ndarray, prep: Preprocessing, adapt: bool = False) -> tuple[np.ndarray, list[str]]:
    """Check an image against the expected input and normalise it.

    Returns the model-ready array and the list of adaptations made (empty when
    the input fitted as it was). Raises InputMismatchError when it does not fit
    and ``adapt`` is False, saying what to do.
    """
    image, notes = fit_image(image, prep, adapt)
    return normalize_intensity(image, prep).astype(np.float32), notes


def fit_image(image: np.ndarray, prep: Preprocessing, adapt: bool = False) -> tuple[np.ndarray, list[str]]:
    """The checks (and, when allowed, adaptations) of :func:`prepare_image`, leaving raw intensities.

    This is what an exported ONNX graph takes: it does the normalisation itself.
    """
    notes: list[str] = []
    expected_dims = len(prep.spatial_shape)
    if image.ndim - 1 != expected_dims:
        raise InputMismatchError(
            f"model expects {expected_dims}D images of shape {_fmt(prep.spatial_shape)}, "
            f"got a {image.ndim - 1}D image of shape {_fmt(image.shape[1:])}"
        )
    image = _match_channels(image, prep.channels, notes)
    if tuple(image.shape[1:]) != tuple(prep.spatial_shape):
        if not (prep.resize or adapt):
            raise InputMismatchError(
                f"model expects images of {_fmt(prep.spatial_shape)} pixels, got {_fmt(image.shape[1:])}; "
                "pass --fit-input (adapt=True) to resize it, knowing the model was trained at its own size"
            )
        if not prep.resize:
            notes.append(f"resized {_fmt(image.shape[1:])}->{_fmt(prep.spatial_shape)}")
        image = resize_image(image, prep.spatial_shape)
    if prep.intensity == PER_IMAGE:
        return rescale_per_image(image), notes
    if prep.window is None:  # a window clips by design: HU outside it are expected, not a mismatch
        image = _match_range(image, prep, adapt, notes)
    return image.astype(np.float32), notes


def _match_channels(image: np.ndarray, channels: int, notes: list[str]) -> np.ndarray:
    have = image.shape[0]
    if have == channels:
        return image
    if have == 3 and channels == 1:
        spread = float(np.abs(image - image.mean(axis=0, keepdims=True)).max())
        if spread <= GREY_RGB_TOLERANCE:
            notes.append("grey stored as RGB averaged to one channel")
            return image.mean(axis=0, keepdims=True)
        raise InputMismatchError(
            f"model expects 1-channel (grey) images, got a colour image (channels differ by up to {spread:.0f}); "
            "convert it to greyscale if it really is a grey image"
        )
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=0)
    raise InputMismatchError(f"model expects {channels}-channel images, got {have} channels")


def _match_range(image: np.ndarray, prep: Preprocessing, adapt: bool, notes: list[str]) -> np.ndarray:
    low, high = prep.input_range
    span = high - low
    lo_v, hi_v = float(image.min()), float(image.max())
    if lo_v >= low - 1e-3 * span and hi_v <= high + 1e-3 * span:
        return image
    if not adapt:
        raise InputMismatchError(
            f"model expects intensities in [{low:g}, {high:g}], got [{lo_v:g}, {hi_v:g}] "
            "(e.g. a 12-bit or Hounsfield-unit image into an 8-bit model); pass --fit-input (adapt=True) "
            "to rescale min-max per image"
        )
    notes.append(f"intensity rescaled [{lo_v:g}, {hi_v:g}]->[{low:g}, {high:g}]")
    scale = (image - lo_v) / max(hi_v - lo_v, 1e-12)
    return (low + scale * span).astype(np.float32)


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


def normalized_inputs(split: Split, prep: Preprocessing) -> np.ndarray:
    """A whole split as model input (no augmentation): for validation and evaluation."""
    return normalize_intensity(split.images.astype(np.float32), prep)
