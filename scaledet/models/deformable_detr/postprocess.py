"""Deformable DETR's post-processing, written once: the eager model and the ONNX graph both run
:func:`ranked_detections`.

As transformers' ``DeformableDetrImageProcessor.post_process_object_detection``: every class of
every query is a candidate with score ``sigmoid(logit)``; the ``top_k`` best (query, class) pairs
are the detections (a query may appear with several classes; no NMS); boxes go from normalised
``(cx, cy, w, h)`` to xyxy pixels of the *input* image, clipped to it (transformers' are not).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from scaledet.models.base import Detections
from scaledet.models.detr.postprocess import per_image, pixel_boxes


def ranked_detections(logits: Tensor, boxes: Tensor, image_sizes: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``top_k`` (query, class) pairs of each image by sigmoid score.

    Args:
        logits: ``[B, Q, K]`` class logits (independent sigmoids, no background class).
        boxes: ``[B, Q, 4]`` normalised cxcywh in [0, 1].
        image_sizes: ``[B, 2]`` float ``(h, w)`` of each input image, in pixels.
        top_k: detections per image (at most ``Q * K``).

    Returns:
        ``(boxes [B, k, 4] xyxy pixels inside the image, scores [B, k], labels [B, k] int64)``, ``k = min(top_k, Q*K)``,
        by descending score. Tensor ops only (the export graph's post-processing; ``topk`` becomes ONNX ``TopK``).
    """
    num_classes = logits.shape[2]
    probs = logits.sigmoid().flatten(1)  # [B, Q*K]
    scores, index = torch.topk(probs, min(top_k, probs.shape[1]), dim=1)
    queries = torch.div(index, num_classes, rounding_mode="floor")
    labels = index % num_classes
    pixels = pixel_boxes(boxes, image_sizes)
    return torch.gather(pixels, 1, queries.unsqueeze(-1).expand(-1, -1, 4)), scores, labels


def postprocess(logits: Tensor, boxes: Tensor, image_sizes: Sequence[tuple[int, int]], top_k: int) -> list[Detections]:
    """logits [B,Q,K], boxes [B,Q,4] normalised cxcywh, image_sizes [(h, w)] -> per image
    ``dict(boxes=[k,4] xyxy pixels, scores=[k], labels=[k] int64)`` by score, in float32."""
    logits, boxes = logits.float(), boxes.float()
    sizes = torch.tensor([list(size) for size in image_sizes], dtype=torch.float32, device=boxes.device)
    return per_image(*ranked_detections(logits, boxes, sizes, top_k))
