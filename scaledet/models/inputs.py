"""Checks of what callers pass to a detector, shared by every family.

Every detector takes ``images``: a list of float ``Tensor[3, H, W]`` RGB in ``[0, 1]`` (sizes may
differ; a ``[B, 3, H, W]`` batch is accepted too) and, in training, ``targets``: one
``dict(boxes=Tensor[M, 4] xyxy pixels, labels=Tensor[M] int64 in [0, num_classes))`` per image.
Anything else raises ``ValueError`` with a message naming the image/target and the problem; so do
option names that a family's variant does not have (:func:`check_option_names`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

# Inputs are RGB in [0, 1]; allow resampling overshoot, reject e.g. 0..255 data by far.
VALUE_TOLERANCE = 0.1


def check_images(images: Sequence[Tensor] | Tensor) -> list[Tensor]:
    """Validate ``images`` and return them as a list of float32 ``Tensor[3, H, W]`` (float64 / float16 / bfloat16
    images are converted: the networks' weights are float32, and one odd image no longer decides a batch's type)."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError("images must be a non-empty list of float Tensor[3, H, W] (or a [B, 3, H, W] batch), "
                             f"got a tensor of shape {tuple(images.shape)}")
        images = list(images)
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError("images must be a non-empty list of float Tensor[3, H, W]")
    for index, image in enumerate(images):
        _check_image(index, image)
    return [image if image.dtype == torch.float32 else image.float() for image in images]


def _check_image(index: int, image: Tensor) -> None:
    if not isinstance(image, Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image {index} must be a Tensor[3, H, W], got {shape}")
    if image.shape[0] != 3:
        raise ValueError(f"image {index} must have 3 (RGB) channels first, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image {index} must be a float tensor in [0, 1], got dtype {image.dtype} (divide by 255)")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image {index} is empty: shape {tuple(image.shape)}")
    if image.device.type == "meta":  # shape-only runs (profiling) carry no values
        return
    low, high = float(image.min()), float(image.max())
    if not math.isfinite(low + high):
        raise ValueError(f"image {index} contains NaN or infinite values")
    if low < -VALUE_TOLERANCE or high > 1 + VALUE_TOLERANCE:
        raise ValueError(f"image {index} values must be in [0, 1], found [{low:.3g}, {high:.3g}] "
                         "(a 0..255 image must be divided by 255)")


def check_targets(targets: Sequence[dict[str, Tensor]], num_images: int, num_classes: int,
                  image_sizes: Sequence[tuple[int, int]] | None = None) -> None:
    """Validate one target dict per image: finite xyxy ``boxes`` ``[M, 4]`` with x2 >= x1 and
    y2 >= y1, and int64 ``labels`` ``[M]`` in ``[0, num_classes)``. With the images' ``(H, W)``
    ``image_sizes``: a box wholly outside its image is an error, and boxes that all lie within
    ``[0, 1]`` on images larger than that get a warning (normalised coordinates, not pixels)."""
    if not isinstance(targets, (list, tuple)) or len(targets) != num_images:
        count = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(f"targets must be a list with one dict per image: got {num_images} images and {count} targets")
    for index, target in enumerate(targets):
        _check_target(index, target, num_classes)
    if image_sizes is None:
        return
    for index, (target, (height, width)) in enumerate(zip(targets, image_sizes)):
        boxes = target["boxes"]
        outside = (boxes[:, 0] > width) | (boxes[:, 1] > height) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
        if outside.any():
            raise ValueError(f"target {index} has a box {boxes[outside][0].tolist()} wholly outside its image "
                             f"({width}x{height}): boxes are xyxy pixels of the image they go with")
    every = torch.cat([target["boxes"].reshape(-1, 4).float() for target in targets])
    if len(every) and float(every.max()) <= 1.0 and min(min(size) for size in image_sizes) > 2:
        warnings.warn("every target box lies within [0, 1]: boxes are xyxy pixels, not normalised coordinates "
                      "(multiply by the image's width and height)", stacklevel=3)


def _check_target(index: int, target: dict[str, Tensor], num_classes: int) -> None:
    if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
        raise ValueError(f"target {index} must be a dict with 'boxes' and 'labels'")
    boxes, labels = target["boxes"], target["labels"]
    if not isinstance(boxes, Tensor) or not isinstance(labels, Tensor):
        kinds = f"{type(boxes).__name__} and {type(labels).__name__}"
        raise ValueError(f"target {index} boxes and labels must be tensors (torch.tensor(...)), got {kinds}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"target {index} boxes must be Tensor[M, 4] xyxy, got shape {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all():
        raise ValueError(f"target {index} boxes contain NaN or infinite values")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"target {index} has boxes with x2 < x1 or y2 < y1; boxes must be xyxy pixels "
                         "with x2 >= x1 and y2 >= y1")
    if labels.dtype != torch.int64 or labels.shape != (boxes.shape[0],):
        raise ValueError(f"target {index} labels must be int64 Tensor[{boxes.shape[0]}] matching boxes, "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"target {index} labels must be in [0, {num_classes}), got {labels.tolist()[:10]}")


def class_names_for(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """``class_names`` as a list, or ``class_0 .. class_{K-1}`` when None; ValueError if the count is not K."""
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for {num_classes} classes")
    return names


def category_ids_for(category_ids: Sequence[int] | None, num_classes: int, first: int = 1) -> list[int]:
    """The dataset category id of each label: ``category_ids`` as K distinct ints, or
    ``first .. first + K - 1`` when None (1..K is what the VOC / YOLO / shapes readers and COCO's
    own EfficientDet layout use; DETR's 91-class COCO head predicts the id itself, ``first=0``).
    ValueError if the count is not K or an id repeats."""
    ids = [int(i) for i in category_ids] if category_ids is not None else list(range(first, first + num_classes))
    if len(ids) != num_classes:
        raise ValueError(f"got {len(ids)} category ids for {num_classes} classes")
    if len(set(ids)) != len(ids):
        raise ValueError(f"category ids must be distinct, got {ids}")
    return ids


def category_ids_of(detector) -> list[int]:
    """The category id of each label of ``detector`` (a model, an optimised model or an
    ``OnnxDetector``): its ``category_ids``, or 1..K for detectors that do not carry them."""
    ids = getattr(detector, "category_ids", None)
    return list(ids) if ids is not None else category_ids_for(None, len(detector.class_names))


def check_option_names(options: Iterable[str], variant: Any, family: str, exclude: Iterable[str] = ()) -> None:
    """ValueError naming every option that is not a field of the dataclass ``variant`` (a class or an
    instance; less ``exclude``) and the valid ones, e.g. ``unknown DETR option(s) ['hidden']; valid: [...]``."""
    fields = {field.name for field in dataclasses.fields(variant)} - set(exclude)
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"unknown {family} option(s) {unknown}; valid: {sorted(fields)}")
    values = options if isinstance(options, dict) else {}
    negative = sorted(name for name, value in values.items()  # counts, sizes, depths: none is negative
                      if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0)
    if negative:
        raise ValueError(f"{family} option(s) {', '.join(f'{name}={values[name]}' for name in negative)}: "
                         "counts, sizes and rates are >= 0")


def typed_options(options: dict[str, Any], variant: Any, family: str, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """:func:`check_option_names`, then JSON lists (a saved config's) back into the tuples the variant
    dataclasses hold."""
    check_option_names(options, variant, family, exclude)
    return {key: tuple(value) if isinstance(value, list) else value for key, value in options.items()}
