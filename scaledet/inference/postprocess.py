"""Fast EfficientDet post-processing, equal to the eager per-image path.

Two exact shortcuts:

* top-k without scanning every (anchor, class) pair twice: the ``k`` best pairs all lie in the ``k``
  anchors with the best per-anchor maximum, so one ``amax`` over classes and a top-k over anchors
  shrink the search from ``A*K`` to ``k*K`` values before the final top-k;
* greedy NMS is prefix-consistent (a box's fate depends only on higher-scored boxes), so NMS runs
  on the best ``chunk`` candidates first and only widens when fewer than ``max_detections``
  survive. Small prefixes also take torchvision's single-call coordinate-offset path.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from scaledet.models.efficientdet.anchors import decode_boxes


def _top_in_anchors(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """logits ``[k, K]`` of the k anchors with the best maxima (any order) -> top-k (values, flat index).

    The k-th best anchor maximum ``t`` is a lower bound of the k-th best value (the k maxima are all
    >= t), so only entries >= t can be in the answer: a cheap filter before the final top-k."""
    threshold = logits.amax(dim=1).min()
    flat = logits.reshape(-1)
    index = (flat >= threshold).nonzero().squeeze(1)
    values, order = flat[index].topk(min(k, index.numel()))
    return values, index[order]


def max_over_classes(cls_logits: Tensor) -> Tensor:
    """``cls_logits.amax(dim=-1)``, faster on CPU: the elementwise maximum of two (overlapping, for an
    odd class count) halves first, because PyTorch reduces long rows much faster than 90-wide ones
    (D0: 1.9 -> 1.4 ms). Exact: max is idempotent and order-free."""
    num_classes = cls_logits.shape[-1]
    half = (num_classes + 1) // 2
    return cls_logits[..., :half].maximum(cls_logits[..., num_classes - half:]).amax(dim=-1)


def top_candidates(cls_logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """cls_logits ``[B, A, K]`` -> (logits ``[B, k]`` descending, anchor index ``[B, k]``, label ``[B, k]``),
    equal to ``cls_logits.reshape(B, -1).topk(k)`` split into (anchor, class)."""
    batch, num_anchors, num_classes = cls_logits.shape
    k = min(k, num_anchors * num_classes)
    if num_anchors <= k:
        logits, flat = cls_logits.reshape(batch, -1).topk(k, dim=1)
        return logits, flat // num_classes, flat % num_classes
    anchors = max_over_classes(cls_logits).topk(k, dim=1).indices  # [B, k] anchors holding the top-k pairs
    rows = (anchors + torch.arange(batch, device=anchors.device)[:, None] * num_anchors).reshape(-1)
    sub = cls_logits.reshape(-1, num_classes).index_select(0, rows).reshape(batch, k, num_classes)
    logits, flat = zip(*(_top_in_anchors(image, k) for image in sub))
    logits, flat = torch.stack(logits), torch.stack(flat)
    return logits, anchors.gather(1, flat // num_classes), flat % num_classes


def prefix_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, max_detections: int,
               chunk: int = 1000) -> Tensor:
    """Per-class NMS of score-sorted ``boxes [N, 4]`` xyxy; indices of the first ``max_detections`` kept,
    equal to ``batched_nms(...)[:max_detections]``."""
    size = min(chunk, boxes.shape[0])
    while True:
        keep = batched_nms(boxes[:size], scores[:size], labels[:size], iou_threshold)
        if keep.numel() >= max_detections or size >= boxes.shape[0]:
            return keep[:max_detections]
        size = min(size * 2, boxes.shape[0])


def efficientdet_detections(cls_logits: Tensor, box_codes: Tensor, anchors: Tensor, clip_sizes: Tensor,
                            max_points: int = 5000, max_detections: int = 100,
                            iou_threshold: float = 0.5) -> list[dict[str, Tensor]]:
    """Batched decode + NMS.

    Args:
        cls_logits: ``[B, A, K]`` class logits; box_codes: ``[B, A, 4]`` (ty, tx, th, tw).
        anchors: ``[A, 4]`` xyxy network pixels; clip_sizes: ``[B, 2]`` valid (h, w) per image.

    Returns:
        per image ``dict(boxes=[N, 4] xyxy network pixels, scores=[N], labels=[N] int64)``, by score.
    """
    logits, anchor_index, labels = top_candidates(cls_logits, max_points)
    rows = (anchor_index + torch.arange(len(anchor_index), device=anchor_index.device)[:, None] * anchors.shape[0])
    codes = box_codes.reshape(-1, 4).index_select(0, rows.reshape(-1)).reshape(*anchor_index.shape, 4).float()
    boxes = decode_boxes(codes, anchors[anchor_index])  # [B, k, 4]
    limit = clip_sizes.to(boxes).flip(-1).repeat(1, 2)[:, None, :]  # [B, 1, 4] = (w, h, w, h)
    boxes = boxes.clamp(min=0).minimum(limit)
    scores = logits.float().sigmoid()
    results = []
    for image_boxes, image_scores, image_labels in zip(boxes, scores, labels):
        keep = prefix_nms(image_boxes, image_scores, image_labels, iou_threshold, max_detections)
        results.append({"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": image_labels[keep]})
    return results
