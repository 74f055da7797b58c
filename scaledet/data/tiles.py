"""Large images as tiles: the tile grid, windowed reading of big files, and training on crops.

* :func:`tile_grid`: overlapping native-resolution windows covering an image (the last row and
  column snapped to the image edge, never padded past it).
* :func:`open_large_image`: an :class:`ImageSource` that reads windows of a file. Uncompressed
  TIFF (stripped), PPM and PGM files are memory-mapped and read window by window (memory stays
  bounded whatever the size); other formats are decoded once as 8-bit RGB (3 bytes a pixel, not a
  float copy) up to ``max_pixels``, with a one-line error naming the size and the limit beyond it.
* :class:`TileCropDataset`: a training set of native-resolution crops of a dataset's images,
  boxes clipped, boxes keeping less than ``min_visible`` of their area dropped, crops drawn
  around objects most of the time (``scaledet train --tile``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from scaledet.data.images import pil_to_float
from scaledet.errors import UserError

#: window as integer pixels ``(x1, y1, x2, y2)``, ``x2`` / ``y2`` exclusive
Window = tuple[int, int, int, int]


def tile_grid(height: int, width: int, tile: int, overlap: float = 0.2) -> Tensor:
    """Windows covering a ``height x width`` image with ``tile x tile`` tiles.

    Neighbouring tiles share ``overlap`` of a tile (the step is ``round(tile * (1 - overlap))``);
    the last row and column are moved back to end exactly at the image edge, so every tile lies
    inside the image. A side shorter than ``tile`` gets a single, shorter tile.

    Returns:
        int64 ``[T, 4]`` xyxy windows (``x2``/``y2`` exclusive), row by row.
    """
    ys, xs = _starts(height, tile, overlap), _starts(width, tile, overlap)
    tile_h, tile_w = min(tile, height), min(tile, width)
    return torch.tensor([[x, y, x + tile_w, y + tile_h] for y in ys for x in xs], dtype=torch.long).reshape(-1, 4)


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    step = max(1, round(tile * (1.0 - overlap)))
    return [*range(0, length - tile, step), length - tile]


class ImageSource(Protocol):
    """An image that can be read in windows: ``height``, ``width`` in pixels,
    ``read(window) -> float Tensor[3, h, w]`` RGB in [0, 1], and ``downscaled(longest_side) ->
    (float Tensor[3, h', w'], (sx, sy))`` with ``original_xy = downscaled_xy / (sx, sy)``."""

    height: int
    width: int

    def read(self, window: Window) -> Tensor: ...

    def downscaled(self, longest_side: int) -> tuple[Tensor, tuple[float, float]]: ...


class TensorImage:
    """An in-memory float ``Tensor[3, H, W]`` as an :class:`ImageSource` (windows are views)."""

    def __init__(self, image: Tensor) -> None:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be a float Tensor[3, H, W], got shape {tuple(image.shape)}")
        self.image = image
        self.height, self.width = int(image.shape[1]), int(image.shape[2])

    def read(self, window: Window) -> Tensor:
        x1, y1, x2, y2 = window
        return self.image[:, y1:y2, x1:x2]

    def downscaled(self, longest_side: int) -> tuple[Tensor, tuple[float, float]]:
        size = _fit(self.height, self.width, longest_side)
        if size == (self.height, self.width):
            return self.image, (1.0, 1.0)
        small = F.interpolate(self.image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        return small, (size[1] / self.width, size[0] / self.height)


def _fit(height: int, width: int, longest_side: int) -> tuple[int, int]:
    """``(h, w)`` with the longer side at most ``longest_side``, aspect kept (never upscaled)."""
    ratio = min(1.0, longest_side / max(height, width))
    return max(1, round(height * ratio)), max(1, round(width * ratio))


class ImageTooLargeError(UserError):
    """An image that cannot be read window by window and is over the decoding limit."""


def default_max_pixels() -> int | None:
    """PIL's decompression-bomb limit (the size at which ``Image.open`` raises), ``None`` when disabled."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


@contextlib.contextmanager
def _bomb_check_off() -> Iterator[None]:
    """PIL's decompression-bomb check suspended (we apply our own, clearer limit)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def open_large_image(path: str | Path, max_pixels: int | None = -1) -> ImageSource:
    """An :class:`ImageSource` for the image file ``path``.

    Uncompressed stripped TIFF, PPM and PGM files without EXIF rotation are memory-mapped: windows
    are read from disk, whatever the image size. Any other file is decoded once into 8-bit RGB
    (3 bytes a pixel) when it has at most ``max_pixels`` pixels (``-1``: PIL's decompression-bomb
    limit, :func:`default_max_pixels`; ``None``: no limit).

    Raises:
        ImageTooLargeError: a file to decode with more than ``max_pixels`` pixels (the message
            names the file, its size, the limit and the ways round it).
        OSError / PIL errors (:data:`scaledet.data.images.IMAGE_ERRORS`): unreadable file.
    """
    path = Path(path)
    limit = default_max_pixels() if max_pixels == -1 else max_pixels
    with _bomb_check_off(), Image.open(path) as image:
        strips = _raw_strips(image)
        if strips is not None:
            return MappedImage(path, image.height, image.width, 3 if image.mode == "RGB" else 1, strips)
        width, height = image.size
        if limit is not None and width * height > limit:
            whose = "PIL's decompression-bomb guard" if max_pixels == -1 else "the limit given"
            raise ImageTooLargeError(
                f"{path}: {width}x{height} image ({width * height / 1e6:.1f} Mpx) is over the limit of "
                f"{limit / 1e6:.1f} Mpx for decoding a whole {image.format} file ({whose}; "
                f"it needs {width * height * 3 / 2**20:,.1f} MiB as 8-bit RGB): raise it with --max-pixels "
                f"{width * height} (max_pixels=) if you trust the file, or save it as an uncompressed TIFF / "
                "PPM, which is read window by window")
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # a copy of a 100 Mpx image is 400 MB
        return DecodedImage(image, path)


def _raw_strips(image: Image.Image) -> list[tuple[int, int, int]] | None:
    """``[(y1, y2, byte offset), ...]`` when every tile of ``image`` is an uncompressed full-width
    strip of 8-bit RGB or L rows, top-down and unrotated (so it can be memory-mapped); else None."""
    if image.mode not in ("RGB", "L") or image.getexif().get(0x0112, 1) not in (None, 1) or not image.tile:
        return None
    strips = []
    channels = 3 if image.mode == "RGB" else 1
    for tile in image.tile:
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        rawmode, stride, orientation = (*args, 0, 1)[:3]
        x1, y1, x2, y2 = tile.extents
        if (tile.codec_name != "raw" or rawmode != image.mode or orientation != 1
                or stride not in (0, image.width * channels) or (x1, x2) != (0, image.width)):
            return None
        strips.append((y1, y2, tile.offset))
    return strips


class MappedImage:
    """An uncompressed image file read window by window through ``numpy.memmap`` (see
    :func:`open_large_image`); nothing but the requested window is held in memory."""

    def __init__(self, path: Path, height: int, width: int, channels: int, strips: list[tuple[int, int, int]]) -> None:
        self.path, self.height, self.width, self.channels, self.strips = path, height, width, channels, strips

    def _rows(self, y1: int, y2: int, x1: int = 0, x2: int | None = None) -> np.ndarray:
        """uint8 ``[y2 - y1, x2 - x1, C]`` pixels of the image (C: 3 for RGB, 1 for gray files); only
        that block is copied out of the file map."""
        parts = []
        for top, bottom, offset in self.strips:
            if bottom <= y1 or top >= y2:
                continue
            strip = np.memmap(self.path, np.uint8, "r", offset, (bottom - top, self.width, self.channels))
            parts.append(strip[max(y1, top) - top : min(y2, bottom) - top, x1:x2])
        return np.concatenate(parts)

    def read(self, window: Window) -> Tensor:
        x1, y1, x2, y2 = window
        return _uint8_to_float(self._rows(y1, y2, x1, x2))

    def downscaled(self, longest_side: int) -> tuple[Tensor, tuple[float, float]]:
        """The image reduced by a whole factor (box averages, PIL ``reduce``), read in bands of rows."""
        factor = _reduction(self.height, self.width, longest_side)
        band = factor * max(1, 1024 // factor)  # rows per read: a multiple of the factor, ~1024
        pieces = []
        for top in range(0, self.height, band):
            rows = self._rows(top, min(top + band, self.height))
            pieces.append(np.asarray(Image.fromarray(rows.squeeze(-1) if rows.shape[-1] == 1 else rows).reduce(factor)))
        small = np.concatenate(pieces)
        small = small[..., None] if small.ndim == 2 else small
        # each small pixel averages factor x factor image pixels (the last row / column fewer: PIL's reduce
        # rounds the size up), so a small pixel is 1 / factor of one, not small / image size
        return _uint8_to_float(small), (1 / factor, 1 / factor)


class DecodedImage:
    """A decoded PIL image kept as 8-bit ``[H, W, 3]`` (16-bit and float modes as float32 ``[H, W, 3]``)."""

    def __init__(self, image: Image.Image, source: str | Path = "an image") -> None:
        """``source``: the file, named in :func:`~scaledet.data.images.pil_to_float`'s warning."""
        if image.mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "1"):
            self.array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        else:  # wide modes keep their precision (pil_to_float scales them)
            self.array = pil_to_float(image, source).permute(1, 2, 0).numpy()
        self.height, self.width = self.array.shape[:2]

    def read(self, window: Window) -> Tensor:
        x1, y1, x2, y2 = window
        return _uint8_to_float(self.array[y1:y2, x1:x2])

    def downscaled(self, longest_side: int) -> tuple[Tensor, tuple[float, float]]:
        """8-bit images: reduced by a whole factor in 8 bits (box averages, PIL ``reduce``, as
        :meth:`MappedImage.downscaled`; a float copy of the whole image cost 12 bytes a pixel)."""
        if self.array.dtype != np.uint8:
            return TensorImage(self.read((0, 0, self.width, self.height))).downscaled(longest_side)
        factor = _reduction(self.height, self.width, longest_side)
        small = np.asarray(Image.fromarray(self.array).reduce(factor)) if factor > 1 else self.array
        return _uint8_to_float(small), (1 / factor, 1 / factor)


def _reduction(height: int, width: int, longest_side: int) -> int:
    """The whole factor that brings the longer side to at most ``longest_side`` (1: no reduction)."""
    return max(1, -(-max(height, width) // longest_side))


def _uint8_to_float(array: np.ndarray) -> Tensor:
    """``[h, w, C]`` uint8 (C = 1 or 3) or float32 -> float ``Tensor[3, h, w]`` in [0, 1]."""
    tensor = torch.from_numpy(np.array(array)).permute(2, 0, 1)  # a copy: file maps and PIL arrays are read-only
    tensor = tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor.float()
    return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor


def crop_boxes(boxes: Tensor, window: Window, min_visible: float = 0.5) -> tuple[Tensor, Tensor]:
    """Boxes ``[M, 4]`` xyxy image pixels -> ``(boxes [K, 4] in the window's pixels, clipped to it,
    kept [M] bool)``; a box is kept when at least ``min_visible`` of its area lies in the window."""
    x1, y1, x2, y2 = window
    origin = boxes.new_tensor([x1, y1, x1, y1])
    clipped = torch.stack([boxes[:, 0].clamp(x1, x2), boxes[:, 1].clamp(y1, y2),
                           boxes[:, 2].clamp(x1, x2), boxes[:, 3].clamp(y1, y2)], 1)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(1e-9)
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    kept = (visible > 0) & (visible >= min_visible * area)
    return clipped[kept] - origin, kept


def sample_window(height: int, width: int, tile: int, boxes: Tensor, object_fraction: float = 0.8) -> Window:
    """A random ``tile x tile`` window inside the image (smaller sides: the whole side), drawn with
    torch's RNG: with probability ``object_fraction`` (and when ``boxes`` ``[M, 4]`` is not empty)
    uniformly among the windows holding the centre of a random box, else uniformly anywhere."""
    tile_h, tile_w = min(tile, height), min(tile, width)
    if len(boxes) and torch.rand(()).item() < object_fraction:
        box = boxes[int(torch.randint(len(boxes), ()))]
        cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
        x1 = _uniform_int(min(max(0, int(cx) - tile_w + 1), width - tile_w), min(width - tile_w, int(cx)))
        y1 = _uniform_int(min(max(0, int(cy) - tile_h + 1), height - tile_h), min(height - tile_h, int(cy)))
    else:
        x1, y1 = _uniform_int(0, width - tile_w), _uniform_int(0, height - tile_h)
    return x1, y1, x1 + tile_w, y1 + tile_h


def _uniform_int(low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (``low`` when the range is empty)."""
    return low if high <= low else int(torch.randint(low, high + 1, ()))


def tile_records(records: list, tile: int, min_visible: float = 0.5) -> list:
    """One :class:`~scaledet.data.base.ImageRecord` per tile of each record's non-overlapping
    :func:`tile_grid`: the tile's size, and the boxes keeping at least ``min_visible`` of their area in it
    (:func:`crop_boxes`), in the tile's pixels. Boxes in full-image pixels against a tile-sized image would
    put every box outside the first tile at the wrong place (the anchor doctor then matched ~3% of them)."""
    tiles = []
    for record in records:
        boxes = torch.as_tensor(np.asarray(record.boxes, np.float32)).reshape(-1, 4)
        for window in tile_grid(record.height, record.width, tile, 0.0).tolist():
            cropped, kept = crop_boxes(boxes, tuple(window), min_visible)
            kept = kept.numpy()
            tiles.append(dataclasses.replace(
                record, width=window[2] - window[0], height=window[3] - window[1],
                boxes=cropped.numpy().astype(np.float32), labels=np.asarray(record.labels)[kept],
                iscrowd=np.asarray(record.iscrowd)[kept], areas=np.asarray(record.areas)[kept]))
    return tiles


class TileCropDataset(Dataset):
    """Training samples that are native-resolution ``tile x tile`` crops of ``dataset``'s images.

    ``self[i]`` reads image ``i // crops`` of ``dataset`` (its own ``transforms`` must be ``None``;
    this wrapper's ``transforms``, the model's training pipeline, run on the crop), draws a window
    with :func:`sample_window`, clips the boxes to it and drops those keeping less than
    ``min_visible`` of their area (:func:`crop_boxes`). Each image gives as many samples per
    epoch as non-overlapping tiles cover it, so an epoch sees about every pixel once.

    ``records`` are what the model sees, for the recipe's and the anchor doctor's statistics at native
    resolution: one record per tile of each image's non-overlapping grid, its boxes cropped to the tile
    as training crops them (:func:`tile_records`); ``coco_gt``, ``class_names``,
    ``label_to_category_id``, ``report`` and ``cache_images`` are the dataset's.
    """

    def __init__(self, dataset: Dataset, tile: int, min_visible: float = 0.5, object_fraction: float = 0.8) -> None:
        if not 0.0 < min_visible <= 1.0:
            raise ValueError(f"tile_min_visible must be in (0, 1], got {min_visible}")
        if tile < 16:
            raise ValueError(f"tile must be at least 16 pixels, got {tile}")
        if getattr(dataset, "transforms", None) is not None:
            raise ValueError("TileCropDataset crops the untransformed images: give it a dataset without transforms")
        self.dataset, self.tile, self.min_visible, self.object_fraction = dataset, tile, min_visible, object_fraction
        self.transforms = None
        self.class_names, self.label_to_category_id = dataset.class_names, dataset.label_to_category_id
        self.report = dataset.report
        self.records = tile_records(dataset.records, tile, min_visible)
        self.record_unit = f"{tile}x{tile} tiles"
        self._image_of = [index for index, record in enumerate(dataset.records)
                          for _ in range(len(tile_grid(record.height, record.width, tile, 0.0)))]

    def __len__(self) -> int:
        return len(self._image_of)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def coco_gt(self) -> dict:
        return self.dataset.coco_gt()

    def cache_images(self, max_bytes: int) -> None:
        self.dataset.cache_images(max_bytes)

    def summary(self) -> str:
        return self.dataset.summary()

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        image, target = self.dataset[self._image_of[index]]
        height, width = image.shape[-2:]
        window = sample_window(height, width, self.tile, target["boxes"], self.object_fraction)
        boxes, kept = crop_boxes(target["boxes"], window, self.min_visible)
        x1, y1, x2, y2 = window
        crop = tv_tensors.Image(image[:, y1:y2, x1:x2])
        target = {**target, "labels": target["labels"][kept],
                  "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(y2 - y1, x2 - x1))}
        if self.transforms is not None:
            crop, target = self.transforms(crop, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).float()
        return crop.as_subclass(torch.Tensor), target
