"""How well the anchors cover a data set's boxes, and anchors fitted to them (``--anchors auto``).

A ground-truth box is *covered* when its best anchor reaches the matching IoU (``match_iou``,
0.5): otherwise the loss still forces it onto that one anchor, but with a poor fit and without
the several positives a well-covered box gets. EfficientDet's published anchors (scale 4, i.e. 32
to 512 px squares at strides 8-128, aspects 1:1, 2:1, 1:2 in the x/y-factor form (1.4, 0.7))
suit COCO at 512-1536 px; small or elongated objects at small input sizes fall between them.

:func:`fit_anchors` searches the anchor scale and the three aspect ratios (same count, so the head's
shape and published weights still fit) for the highest coverage of the training boxes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from .anchors import generate_anchors
from .config import EfficientDetVariant

DEFAULT_ASPECTS = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
ANCHOR_SCALES = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
#: coverage a fitted set must gain over the published anchors to replace them
MIN_GAIN = 0.02


@dataclasses.dataclass(frozen=True)
class AnchorFit:
    """An anchor setting and how it covers the boxes."""

    anchor_scale: float
    aspect_ratios: tuple[tuple[float, float], ...]
    coverage: float  # fraction of boxes whose best anchor IoU >= the matching IoU
    mean_best_iou: float

    def overrides(self) -> dict:
        """The ``create_model`` overrides that build a model with these anchors."""
        return {"anchor_scale": self.anchor_scale, "aspect_ratios": [list(a) for a in self.aspect_ratios]}


def boxes_in_input_pixels(records: Sequence, image_size: tuple[int, int], max_boxes: int = 2000,
                          seed: int = 0) -> torch.Tensor:
    """The non-crowd boxes of ``records`` as the network sees them: ``Tensor[N, 4]`` xyxy in input
    pixels after the model's resize (longest side into ``image_size``, top-left aligned). At most
    ``max_boxes``, drawn at random (seeded) when there are more."""
    height, width = image_size
    boxes = []
    for record in records:
        keep = ~np.asarray(record.iscrowd, bool)
        if keep.any():
            scale = min(height / record.height, width / record.width)
            boxes.append(np.asarray(record.boxes, np.float32).reshape(-1, 4)[keep] * scale)
    if not boxes:
        return torch.zeros((0, 4))
    boxes = np.concatenate(boxes)
    if len(boxes) > max_boxes:
        boxes = boxes[np.random.default_rng(seed).choice(len(boxes), max_boxes, replace=False)]
    return torch.from_numpy(boxes)


def best_anchor_iou(boxes: torch.Tensor, anchors: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``[N]`` best IoU of each box (``[N, 4]`` xyxy) with any of ``anchors`` (``[A, 4]`` xyxy)."""
    if len(boxes) == 0:
        return torch.zeros(0)
    return torch.cat([box_iou(boxes[i : i + chunk], anchors).amax(dim=1) for i in range(0, len(boxes), chunk)])


def evaluate_anchors(boxes: torch.Tensor, variant: EfficientDetVariant, image_size: tuple[int, int],
                     anchor_scale: float | None = None, aspect_ratios: Sequence | None = None) -> AnchorFit:
    """Coverage of ``boxes`` (input pixels) by the anchors of ``variant`` at ``image_size``, optionally
    with another ``anchor_scale`` / ``aspect_ratios``."""
    scale = variant.anchor_scale if anchor_scale is None else anchor_scale
    aspects = tuple(tuple(float(v) for v in a) for a in (aspect_ratios or variant.aspect_ratios))
    anchors = generate_anchors(tuple(image_size), variant.min_level, variant.max_level, variant.num_scales,
                               aspects, scale)
    best = best_anchor_iou(boxes, anchors)
    coverage = float((best >= variant.match_iou).float().mean()) if len(best) else 1.0
    return AnchorFit(scale, aspects, coverage, float(best.mean()) if len(best) else 1.0)


def aspect_candidates(boxes: torch.Tensor) -> list[tuple[tuple[float, float], ...]]:
    """Aspect-ratio sets to try: the published one and one from the boxes' width/height ratios
    (their 1/6, 1/2 and 5/6 quantiles), in the (x, y) factor form ``(sqrt(r), 1/sqrt(r))``."""
    candidates = [DEFAULT_ASPECTS]
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ratios = (widths / heights.clamp(min=1e-6)).clamp(1 / 8, 8)
    if len(ratios) >= 3:
        quantiles = torch.quantile(ratios.log(), torch.tensor([1 / 6, 0.5, 5 / 6])).exp().tolist()
        candidates.append(tuple((round(math.sqrt(r), 3), round(1 / math.sqrt(r), 3)) for r in quantiles))
    return candidates


def fit_anchors(boxes: torch.Tensor, variant: EfficientDetVariant, image_size: tuple[int, int]) -> tuple[AnchorFit, AnchorFit]:
    """(published, best) anchor settings for ``boxes`` in input pixels at ``image_size``.

    ``best`` maximises coverage, then the mean best IoU, over :data:`ANCHOR_SCALES` x
    :func:`aspect_candidates`; it is the published setting unless it gains at least
    :data:`MIN_GAIN` coverage, so data the published anchors suit keeps them.
    """
    published = evaluate_anchors(boxes, variant, image_size)
    best = published
    for aspects in aspect_candidates(boxes):
        for scale in ANCHOR_SCALES:
            fit = evaluate_anchors(boxes, variant, image_size, scale, aspects)
            if (fit.coverage, fit.mean_best_iou) > (best.coverage, best.mean_best_iou):
                best = fit
    if best.coverage < published.coverage + MIN_GAIN:
        best = published
    return published, best
