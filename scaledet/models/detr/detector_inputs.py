"""The input side DETR and Deformable DETR share: DETR's resize with a padding mask, the paper's
training pipeline, and the export graph's feeds and outputs.

:class:`DetrInputs` is mixed in before :class:`~scaledet.models.base.Detector`
(``class DETR(DetrInputs, Detector)``) and overrides its resize-and-pad defaults. The model sets
``image_size`` = (shorter side, longer-side cap) and ``preprocessor``
(:class:`~scaledet.models.detr.preprocess.Preprocessor`). Box format of the detections: xyxy in
input-image pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from scaledet.models import preprocessing
from scaledet.models.base import Batch, Detections
from scaledet.models.detr import export, transforms
from scaledet.models.detr.postprocess import per_image
from scaledet.models.detr.preprocess import (IMAGENET_MEAN, IMAGENET_STD, Preprocessor, describe_resize, resize_scale,
                                             typical_input_size)


class DetrInputs:
    """Resize by the shorter side (capped longer side), ImageNet-normalise, zero-pad bottom/right with
    a mask; the export graph takes ``(images, mask, image_sizes)`` and returns ranked detections."""

    image_size: tuple[int, int]
    preprocessor: Preprocessor

    def input_size(self) -> tuple[int, int]:
        """(h, w) of a typical input: a 480x640 (4:3) image under the eval resize, 800x1066 at the
        default ``(800, 1333)`` (:func:`~scaledet.models.detr.preprocess.typical_input_size`)."""
        return typical_input_size(*self.image_size)

    def unresized_size(self) -> tuple[int, int]:
        """The square at the shorter side ``image_size[0]``: DETR's eval resize leaves it unscaled
        whatever the longer-side cap (``--image-size 128`` and a trained (128, 128) see the same images)."""
        return (self.image_size[0], self.image_size[0])

    def input_scale(self, height: int, width: int, image_size: Sequence[int] | None = None) -> tuple[float, float]:
        """DETR's eval resize (:func:`~scaledet.models.detr.preprocess.resize_scale`); ``image_size``
        is (shorter side, longer-side cap)."""
        return resize_scale(height, width, *(image_size or self.image_size))

    def describe_input(self, image_size: Sequence[int] | None = None) -> str:
        return describe_resize(*(image_size or self.image_size))

    def preprocess(self, images: list[Tensor], training: bool = False) -> Batch:
        """Resize (shorter side ``min_size``, longer at most ``max_size``; with ``training`` the
        shorter side is drawn per batch from ``train_min_sizes``), ImageNet-normalise and zero-pad
        bottom/right. ``inputs``: ``(batch [B,3,H,W], mask [B,H,W] bool, True on padding)``."""
        batch, mask = self.preprocessor(images, training=training)
        return Batch(inputs=(batch, mask), image_sizes=[(int(i.shape[1]), int(i.shape[2])) for i in images])

    def train_transforms(self, hflip: float = 0.5, crop: float = 0.5, min_box_size: float = 1.0):
        """DETR's own training pipeline (:func:`scaledet.models.detr.transforms.train_transforms`):
        flip and the paper's random crop, images at their own size. No scale jitter and no fixed
        size: the multi-scale resize is :meth:`preprocess` with ``training=True``; the pipeline knows
        its largest size, so photos far larger decode shrunk."""
        shorter = max(self.preprocessor.train_min_sizes or (self.preprocessor.min_size,))
        resize = transforms.ShorterSideResize(shorter, self.preprocessor.max_size) if shorter > 0 else None
        return transforms.train_transforms(hflip=hflip, crop=crop, min_box_size=min_box_size, model_resize=resize)

    def export_feeds(self, batch: Batch) -> dict[str, Tensor]:
        """``images`` and ``mask`` as preprocessed, ``image_sizes [B, 2]`` float (h, w) of the inputs."""
        images, mask = batch.inputs
        sizes = torch.tensor([list(size) for size in batch.image_sizes], dtype=torch.float32, device=images.device)
        return dict(zip(export.INPUT_NAMES, (images, mask, sizes)))

    def detections_from_export(self, outputs: Sequence[Tensor], batch: Batch) -> list[Detections]:
        """The graph's ``(boxes [B,N,4], scores [B,N], labels [B,N])``, already in input-image pixels
        and sorted by score -> one dict per image."""
        boxes, scores, labels = outputs
        return per_image(boxes, scores, labels)

    def preprocessing_spec(self) -> dict:
        """The eval :meth:`preprocess` written out (:mod:`scaledet.models.preprocessing`): DETR's resize
        (:func:`~scaledet.models.detr.preprocess.resized_size`), ImageNet normalisation, zero padding to
        the batch's largest image with a mask."""
        min_size, max_size = self.preprocessor.min_size, self.preprocessor.max_size
        short_side = "(min_size if max(h, w) / min(h, w) * min_size <= max_size else " \
                     "max(1, round(max_size * min(h, w) / max(h, w))))"
        return preprocessing.spec(
            constants={"min_size": min_size, "max_size": max_size},
            let=[("short", short_side),
                 ("new_h", "h if min_size <= 0 else (int(short) if h <= w else int(short * h / w))"),
                 ("new_w", "w if min_size <= 0 else (int(short * w / h) if h <= w else int(short))")],
            steps=[preprocessing.resize("(new_h, new_w)", antialias=True),
                   preprocessing.normalize(IMAGENET_MEAN, IMAGENET_STD),
                   preprocessing.pad(preprocessing.LARGEST_IN_BATCH)],
            feeds={"images": preprocessing.BATCH, "mask": preprocessing.PADDING_MASK, "image_sizes": "[h, w]"},
            boxes="boxes [B, N, 4] xyxy in each image's own pixels (clipped to it), scores [B, N], labels [B, N] "
                  "(0-based: the 'config' metadata's class_names / category_ids), sorted by score")
