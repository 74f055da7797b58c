"""EfficientDet post-processing, the one implementation: top-k, decode, clip, sigmoid, per-class NMS
(hard or gaussian soft).

:func:`select_detections` serves the eager model and, with ``fast=True``, :func:`scaledet.optimize`;
the export graph (:mod:`.export`) reuses :func:`top_candidates` and :func:`decode_candidates`. Every path
searches the top-k in two steps (same pairs as one top-k over every (anchor, class) pair):

* the ``k`` best pairs all lie in the ``k`` anchors with the best per-anchor maximum, so one ``amax``
  over classes and a top-k over anchors shrink the search from ``A*K`` to ``k*K`` values before the
  final top-k (with COCO's 90 classes, D0 at 512 px: 4.4M values, a 35 ms top-k, become 450K).

The fast path takes two more exact shortcuts (same detections):

* among those ``k*K`` values only the ones >= the k-th best anchor maximum can be in the answer (a
  data-dependent filter, so not in the export graph);
* greedy NMS is prefix-consistent (a box's fate depends only on higher-scored boxes), so NMS runs
  on the best ``chunk`` candidates first and only widens when fewer than ``max_detections``
  survive. Small prefixes also take torchvision's single-call coordinate-offset path.

Boxes are xyxy in network-input pixels throughout; the model divides by each image's resize scale.
A candidate that clipping leaves without area (it lay wholly in the padding or outside the image: a
zero-width line on the image's edge) is no detection: the eager paths drop it before NMS, the export
graph gives it score 0, which :func:`with_area_only` drops (:data:`MIN_BOX_SIDE`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from scaledet.models.base import Detections

from .anchors import decode_boxes

#: candidates narrower or shorter than this (network pixels) after clipping are dropped, as torchvision's
#: detectors drop them (``remove_small_boxes(boxes, 1e-2)``): an undertrained model's detections in the
#: padding of a portrait photo became dozens of zero-width boxes on its edge, scored like real ones,
#: which NMS never suppresses (no area, no overlap) and which pushed real detections out of the 100 kept
MIN_BOX_SIDE = 1e-2


def has_area(boxes: Tensor) -> Tensor:
    """xyxy ``[..., 4]`` -> bool ``[...]``: both sides at least :data:`MIN_BOX_SIDE`."""
    return (boxes[..., 2:] - boxes[..., :2] >= MIN_BOX_SIDE).all(dim=-1)


def with_area_only(results: list[Detections]) -> list[Detections]:
    """The export graph's per-image detections without its score-0 rows (candidates without area)."""
    return [{key: value[result["scores"] > 0] for key, value in result.items()} for result in results]


def soft_nms_gaussian(boxes: Tensor, scores: Tensor, classes: Tensor, sigma: float = 0.5,
                      max_detections: int = 100, score_threshold: float = 0.001) -> tuple[Tensor, Tensor]:
    """Per-class gaussian soft-NMS (Bodla et al.): repeatedly keep the best box and decay the
    scores of the same class by ``exp(-iou^2 / sigma)``.

    boxes ``[N, 4]`` xyxy, scores ``[N]``, classes ``[N]``. Returns (kept indices, their decayed scores),
    at most ``max_detections``, by descending decayed score.
    """
    scores = scores.clone()
    alive = scores >= score_threshold
    keep, kept_scores = [], []
    for _ in range(min(max_detections, boxes.shape[0])):
        masked = torch.where(alive, scores, torch.full_like(scores, -1.0))
        best = int(masked.argmax())
        if masked[best] < score_threshold:
            break
        keep.append(best)
        kept_scores.append(scores[best])
        alive[best] = False
        same = alive & (classes == classes[best])
        iou = box_iou(boxes[best : best + 1], boxes[same])[0]
        scores[same] = scores[same] * torch.exp(-(iou * iou) / sigma)
        alive &= scores >= score_threshold
    index = torch.tensor(keep, dtype=torch.long, device=boxes.device)
    return index, torch.stack(kept_scores) if kept_scores else scores.new_zeros(0)


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


def top_candidates(cls_logits: Tensor, k: int, fast: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best (anchor, class) pairs of each image, searched among the ``k`` anchors with the best
    maxima (see the module docstring; static shapes, so the export graph uses it too).

    Args:
        cls_logits: ``[B, A, K]`` class logits.
        k: candidates per image (capped at ``A*K``).
        fast: also filter those anchors' values by the k-th best maximum before the final top-k (exact;
            data-dependent shapes, so not for export).

    Returns:
        (logits ``[B, k]`` descending, anchor index ``[B, k]``, label ``[B, k]`` int64), equal to
        ``cls_logits.reshape(B, -1).topk(k)`` split into (anchor, class) (among tied values, the pairs
        kept may differ).
    """
    batch, num_anchors, num_classes = cls_logits.shape
    k = min(k, num_anchors * num_classes)
    if num_anchors <= k:
        logits, flat = cls_logits.reshape(batch, -1).topk(k, dim=1)
        return logits, flat // num_classes, flat % num_classes
    anchors = max_over_classes(cls_logits).topk(k, dim=1).indices  # [B, k] anchors holding the top-k pairs
    rows = (anchors + torch.arange(batch, device=anchors.device)[:, None] * num_anchors).reshape(-1)
    sub = cls_logits.reshape(-1, num_classes).index_select(0, rows).reshape(batch, k, num_classes)
    if fast:
        logits, flat = zip(*(_top_in_anchors(image, k) for image in sub))
        logits, flat = torch.stack(logits), torch.stack(flat)
    else:
        logits, flat = sub.reshape(batch, -1).topk(k, dim=1)
    return logits, anchors.gather(1, flat // num_classes), flat % num_classes


def decode_candidates(box_codes: Tensor, anchors: Tensor, anchor_index: Tensor, clip_sizes: Tensor) -> Tensor:
    """Decode the candidates' boxes and clip them to each image's valid region.

    Args:
        box_codes: ``[B, A, 4]`` (ty, tx, th, tw) regression outputs.
        anchors: ``[A, 4]`` xyxy network-input pixels.
        anchor_index: ``[B, k]`` candidates' anchors.
        clip_sizes: ``[B, 2]`` (h, w) of the valid (unpadded) region of each image, network pixels.

    Returns:
        ``[B, k, 4]`` float32 xyxy boxes inside ``[0, w] x [0, h]``.
    """
    codes = torch.gather(box_codes, 1, anchor_index.unsqueeze(-1).expand(-1, -1, 4)).float()
    boxes = decode_boxes(codes, anchors[anchor_index])
    limit = clip_sizes.to(boxes).flip(-1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] = (w, h, w, h)
    return boxes.clamp(min=0).minimum(limit)


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


def select_detections(cls_logits: Tensor, box_codes: Tensor, anchors: Tensor, clip_sizes: Tensor,
                      max_points: int = 5000, max_detections: int = 100, iou_threshold: float = 0.5,
                      soft_nms: bool = False, soft_nms_sigma: float = 0.5, fast: bool = False) -> list[Detections]:
    """Detections of a batch: the ``max_points`` best (anchor, class) pairs, decoded, clipped, those
    left without area dropped (:func:`has_area`), NMS.

    Args:
        cls_logits: ``[B, A, K]`` class logits; box_codes: ``[B, A, 4]`` (ty, tx, th, tw).
        anchors: ``[A, 4]`` xyxy network-input pixels.
        clip_sizes: ``[B, 2]`` valid (h, w) per image; boxes are clipped to it before NMS.
        soft_nms: gaussian soft-NMS (:func:`soft_nms_gaussian`) instead of hard per-class NMS.
        fast: the exact shortcuts of the module docstring (same detections).

    Returns:
        per image ``dict(boxes=[N, 4] xyxy network pixels, scores=[N] float32, labels=[N] int64)``,
        by descending score, N <= ``max_detections``.
    """
    logits, anchor_index, labels = top_candidates(cls_logits, max_points, fast)
    boxes = decode_candidates(box_codes, anchors, anchor_index, clip_sizes)
    scores = logits.float().sigmoid()
    results = []
    for image_boxes, image_scores, image_labels in zip(boxes, scores, labels):
        area = has_area(image_boxes)
        if not bool(area.all()):  # order kept: the candidates stay sorted by score
            image_boxes, image_scores, image_labels = image_boxes[area], image_scores[area], image_labels[area]
        if soft_nms:
            keep, image_scores = soft_nms_gaussian(image_boxes, image_scores, image_labels, soft_nms_sigma,
                                                   max_detections)
        else:
            keep = (prefix_nms(image_boxes, image_scores, image_labels, iou_threshold, max_detections) if fast
                    else batched_nms(image_boxes, image_scores, image_labels, iou_threshold)[:max_detections])
            image_scores = image_scores[keep]
        results.append({"boxes": image_boxes[keep], "scores": image_scores, "labels": image_labels[keep]})
    return results
