"""RT-DETR's post-processing, written once for the eager model and the ONNX graph.

Scores are per-class sigmoids (no background class, no NMS); the best ``Q`` of all ``Q x K``
(query, class) pairs are the detections, so one query may give several. Boxes go from normalised
``(cx, cy, w, h)`` to xyxy pixels of the *original* image: RT-DETR stretches the whole image to its
input size, so normalised coordinates are the same in both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_convert

from scaledet.models.base import Detections


def top_detections(logits: Tensor, boxes: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """logits [B, Q, K], boxes [B, Q, 4] normalised cxcywh, image_sizes [B, 2] float (h, w) ->
    ``(boxes [B, Q, 4] xyxy pixels, scores [B, Q], labels [B, Q] int64)``, by descending score
    (``torch.topk`` over the flattened (query, class) scores, as the official post-processor)."""
    num_classes = logits.shape[-1]
    scores, index = logits.sigmoid().flatten(1).topk(logits.shape[1], dim=1)
    labels, query = index % num_classes, index // num_classes
    scale = image_sizes.to(boxes.dtype).flip(-1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] (w, h, w, h)
    pixels = box_convert(boxes, "cxcywh", "xyxy") * scale
    return torch.gather(pixels, 1, query.unsqueeze(-1).expand(-1, -1, 4)), scores, labels


def postprocess(logits: Tensor, boxes: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
    """Per image ``dict(boxes [Q, 4] xyxy pixels, scores [Q], labels [Q] int64)`` sorted by score,
    computed in float32."""
    sizes = torch.tensor([list(size) for size in image_sizes], dtype=torch.float32, device=boxes.device)
    pixels, scores, labels = top_detections(logits.float(), boxes.float(), sizes)
    return [{"boxes": b, "scores": s, "labels": l} for b, s, l in zip(pixels, scores, labels)]
