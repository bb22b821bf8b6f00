"""PNG/JPEG/TIFF via Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medlens.errors import ImageReadError


def read_raster(path: Path) -> np.ndarray:
    """Read a raster image as float32 ``(C, H, W)`` in its stored range (0-255 for 8-bit)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I", "F", "L"):
                array = np.asarray(image, dtype=np.float32)[None]
            else:
                array = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({exc}); the file is corrupt or not an image") from exc
    if array.shape[0] == 3 and np.array_equal(array[0], array[1]) and np.array_equal(array[0], array[2]):
        array = array[:1]  # grey stored as RGB
    return np.ascontiguousarray(array)
