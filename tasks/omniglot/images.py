"""The single preprocessing of an Omniglot drawing, shared by the cache and the one-shot runs.

Training images come from the cache and evaluation images from run folders; both pass
through these two functions, so a model never sees differently processed pixels at test time.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from metaorch.tasks.omniglot.errors import DatasetError

SIZE = 28
PAPER = 255  # the background's uint8 gray (ink is 0)


def preprocess_png(source: bytes | str | os.PathLike | BinaryIO, name: str | None = None) -> np.ndarray:
    """A drawing as uint8 [28, 28] gray (0 ink, 255 paper), resized 105 -> 28 with Lanczos.

    The PNGs are 1-bit; PIL silently resizes mode "1" with nearest neighbour whatever filter
    is asked for, so the image is converted to 8-bit gray first to get a real Lanczos resize.
    ``name`` is what an error message calls the image (defaults to the path, if one is given).
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        with Image.open(source) as image:
            gray = image.convert("L").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            return np.array(gray, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read PNG {name or '<bytes>'}: expected a 105x105 Omniglot drawing ({err})") from err


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 gray -> float32 with ink 1.0 and paper 0.0 (1 - gray/255), any leading shape."""
    return np.float32(1.0) - np.asarray(images, dtype=np.float32) / np.float32(255.0)
