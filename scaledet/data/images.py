"""Reading image files into the sample format: float ``Tensor[3,H,W]`` RGB in ``[0, 1]``.

Every file is EXIF-transposed (boxes are annotated on the image as displayed) and
converted to 8-bit-equivalent RGB: grayscale, palette, RGBA/LA (alpha dropped), CMYK and
16-bit grayscale (scaled by 1/65535) are all accepted. 32-bit grayscale (float TIFFs, PIL mode ``F``;
signed integers, mode ``I``) have no fixed range: values already in ``[0, 1]`` (``I``: ``[0, 65535]``,
scaled by 1/65535) are kept, any other image is stretched from its own finite minimum..maximum to
``[0, 1]`` with a :class:`~scaledet.data.report.DataWarning` (once per process) rather than clipped, which
turned e.g. a reflectance or elevation image into a blank one. NaN and infinite pixels become 0.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

#: PIL modes holding more than 8 bits per pixel, with the value that maps to 1.0
_WIDE_MODES: dict[str, float] = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}
_EXIF_ORIENTATION = 0x0112
#: errors PIL raises for missing, truncated or non-image files
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)



def _readable_suffixes() -> frozenset[str]:
    """The file suffixes of every format PIL can open (.jpg, .png, .tif, .pnm, .jfif, .tga, ...), but MPEG's:
    PIL only identifies those; they are videos."""
    Image.init()
    return frozenset(suffix for suffix, kind in Image.registered_extensions().items()
                     if kind in Image.OPEN) - {".mpg", ".mpeg"}


#: what a folder of images is taken to hold (predict, YOLO image folders, calibration folders)
IMAGE_SUFFIXES = _readable_suffixes()


@dataclass(frozen=True)
class ImageInfo:
    """What the file header says: displayed size (after EXIF rotation), mode, orientation."""

    width: int
    height: int
    mode: str
    orientation: int


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder``, sorted, following symbolic links to folders (``Path.rglob`` does not
    on Python < 3.13: images in a linked sub-folder were left out) but visiting each real folder once
    (a link cycle ends); hidden names (``.cache``, macOS ``._x.jpg``) are skipped."""
    found, seen = [], set()
    for current, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        found.extend(Path(current) / name for name in files if not name.startswith("."))
    return sorted(found)


def probe_image(path: Path) -> ImageInfo:
    """Read only the header (and the tail for JPEG/PNG) of ``path``.

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: not an image, or a JPEG/PNG whose end marker is missing (truncated file).
    """
    with Image.open(path) as image:
        width, height = image.size
        mode, fmt = image.mode, image.format
        # PIL's getexif() decodes a whole PNG to look for an eXIf chunk: only when there is one
        has_exif = fmt != "PNG" or "exif" in image.info or _png_has_exif(path)
        orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1) if has_exif else 1
        # Pillow reports a rotated TIFF's displayed size already (its stored one is ``_tile_size``) and turns
        # the pixels as it loads them
        displayed = getattr(image, "_tile_size", image.size) != image.size
    if orientation in (5, 6, 7, 8) and not displayed:  # rotated by 90 degrees: displayed size is transposed
        width, height = height, width
    _check_tail(path, fmt)
    return ImageInfo(width=width, height=height, mode=mode, orientation=orientation)


def _png_has_exif(path: Path) -> bool:
    """Whether a PNG file has an ``eXIf`` chunk, from the chunk headers alone (no decompression)."""
    with open(path, "rb") as handle:
        handle.seek(8)  # the signature
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return False
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"eXIf":
                return True
            if kind == b"IEND":
                return False
            handle.seek(length + 4, os.SEEK_CUR)  # the data and its CRC


def _check_tail(path: Path, fmt: str | None) -> None:
    """Cheap truncation check: JPEG must end with EOI (FFD9), PNG with an IEND chunk."""
    markers = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}
    if fmt not in markers:
        return
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - 4096))
        tail = handle.read()
    if markers[fmt] not in tail:
        raise OSError(f"{fmt} file is truncated (no end marker)")


def needs_conversion(mode: str) -> bool:
    """True when ``mode`` is not plain 8-bit RGB (the dataset notes such files in its report)."""
    return mode != "RGB"


_warned_stretched = False


def _in_unit_range(values: np.ndarray, mode: str, source: str | Path) -> np.ndarray:
    """``values`` (float32) stretched from their finite min..max to [0, 1] when any lies outside; NaN / inf -> 0."""
    global _warned_stretched
    finite = np.isfinite(values)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    if low < 0.0 or high > 1.0:
        if not _warned_stretched:
            from scaledet.data.report import DataWarning

            full = "[0, 1]" if mode == "F" else "[0, 65535]"
            warnings.warn(f"{source}: mode {mode} values span [{low:g}, {high:g}], outside {full}: it and every such "
                          "image are stretched from their own minimum..maximum to [0, 1] (not clipped); convert them "
                          "to 8 or 16 bits with one fixed range to choose the scaling yourself (warned once)",
                          DataWarning, stacklevel=2)
            _warned_stretched = True
        values = (values - np.float32(low)) / np.float32(high - low) if high > low else np.zeros_like(values)
    values = values if finite.all() else np.where(finite, values, np.float32(0.0))
    return values.astype(np.float32, copy=False)


def load_image(path: Path, shrink: int = 1) -> torch.Tensor:
    """Decode ``path`` into float ``Tensor[3,H,W]`` RGB in ``[0, 1]``, EXIF-transposed: at full size,
    or ``shrink`` (a power of two, :func:`shrink_factor`) times smaller on each side.

    Shrinking happens while decoding where the format allows: JPEGs are decoded at 1/2, 1/4 or 1/8
    scale from their DCT coefficients (PIL's ``draft``; a 12-megapixel photo decodes several times
    faster), the rest of the factor (and other formats) by averaging ``f x f`` blocks. Sides round up
    (``ceil(w / f)``): map boxes by the returned size, not by ``shrink``. Palette and 16-bit images,
    which PIL cannot average in their mode, are converted first (to RGB / 32-bit, values kept).

    Raises:
        OSError (or another of :data:`IMAGE_ERRORS`): missing, truncated or unreadable file.
    """
    with Image.open(path) as image:
        full_width = image.width
        if shrink > 1 and image.format in ("JPEG", "MPO"):
            image.draft(image.mode, (math.ceil(image.width / shrink), math.ceil(image.height / shrink)))
        image.load()
        left = shrink // max(1, round(full_width / image.width))  # what the JPEG decoder has not shrunk
        if left > 1:
            image = _reducible(image).reduce(left)
        image = ImageOps.exif_transpose(image)
        return pil_to_float(image, path)


#: the PIL modes ``Image.reduce`` averages in
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F"})


def _reducible(image: Image.Image) -> Image.Image:
    """``image`` in a mode ``Image.reduce`` takes, its values kept: 16-bit as 32-bit integers, the rest RGB."""
    if image.mode in _REDUCIBLE_MODES:
        return image
    return image.convert("I") if image.mode.startswith("I;16") else image.convert("RGB")


def shrink_factor(scale: float) -> int:
    """The largest power of two ``f`` with ``f * scale <= 1``: how many times smaller an image that a
    pipeline resizes by at most ``scale`` can be decoded and still be only shrunk by the resize (1 from
    ``scale`` 0.5 up). E.g. a 3024x4032 photo fitted into 768x1024 (scale 0.254): 2; into 384x512: 4."""
    factor = 1
    while factor * 2 * scale <= 1.0:
        factor *= 2
    return factor


def pil_to_float(image: Image.Image, source: str | Path = "an image") -> torch.Tensor:
    """Any PIL image -> float ``Tensor[3,H,W]`` RGB in ``[0, 1]`` (``source`` names it in a warning;
    32-bit grayscale: see the module docstring)."""
    if image.mode in _WIDE_MODES or image.mode == "F":
        array = np.asarray(image, dtype=np.float32) / np.float32(_WIDE_MODES.get(image.mode, 1.0))
        if image.mode in ("F", "I"):  # 32-bit: any range (16-bit modes are in [0, 1] once scaled)
            array = _in_unit_range(array, image.mode, source)
        gray = torch.from_numpy(array)
        return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
