"""``shapes``: a built-in synthetic detection set, generated deterministically from a seed.

Each image has 0..``max_objects`` shapes (circle, square, triangle, cross) of varied size
(``size_range`` of the shorter image side), rotation and colour (each class has its own
hue band, jittered) on a noisy, textured background with thin clutter lines; overlaps are
allowed up to ``max_overlap`` IoU; a fraction of the images is empty. Image ``i`` depends
only on ``(seed, i)``, so any subset renders identically in any worker. Boxes are the exact
extents of the drawn shapes, xyxy pixels.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from scaledet.data.base import DetectionDataset, ImageRecord, Transform
from scaledet.data.report import DataReport

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
_HUES = {"circle": 0.0, "square": 0.33, "triangle": 0.61, "cross": 0.15}  # red, green, blue, yellow
#: default sizes of ``open_dataset("shapes:<split>")``
SHAPES_SPLITS: dict[str, dict] = {"train": {"num_images": 800, "seed": 0}, "val": {"num_images": 200, "seed": 1}}


@dataclass(frozen=True)
class Shape:
    """One drawn object: class, centre (x, y), radius and rotation in degrees, RGB colour."""

    label: int
    center: tuple[float, float]
    radius: float
    angle: float
    color: tuple[int, int, int]

    def polygon(self) -> np.ndarray:
        """Vertices ``[V, 2]`` (x, y) pixels; a circle is returned as its bounding square corners."""
        name = SHAPE_CLASSES[self.label]
        r = self.radius
        if name == "circle":
            local = np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
            return local + np.array(self.center)
        if name == "square":
            angles = np.deg2rad(self.angle + 45.0 + 90.0 * np.arange(4))
            local = r * np.stack([np.cos(angles), np.sin(angles)], 1)
        elif name == "triangle":
            angles = np.deg2rad(self.angle + 120.0 * np.arange(3))
            local = r * np.stack([np.cos(angles), np.sin(angles)], 1)
        else:  # cross: 12-vertex plus sign of arm half-width 0.35 r
            w = 0.35 * r
            local = np.array([[-w, -r], [w, -r], [w, -w], [r, -w], [r, w], [w, w], [w, r], [-w, r], [-w, w], [-r, w], [-r, -w], [-w, -w]])
            theta = math.radians(self.angle)
            local = local @ np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
        return local + np.array(self.center)

    def box(self) -> list[float]:
        """Tight xyxy box of the shape."""
        points = self.polygon()
        return [float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max())]

    def draw(self, draw: ImageDraw.ImageDraw) -> None:
        if SHAPE_CLASSES[self.label] == "circle":
            draw.ellipse(self.box(), fill=self.color)
        else:
            draw.polygon([tuple(p) for p in self.polygon()], fill=self.color)


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class ShapesDataset(DetectionDataset):
    """Synthetic shapes, rendered on the fly (no files).

    Args:
        num_images: number of images.
        image_size: ``int`` or ``(height, width)``.
        seed: everything derives from ``(seed, index)``; use different seeds for train / val.
        max_objects: objects per non-empty image are uniform in ``1..max_objects``.
        size_range: object extent as a fraction of the shorter image side.
        empty_fraction: probability that an image has no object.
        max_overlap: largest IoU allowed between two objects' boxes.
        transforms: optional v2-style ``transforms(image, target)``.
        allow_empty: accept a set whose every image is empty (e.g. ``empty_fraction=1``).
    """

    def __init__(
        self,
        num_images: int = 800,
        image_size: int | tuple[int, int] = 256,
        seed: int = 0,
        max_objects: int = 4,
        size_range: tuple[float, float] = (0.16, 0.4),
        empty_fraction: float = 0.08,
        max_overlap: float = 0.25,
        transforms: Transform | None = None,
        allow_empty: bool = False,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if not 0 < size_range[0] <= size_range[1] <= 1:
            raise ValueError(f"size_range must satisfy 0 < min <= max <= 1, got {size_range}")
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.seed, self.max_objects, self.size_range = seed, max_objects, size_range
        self.empty_fraction, self.max_overlap = empty_fraction, max_overlap
        self.layouts = [self._layout(i) for i in range(num_images)]
        height, width = self.image_size
        records = []
        for index, shapes in enumerate(self.layouts):
            boxes = np.asarray([s.box() for s in shapes], np.float32).reshape(-1, 4)
            labels = np.asarray([s.label for s in shapes], np.int64)
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            records.append(ImageRecord(None, index, width, height, boxes, labels, np.zeros(len(shapes), bool), areas))
        report = DataReport(source=f"shapes(seed={seed}, n={num_images}, size={height}x{width})")
        super().__init__(records, list(SHAPE_CLASSES), list(range(1, len(SHAPE_CLASSES) + 1)), report, transforms,
                         allow_empty)

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index, stream])

    def _layout(self, index: int) -> list[Shape]:
        rng = self._rng(index, 0)
        if rng.random() < self.empty_fraction:
            return []
        shapes: list[Shape] = []
        for _ in range(int(rng.integers(1, self.max_objects + 1))):
            for _attempt in range(20):
                shape = self._random_shape(rng)
                if all(_iou(shape.box(), other.box()) <= self.max_overlap for other in shapes):
                    shapes.append(shape)
                    break
        return shapes

    def _random_shape(self, rng: np.random.Generator) -> Shape:
        height, width = self.image_size
        label = int(rng.integers(len(SHAPE_CLASSES)))
        radius = 0.5 * rng.uniform(*self.size_range) * min(height, width)
        reach = radius * (1.07 if SHAPE_CLASSES[label] == "cross" else 1.0)  # cross corners stick out
        center = (rng.uniform(reach, width - reach), rng.uniform(reach, height - reach))
        hue = (_HUES[SHAPE_CLASSES[label]] + rng.uniform(-0.035, 0.035)) % 1.0
        rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))
        color = tuple(int(round(255 * c)) for c in rgb)
        return Shape(label, center, float(radius), float(rng.uniform(0, 360)), color)

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """Float ``[H, W, 3]`` in [0, 1]: tinted grey + gradient + blotchy texture."""
        height, width = self.image_size
        base = rng.uniform(0.25, 0.75) + rng.uniform(-0.06, 0.06, size=3)
        ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
        gx, gy = rng.uniform(-0.2, 0.2, size=2)
        coarse = rng.uniform(-0.12, 0.12, size=(6, 6)).astype(np.float32)
        blotch = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BILINEAR))
        return base + (gx * xs + gy * ys + blotch)[..., None]

    def load_image(self, index: int) -> torch.Tensor:
        """Render image ``index``: float ``Tensor[3,H,W]`` RGB in [0, 1]."""
        rng = self._rng(index, 1)
        canvas = Image.fromarray((np.clip(self._background(rng), 0, 1) * 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        height, width = self.image_size
        for _ in range(int(rng.integers(0, 4))):  # clutter: thin grey lines
            grey = int(rng.integers(40, 220))
            points = [float(rng.uniform(0, width)), float(rng.uniform(0, height)), float(rng.uniform(0, width)), float(rng.uniform(0, height))]
            draw.line(points, fill=(grey, grey, grey), width=int(rng.integers(1, 3)))
        for shape in self.layouts[index]:
            shape.draw(draw)
        array = np.asarray(canvas, np.float32) / 255.0
        array = array + rng.normal(0.0, rng.uniform(0.01, 0.05), size=array.shape)
        return torch.from_numpy(np.clip(array, 0.0, 1.0).astype(np.float32)).permute(2, 0, 1).contiguous()


def shapes_split(split: str = "train", **overrides) -> ShapesDataset:
    """``ShapesDataset`` with the defaults of :data:`SHAPES_SPLITS` for ``split`` (``train``/``val``)."""
    if split not in SHAPES_SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; choose one of {sorted(SHAPES_SPLITS)}")
    return ShapesDataset(**{**SHAPES_SPLITS[split], **overrides})
