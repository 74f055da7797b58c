"""A batched NMS custom op that exports to one ONNX ``NonMaxSuppression`` node.

``torch.ops.scaledet.batched_nms(boxes [B, N, 4], scores [B, N], max_per_image, iou_threshold)``
returns ``Tensor[M, 2]`` int64 rows ``(image, candidate)``: per image, the indices kept by greedy
NMS (suppress when IoU > threshold) in descending score order, at most ``max_per_image``. Boxes
are corner boxes (xyxy); per-class NMS is obtained by offsetting boxes per class beforehand.
The eager implementation uses :func:`torchvision.ops.nms`; :data:`ONNX_TRANSLATIONS` maps the op
to ONNX for ``torch.onnx.export(..., custom_translation_table=...)``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms


@torch.library.custom_op("scaledet::batched_nms", mutates_args=())
def batched_nms(boxes: Tensor, scores: Tensor, max_per_image: int, iou_threshold: float) -> Tensor:
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
    from onnxscript import opset18 as op

    selected = op.NonMaxSuppression(
        boxes,
        op.Unsqueeze(scores, op.Constant(value_ints=[1])),  # [B, 1, N]: one "class"
        op.Constant(value_ints=[max_per_image]),
        op.Constant(value_floats=[iou_threshold]),
    )  # [M, 3] = (batch, class, box)
    return op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)


ONNX_TRANSLATIONS = {torch.ops.scaledet.batched_nms.default: _onnx_batched_nms}
