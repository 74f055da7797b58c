"""From raw outputs to detections: top-k, decode, sigmoid, per-class NMS (hard or gaussian soft)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from .anchors import decode_boxes


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


def select_detections(cls_logits: Tensor, box_codes: Tensor, anchors: Tensor, clip_size: tuple[float, float],
                      max_points: int = 5000, max_detections: int = 100, iou_threshold: float = 0.5,
                      soft_nms: bool = False, soft_nms_sigma: float = 0.5) -> dict[str, Tensor]:
    """Detections of one image.

    Args:
        cls_logits: ``[A, K]`` class logits.
        box_codes: ``[A, 4]`` (ty, tx, th, tw) regression outputs.
        anchors: ``[A, 4]`` xyxy anchors in network-input pixels.
        clip_size: (h, w) of the valid image region; boxes are clipped to it before NMS.

    Returns:
        ``dict(boxes=[N, 4], scores=[N], labels=[N] int64)`` sorted by score, N <= max_detections.
    """
    num_classes = cls_logits.shape[1]
    logits, flat_index = cls_logits.reshape(-1).topk(min(max_points, cls_logits.numel()))
    anchor_index, labels = flat_index // num_classes, flat_index % num_classes
    boxes = decode_boxes(box_codes[anchor_index].float(), anchors[anchor_index])
    h, w = clip_size
    boxes = boxes.clamp(min=0).minimum(boxes.new_tensor([w, h, w, h]))
    scores = logits.sigmoid().float()
    if soft_nms:
        keep, scores_kept = soft_nms_gaussian(boxes, scores, labels, soft_nms_sigma, max_detections)
    else:
        keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]
        scores_kept = scores[keep]
    return {"boxes": boxes[keep], "scores": scores_kept, "labels": labels[keep]}
