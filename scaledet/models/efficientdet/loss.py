"""Training targets and loss: IoU matching, sigmoid focal loss and Huber box loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou, sigmoid_focal_loss

from .anchors import encode_boxes


def match_anchors(anchors: Tensor, boxes: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Index of the ground-truth box matched to each anchor, or -1 (background).

    anchors ``[A, 4]`` and boxes ``[M, 4]`` are xyxy. An anchor is positive when its best IoU is
    ``>= iou_threshold``; in addition every box is forced onto its best anchor. Returns ``[A]`` int64.
    """
    matches = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    if boxes.numel() == 0:
        return matches
    iou = box_iou(boxes, anchors)  # [M, A]
    best_iou, best_box = iou.max(dim=0)
    matches = torch.where(best_iou >= iou_threshold, best_box, matches)
    matches[iou.argmax(dim=1)] = torch.arange(boxes.shape[0], device=anchors.device)
    return matches


def detection_loss(cls_logits: Tensor, box_codes: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]],
                   num_classes: int, match_iou: float = 0.5, alpha: float = 0.25, gamma: float = 1.5,
                   delta: float = 0.1, box_weight: float = 50.0) -> dict[str, Tensor]:
    """EfficientDet loss for a batch.

    Args:
        cls_logits: ``[B, A, num_classes]`` class logits in anchor order.
        box_codes: ``[B, A, 4]`` predicted (ty, tx, th, tw).
        anchors: ``[A, 4]`` xyxy, in the same pixels as the target boxes.
        targets: per image ``dict(boxes=[M, 4] xyxy, labels=[M] int64)``.

    Returns:
        ``class_loss`` (focal, summed / (positives + 1)), ``box_loss`` (Huber on the non-zero
        target coordinates of positives, summed / (4 * (positives + 1))) and ``loss = class_loss + box_weight * box_loss``.
    """
    cls_targets, box_targets, positive = [], [], []
    for target in targets:
        matches = match_anchors(anchors, target["boxes"], match_iou)
        is_pos = matches >= 0
        safe = matches.clamp(min=0)
        onehot = torch.zeros_like(cls_logits[0])
        if target["labels"].numel():
            onehot[is_pos, target["labels"][safe[is_pos]]] = 1.0
            box_targets.append(encode_boxes(target["boxes"][safe], anchors))
        else:
            box_targets.append(torch.zeros_like(anchors))
        cls_targets.append(onehot)
        positive.append(is_pos)
    cls_targets, box_targets, positive = torch.stack(cls_targets), torch.stack(box_targets), torch.stack(positive)
    normalizer = positive.sum().to(cls_logits.dtype) + 1.0
    class_loss = sigmoid_focal_loss(cls_logits, cls_targets, alpha=alpha, gamma=gamma, reduction="sum") / normalizer
    huber = F.huber_loss(box_codes, box_targets, reduction="none", delta=delta)
    # as in the official TF code, a target coordinate that is exactly 0 carries no loss
    mask = positive.unsqueeze(-1) & (box_targets != 0)
    box_loss = (huber * mask).sum() / (4.0 * normalizer)
    return {"loss": class_loss + box_weight * box_loss, "class_loss": class_loss, "box_loss": box_loss}
