"""DETR's training-time data pipeline (what :meth:`DETR.train_transforms
<scaledet.models.detr.model.DETR.train_transforms>` gives the training set).

The official pipeline (``datasets/coco.py``) is: random horizontal flip, then with probability 0.5
the random crop (resize the shorter side to 400, 500 or 600, crop a random region with sides in
[384, 600]), then the multi-scale resize (shorter side 480..800, longer at most 1333). Here the
multi-scale resize is the model's own, once per batch in ``preprocess(training=True)``; the data
pipeline does the flip and the crop, on the image at its own size. The crop's 400..600 resize only
sets the crop's size *relative* to the image (the multi-scale resize follows anyway), so
:class:`RandomSizeCrop` draws the same region as the official one and crops it without resampling.

Images and targets are torchvision v2 style: ``transform(image, target)`` with ``target["boxes"]``
a ``tv_tensors.BoundingBoxes`` (xyxy pixels) and ``target["labels"]`` ``[M]``; boxes are clipped to
the crop and boxes (with their labels) thinner than ``min_box_size`` pixels are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from scaledet.models.detr.preprocess import resize_scale, resized_size

#: the official crop: shorter side resized to one of these first ...
CROP_RESIZE_SCALES: tuple[int, ...] = (400, 500, 600)
#: ... then a region with height and width drawn in this range (pixels of the resized image)
CROP_SIDE_RANGE: tuple[int, int] = (384, 600)


def _randint(low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` from torch's RNG (seeded / checkpointed runs repeat)."""
    return int(torch.randint(low, high + 1, ()).item())


class RandomSizeCrop(v2.Transform):
    """With probability ``p``, DETR's random crop, drawn as the official code draws it on the image
    resized to a shorter side of one of ``scales``, applied to the unresized image.

    Args:
        p: probability of cropping (official: 0.5).
        scales: shorter sides of the official intermediate resize.
        side_range: (min, max) crop height / width in pixels of that resized image.
    """

    def __init__(self, p: float = 0.5, scales: Sequence[int] = CROP_RESIZE_SCALES,
                 side_range: tuple[int, int] = CROP_SIDE_RANGE) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"crop probability must be in [0, 1], got {p}")
        self.p, self.scales, self.side_range = p, tuple(scales), tuple(side_range)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        if self.p == 0.0 or torch.rand(()).item() >= self.p:
            return {"region": None}
        short = self.scales[_randint(0, len(self.scales) - 1)]
        big_h, big_w = resized_size(height, width, short, max_size=10**9)  # no cap, as the official resize
        low, high = self.side_range
        crop_h, crop_w = _randint(low, max(low, min(big_h, high))), _randint(low, max(low, min(big_w, high)))
        crop_h, crop_w = min(crop_h, big_h), min(crop_w, big_w)
        top, left = _randint(0, big_h - crop_h), _randint(0, big_w - crop_w)
        scale_y, scale_x = height / big_h, width / big_w  # resized pixels -> this image's pixels
        top, left = round(top * scale_y), round(left * scale_x)
        crop_h = max(1, min(round(crop_h * scale_y), height - top))
        crop_w = max(1, min(round(crop_w * scale_x), width - left))
        return {"region": (top, left, crop_h, crop_w)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["region"] is None:
            return inpt
        top, left, height, width = params["region"]
        return self._call_kernel(F.crop, inpt, top=top, left=left, height=height, width=width)


@dataclass(frozen=True)
class ShorterSideResize:
    """DETR's training resize at its largest: shorter side ``shorter``, longer at most ``longer``;
    called as ``(height, width) -> scale`` (picklable, for DataLoader workers)."""

    shorter: int
    longer: int

    def __call__(self, height: int, width: int) -> float:
        return max(resize_scale(height, width, self.shorter, self.longer))


@dataclass(frozen=True)
class StretchResize:
    """RT-DETR's resize: every image stretched to ``height`` x ``width``; ``(height, width) -> scale``
    is the larger of the two axes' factors."""

    height: int
    width: int

    def __call__(self, height: int, width: int) -> float:
        return max(self.height / height, self.width / width)


class TrainPipeline(v2.Compose):
    """The family's training steps plus what the model's own resize does after them, so that a
    dataset decodes files only as large as they are used (:meth:`largest_scale`,
    :meth:`~scaledet.data.DetectionDataset.decode_shrunk`).

    Args:
        steps: the transforms, in order.
        model_resize: ``(height, width) -> scale`` of the model's training resize at its largest
            (:class:`ShorterSideResize`, :class:`StretchResize`); ``None``: not said (files decode whole).
    """

    def __init__(self, steps: list[v2.Transform], model_resize=None) -> None:
        super().__init__(steps)
        self.model_resize = model_resize

    def largest_scale(self, height: int, width: int) -> float | None:
        """The largest factor an image of ``height`` x ``width`` is resized by before the network: the
        model's resize of the smallest crop (both resizes only grow as the crop shrinks), or ``None``.
        Every :class:`RandomSizeCrop` side is at least ``side_range[0]`` px of the image resized to a
        shorter side of at most ``max(scales)``."""
        if self.model_resize is None:
            return None
        crops = [step for step in self.transforms if isinstance(step, RandomSizeCrop) and step.p > 0]
        fraction = min((crop.side_range[0] / max(crop.scales) for crop in crops), default=1.0)
        side = max(1.0, fraction * min(height, width))
        return self.model_resize(min(height, side), min(width, side))


def train_transforms(hflip: float = 0.5, crop: float = 0.5, min_box_size: float = 1.0,
                     model_resize=None) -> TrainPipeline:
    """DETR's training pipeline: horizontal flip with probability ``hflip``, :class:`RandomSizeCrop`
    with probability ``crop``, then clip the boxes and drop those narrower or shorter than
    ``min_box_size`` pixels. No resize and no padding: images keep their own size (the model's
    multi-scale resize follows in ``preprocess(training=True)``; ``model_resize`` says how large it
    goes, see :class:`TrainPipeline`)."""
    steps: list[v2.Transform] = []
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    if crop > 0:
        steps.append(RandomSizeCrop(p=crop))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=min_box_size)]
    return TrainPipeline(steps, model_resize)
