"""Image files to 8-bit RGB, every PIL mode read for what it holds (PIL's own convert("RGB")
clips a 16-bit image to white and drops alpha wherever it falls):

    1, L, P, RGB, YCbCr, CMYK, HSV   PIL's conversion (a palette with transparency via RGBA)
    I;16*, I                         16-bit grey scaled to 8 bits (I: PIL's mode for 16-bit
                                     PNG and TIFF; values outside 0..65535 are refused)
    F                                floats in [0, 1] scaled to 0..255 (any other range refused)
    LA, PA, RGBA, RGBa, La           composited over black: a transparent pixel is black,
                                     whatever colour it hides
Anything else (LAB, multi-channel TIFF) is refused with the file named.
"""
from __future__ import annotations

import numpy as np

from bench.data import DataError

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")


def _grey(values: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def to_rgb(image, path, exif: bool = False):
    """`image` (an opened PIL image read from `path`) as an 8-bit RGB PIL image; `exif`: apply
    the file's EXIF orientation (a phone photo stored sideways)."""
    from PIL import Image, ImageOps

    if exif:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(f"cannot read image {path}: 32-bit integer pixels from "
                            f"{values.min()} to {values.max()}, not 16-bit (0..65535); save it "
                            f"as 8- or 16-bit")
        return _grey(values / 257.0).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0
                                and values.max() <= 1):
            raise DataError(f"cannot read image {path}: float pixels from {np.nanmin(values):g} "
                            f"to {np.nanmax(values):g}; float images must lie in [0, 1] (or "
                            f"save it as 8- or 16-bit)")
        return _grey(values * 255.0).convert("RGB")
    if mode in _ALPHA:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise DataError(f"cannot read image {path}: PIL mode {mode} has no RGB conversion ({e}); "
                        f"save it as RGB or greyscale") from e
