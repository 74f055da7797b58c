"""DETR's post-processing, written once: the eager model and the ONNX graph both run
:func:`ranked_detections`.

DETR predicts a set: no NMS, every one of the Q queries is a detection. A query's score and label
are the largest softmax probability over the K object classes (the no-object class, last, is
dropped); its box goes from normalised ``(cx, cy, w, h)`` to xyxy pixels of the *input* image
(the network's resize and padding do not enter: boxes are relative to the unpadded image), clipped
to the image (a query's box may reach past an edge: ``cx - w/2 < 0``; transformers' post-processing
leaves it there, our tests clip its boxes before comparing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_convert

from scaledet.models.base import Detections


def ranked_detections(logits: Tensor, boxes: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Scores, labels and pixel boxes of every query, each image's queries by descending score.

    Args:
        logits: ``[B, Q, K + 1]`` class logits, no-object last.
        boxes: ``[B, Q, 4]`` normalised cxcywh in [0, 1].
        image_sizes: ``[B, 2]`` float ``(h, w)`` of each input image, in pixels.

    Returns:
        ``(boxes [B, Q, 4] xyxy pixels inside the image, scores [B, Q], labels [B, Q] int64)``. Tensor ops only:
        this is the export graph's post-processing too (:mod:`scaledet.models.detr.export`; the
        sort becomes ONNX ``TopK``, ``stable=True`` has no ONNX translation, so the order of
        exactly equal scores is the backend's).
    """
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)  # [B, Q]
    pixels = pixel_boxes(boxes, image_sizes)
    order = scores.argsort(dim=1, descending=True)
    pixels = torch.gather(pixels, 1, order.unsqueeze(-1).expand(-1, -1, 4))
    return pixels, torch.gather(scores, 1, order), torch.gather(labels, 1, order)


def pixel_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """``[B, Q, 4]`` normalised cxcywh, ``[B, 2]`` float ``(h, w)`` -> ``[B, Q, 4]`` xyxy pixels inside
    each image (clipped to ``[0, w] x [0, h]``). Tensor ops only (the export graphs run it too)."""
    limit = image_sizes.to(boxes.dtype).flip(-1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] (w, h, w, h)
    return (box_convert(boxes, "cxcywh", "xyxy") * limit).clamp(min=0).minimum(limit)


def per_image(boxes: Tensor, scores: Tensor, labels: Tensor) -> list[Detections]:
    """Batched ``[B, N, 4]``, ``[B, N]``, ``[B, N]`` -> one ``dict(boxes, scores, labels)`` per image."""
    return [{"boxes": b, "scores": s, "labels": l} for b, s, l in zip(boxes, scores, labels)]


def postprocess(logits: Tensor, boxes: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
    """logits [B,Q,K+1] (no-object last), boxes [B,Q,4] normalised cxcywh, image_sizes [(h, w)]
    -> per image ``dict(boxes=[Q,4] xyxy pixels, scores=[Q], labels=[Q] int64)`` sorted by score.

    Computed in float32 (outputs of a bf16 / fp16 autocast forward are cast first); all Q kept.
    """
    logits, boxes = logits.float(), boxes.float()
    sizes = torch.tensor([list(size) for size in image_sizes], dtype=torch.float32, device=boxes.device)
    return per_image(*ranked_detections(logits, boxes, sizes))
