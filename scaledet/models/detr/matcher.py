"""Hungarian matching between DETR's predictions and the ground truth."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou


class HungarianMatcher:
    """One-to-one assignment minimising ``cost_class * (-p[label]) + cost_bbox * L1 + cost_giou * (-GIoU)``.

    The cost matrix is built for the whole batch at once and split per image, then solved with
    :func:`scipy.optimize.linear_sum_assignment`.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("at least one matching cost must be non-zero")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    def class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits [N, K+1], target labels [M] -> [N, M] unweighted cost: ``-softmax(logits)[label]``."""
        return -logits.softmax(-1)[:, labels]

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """logits [B,Q,K+1]; boxes [B,Q,4] normalised cxcywh; targets: ``dict(boxes=[M,4] normalised
        cxcywh, labels=[M])`` per image -> per image ``(query_indices, target_indices)`` int64 [min(Q,M)]."""
        batch, num_queries = logits.shape[:2]
        pred_boxes = boxes.flatten(0, 1)  # [B*Q, 4]
        target_labels = torch.cat([target["labels"] for target in targets])
        target_boxes = torch.cat([target["boxes"] for target in targets])
        cost = (
            self.cost_class * self.class_cost(logits.flatten(0, 1), target_labels)
            + self.cost_bbox * torch.cdist(pred_boxes, target_boxes, p=1)
            - self.cost_giou
            * generalized_box_iou(box_convert(pred_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy"))
        )
        cost = cost.view(batch, num_queries, -1).cpu()
        sizes = [len(target["boxes"]) for target in targets]
        matches = []
        for index, block in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(block[index].numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matches
