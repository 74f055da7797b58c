"""DETR's set loss: classification, L1 and GIoU on matched pairs, on every decoder layer."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import box_convert, generalized_box_iou

from scaledet.models.detr.matcher import HungarianMatcher


def _num_boxes(targets: list[dict], device: torch.device) -> float:
    """Number of target boxes, averaged over processes when torch.distributed runs (at least 1)."""
    count = torch.tensor(float(sum(len(target["labels"]) for target in targets)), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        count = count / torch.distributed.get_world_size()
    return max(float(count), 1.0)


class SetCriterion:
    """Hungarian-matched losses for one or more decoder layers.

    Unweighted terms: ``loss_ce`` (cross-entropy over K+1 classes, no-object weight ``eos_coef``),
    ``loss_bbox`` (L1 on normalised cxcywh) and ``loss_giou`` (1 - GIoU), both summed over matched
    boxes and divided by the number of target boxes. Auxiliary decoder layers add the same terms with
    suffix ``_{i}``. ``weights`` maps each base term to its weight in the total ``loss``.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, eos_coef: float = 0.1,
                 loss_ce: float = 1.0, loss_bbox: float = 5.0, loss_giou: float = 2.0) -> None:
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.weights = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def layer_losses(self, logits: Tensor, boxes: Tensor, targets: list[dict], num_boxes: float) -> dict[str, Tensor]:
        """logits [B,Q,K+1], boxes [B,Q,4] normalised cxcywh -> unweighted terms for one layer."""
        matches = self.matcher(logits, boxes, targets)
        batch_index = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(matches)]).to(logits.device)
        query_index = torch.cat([rows for rows, _ in matches]).to(logits.device)
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        classes[batch_index, query_index] = torch.cat(
            [target["labels"][cols.to(logits.device)] for target, (_, cols) in zip(targets, matches)]
        )
        class_weight = torch.ones(self.num_classes + 1, dtype=logits.dtype, device=logits.device)
        class_weight[-1] = self.eos_coef
        loss_ce = F.cross_entropy(logits.transpose(1, 2), classes, class_weight)
        matched = boxes[batch_index, query_index]  # [N,4]
        target_boxes = torch.cat(
            [target["boxes"][cols.to(logits.device)] for target, (_, cols) in zip(targets, matches)]
        )
        loss_bbox = F.l1_loss(matched, target_boxes, reduction="sum") / num_boxes
        giou = generalized_box_iou(box_convert(matched, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy"))
        loss_giou = (1 - torch.diag(giou)).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def __call__(self, logits: Tensor, boxes: Tensor, aux: list[tuple[Tensor, Tensor]], targets: list[dict]) -> dict[str, Tensor]:
        """Final-layer ``logits``/``boxes`` and ``aux`` [(logits, boxes)] of earlier layers; targets with
        normalised cxcywh boxes -> dict of unweighted terms plus the weighted total ``loss``."""
        num_boxes = _num_boxes(targets, logits.device)
        layers = [(logits, boxes, "")] + [(layer_logits, layer_boxes, f"_{index}")
                                           for index, (layer_logits, layer_boxes) in enumerate(aux)]
        losses: dict[str, Tensor] = {}
        total = logits.new_zeros(())
        for layer_logits, layer_boxes, suffix in layers:
            terms = self.layer_losses(layer_logits, layer_boxes, targets, num_boxes)
            total = total + sum(self.weights[name] * value for name, value in terms.items())
            losses.update({name + suffix: value for name, value in terms.items()})
        losses["loss"] = total
        return losses
