"""Generic ops the families' export modules use: a batched NMS custom op that exports to one ONNX
``NonMaxSuppression`` node, per-class NMS built on it, and the split of its flat outputs by image.

``torch.ops.scaledet.batched_nms(boxes [B, N, 4], scores [B, N], max_per_image, iou_threshold)``
returns ``Tensor[M, 2]`` int64 rows ``(image, candidate)``: per image, the indices kept by greedy
NMS (suppress when IoU > threshold) in descending score order, at most ``max_per_image``. Boxes
are corner boxes (xyxy). The eager implementation uses :func:`torchvision.ops.nms`;
:data:`ONNX_TRANSLATIONS` maps the op to ONNX for ``torch.onnx.export(...,
custom_translation_table=...)`` (:func:`scaledet.export.export_onnx` passes it).

This module sits below the export layer so that models import it without importing
:mod:`scaledet.export`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

from scaledet.models.base import Detections


@torch.library.custom_op("scaledet::batched_nms", mutates_args=())
def batched_nms(boxes: Tensor, scores: Tensor, max_per_image: int, iou_threshold: float) -> Tensor:
    """Greedy NMS of each image of ``boxes [B, N, 4]`` xyxy / ``scores [B, N]``; see the module docstring."""
    rows = []
    for image, (image_boxes, image_scores) in enumerate(zip(boxes, scores)):
        keep = nms(image_boxes, image_scores, iou_threshold)[:max_per_image]
        rows.append(torch.stack([torch.full_like(keep, image), keep], dim=1))
    return torch.cat(rows) if rows else boxes.new_zeros(0, 2, dtype=torch.int64)


@batched_nms.register_fake
def _(boxes: Tensor, scores: Tensor, max_per_image: int, iou_threshold: float) -> Tensor:
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty(count, 2, dtype=torch.int64)


def _onnx_batched_nms(boxes, scores, max_per_image: int, iou_threshold: float):
    from onnxscript import opset18 as op  # optional dependency, only needed while exporting

    selected = op.NonMaxSuppression(
        boxes,
        op.Unsqueeze(scores, op.Constant(value_ints=[1])),  # [B, 1, N]: one "class"
        op.Constant(value_ints=[max_per_image]),
        op.Constant(value_floats=[iou_threshold]),
    )  # [M, 3] = (batch, class, box)
    return op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)


#: custom op -> ONNX translation, for ``torch.onnx.export(custom_translation_table=...)``
ONNX_TRANSLATIONS = {torch.ops.scaledet.batched_nms.default: _onnx_batched_nms}


def nms_per_class(boxes: Tensor, scores: Tensor, labels: Tensor, max_per_image: int, iou_threshold: float,
                  class_offset: float | Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-class greedy NMS of a batch, export-friendly (one NMS call for all images and classes).

    Args:
        boxes: ``[B, N, 4]`` xyxy candidates, coordinates in ``[0, class_offset)``.
        scores: ``[B, N]``; labels: ``[B, N]`` int64.
        max_per_image: detections kept per image (the best by score).
        class_offset: larger than every coordinate: each class's boxes are shifted by
            ``label * class_offset`` so that boxes of different classes never overlap.

    Returns:
        ``(batch_index [M] int64, boxes [M, 4] xyxy, scores [M], labels [M] int64)``: per image at
        most ``max_per_image`` rows, by descending score.
    """
    shifted = boxes + (labels.to(boxes.dtype) * class_offset).unsqueeze(-1)
    keep = torch.ops.scaledet.batched_nms(shifted, scores, max_per_image, iou_threshold)
    image, index = keep[:, 0], keep[:, 1]
    return image, boxes[image, index], scores[image, index], labels[image, index]


def split_by_image(batch_index: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor,
                   num_images: int) -> list[Detections]:
    """Flat rows (the outputs of :func:`nms_per_class`) -> one detections dict per image, rows kept in order."""
    results = []
    for image in range(num_images):
        keep = batch_index == image
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep].long()})
    return results
