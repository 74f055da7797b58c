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

from scaledet.models.base import Detections
from scaledet.models.deformable_detr.postprocess import ranked_detections


def top_detections(logits: Tensor, boxes: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """logits [B, Q, K], boxes [B, Q, 4] normalised cxcywh, image_sizes [B, 2] float (h, w) ->
    ``(boxes [B, Q, 4] xyxy pixels, scores [B, Q], labels [B, Q] int64)``, by descending score: the
    best Q (query, class) pairs, as the official post-processor (Deformable DETR's
    :func:`~scaledet.models.deformable_detr.postprocess.ranked_detections` with ``top_k = Q``)."""
    return ranked_detections(logits, boxes, image_sizes, logits.shape[1])


def postprocess(logits: Tensor, boxes: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
    """Per image ``dict(boxes [Q, 4] xyxy pixels, scores [Q], labels [Q] int64)`` sorted by score,
    computed in float32."""
    sizes = torch.tensor([list(size) for size in image_sizes], dtype=torch.float32, device=boxes.device)
    pixels, scores, labels = top_detections(logits.float(), boxes.float(), sizes)
    return [{"boxes": b, "scores": s, "labels": l} for b, s, l in zip(pixels, scores, labels)]
