"""DETR's resize / normalise / pad, its typical input size, and target conversion.

Box formats: targets arrive as xyxy in each input image's pixels; the network and the loss use
normalised ``(cx, cy, w, h)`` in ``[0, 1]`` relative to that image (independent of the resize).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import box_convert

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the (h, w) of the image that stands for a typical input: 480x640, COCO's most common size (4:3)
TYPICAL_IMAGE = (480, 640)


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """DETR's resize rule: shorter side -> ``min_size`` unless the longer side would exceed
    ``max_size``, in which case the longer side -> ``max_size``. Returns (height, width)."""
    short, long = min(height, width), max(height, width)
    target_short = float(min_size)
    if long / short * target_short > max_size:
        target_short = max(1, round(max_size * short / long))  # at least one pixel for a thin strip
    if height <= width:
        return int(target_short), int(target_short * width / height)
    return int(target_short * height / width), int(target_short)


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> tuple[float, float]:
    """``(scale_y, scale_x)`` of :func:`resized_size` for an image of ``height`` x ``width`` (both
    equal up to rounding; 1 when ``min_size`` is 0: no resize)."""
    if min_size <= 0:
        return 1.0, 1.0
    new_h, new_w = resized_size(height, width, min_size, max_size)
    return new_h / height, new_w / width


def describe_resize(min_size: int, max_size: int) -> str:
    """DETR's eval resize in words, for reports."""
    return "image size (no resize)" if min_size <= 0 else \
        f"shorter side {min_size}, longer side at most {max_size} (aspect kept)"


def typical_input_size(min_size: int, max_size: int) -> tuple[int, int]:
    """The network input (h, w) of a :data:`TYPICAL_IMAGE` under the eval resize: 800x1066 at the
    default ``(800, 1333)``; the image itself when ``min_size`` is 0 (no resize)."""
    if min_size <= 0:
        return TYPICAL_IMAGE
    return resized_size(*TYPICAL_IMAGE, min_size, max_size)


def scaled_train_sizes(train_min_sizes: Sequence[int], reference_min_size: int, min_size: int) -> tuple[int, ...]:
    """Multi-scale training sizes given for an eval resize of ``reference_min_size``, for one of
    ``min_size`` instead: the same fractions of the shorter side (DETR's 480..800 at 800 are
    0.6-1.0 of it: 77..128 at 128); none when ``min_size`` is 0 (no resizing)."""
    if min_size <= 0:
        return ()
    return tuple(max(1, round(size * min_size / reference_min_size)) for size in train_min_sizes)


def normalize_and_pad(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """ImageNet-normalise and zero-pad (bottom/right) into ``batch`` [B,3,Hmax,Wmax] with
    ``mask`` [B,Hmax,Wmax] bool, True on padding."""
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    first = images[0]
    batch = first.new_zeros(len(images), 3, height, width)
    mask = torch.ones(len(images), height, width, dtype=torch.bool, device=first.device)
    mean = torch.tensor(IMAGENET_MEAN, device=first.device, dtype=first.dtype)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=first.device, dtype=first.dtype)[:, None, None]
    for index, image in enumerate(images):
        batch[index, :, : image.shape[1], : image.shape[2]] = (image - mean) / std
        mask[index, : image.shape[1], : image.shape[2]] = False
    return batch, mask


class Preprocessor:
    """Resize (shorter side ``min_size``, longer at most ``max_size``; in training the shorter side
    is drawn from ``train_min_sizes`` once per batch), normalise and pad a list of images.

    ``min_size=0`` disables resizing (images are used at their own size).
    """

    def __init__(self, min_size: int = 800, max_size: int = 1333, train_min_sizes: Sequence[int] = ()) -> None:
        self.min_size = min_size
        self.max_size = max_size
        self.train_min_sizes = tuple(train_min_sizes)

    def __call__(self, images: Sequence[Tensor], training: bool = False) -> tuple[Tensor, Tensor]:
        """list of [3,H,W] in [0,1] -> (batch [B,3,H',W'] normalised, mask [B,H',W'] True on padding)."""
        min_size = self.min_size
        if training and self.train_min_sizes:  # torch's RNG, so seeded / checkpointed runs repeat
            min_size = self.train_min_sizes[int(torch.randint(len(self.train_min_sizes), ()))]
        if min_size > 0:
            images = [self._resize(image, min_size) for image in images]
        return normalize_and_pad(images)

    def _resize(self, image: Tensor, min_size: int) -> Tensor:
        size = resized_size(image.shape[1], image.shape[2], min_size, self.max_size)
        if size == tuple(image.shape[1:]):
            return image
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def normalized_targets(image_sizes: Sequence[tuple[int, int]], targets: Sequence[dict]) -> list[dict]:
    """Targets with xyxy pixel boxes -> ``dict(boxes=[M,4] normalised cxcywh, labels=[M])``,
    relative to each input image's ``(h, w)`` in ``image_sizes``."""
    converted = []
    for (height, width), target in zip(image_sizes, targets):
        boxes = target["boxes"].to(torch.float32)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
        converted.append({"boxes": box_convert(boxes / scale, "xyxy", "cxcywh"), "labels": target["labels"]})
    return converted
