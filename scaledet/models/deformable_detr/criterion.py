"""Deformable DETR's set loss: Hungarian matching with a focal class cost, sigmoid focal loss,
L1 and GIoU on matched pairs, on every decoder layer and (two-stage) on the encoder's proposals.

The box terms and the per-layer bookkeeping are DETR's (:class:`scaledet.models.detr.criterion.SetCriterion`);
what differs is the classification: K independent sigmoids instead of a softmax with a
no-object class.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from scaledet.models.detr.criterion import SetCriterion, box_losses, num_target_boxes
from scaledet.models.detr.matcher import HungarianMatcher


class FocalHungarianMatcher(HungarianMatcher):
    """DETR's one-to-one assignment with the official Deformable DETR class cost
    ``focal(label) = alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` of the sigmoid
    probability ``p`` of the target's class (logits [B,Q,K], no no-object class)."""

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__(cost_class, cost_bbox, cost_giou)
        self.alpha, self.gamma = alpha, gamma

    def class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits [N, K], target labels [M] -> [N, M] unweighted focal cost."""
        probs = logits.sigmoid()
        negative = (1 - self.alpha) * probs ** self.gamma * -(1 - probs + 1e-8).log()
        positive = self.alpha * (1 - probs) ** self.gamma * -(probs + 1e-8).log()
        return positive[:, labels] - negative[:, labels]


class FocalSetCriterion(SetCriterion):
    """Hungarian-matched losses with a sigmoid focal classification term.

    Unweighted terms: ``loss_ce`` (sigmoid focal loss over all queries and K classes, summed and
    divided by the number of target boxes), ``loss_bbox`` (L1 on normalised cxcywh) and
    ``loss_giou`` (1 - GIoU) over matched pairs, divided by the number of target boxes. Auxiliary
    decoder layers add the same terms with suffix ``_{i}``, the encoder's proposals (two-stage,
    every target relabelled as class 0: objectness) with suffix ``_enc``. ``weights`` maps each
    base term to its weight in the total ``loss`` (official: 2, 5, 2).
    """

    def __init__(self, num_classes: int, matcher: FocalHungarianMatcher, loss_ce: float = 2.0,
                 loss_bbox: float = 5.0, loss_giou: float = 2.0) -> None:
        super().__init__(num_classes, matcher, eos_coef=0.0, loss_ce=loss_ce, loss_bbox=loss_bbox, loss_giou=loss_giou)

    def layer_losses(self, logits: Tensor, boxes: Tensor, targets: list[dict], num_boxes: float) -> dict[str, Tensor]:
        """logits [B,Q,K], boxes [B,Q,4] normalised cxcywh -> unweighted terms for one layer."""
        matches = self.matcher(logits, boxes, targets)
        batch_index = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(matches)]).to(logits.device)
        query_index = torch.cat([rows for rows, _ in matches]).to(logits.device)
        columns = [cols.to(logits.device) for _, cols in matches]
        onehot = torch.zeros_like(logits)
        onehot[batch_index, query_index, torch.cat([t["labels"][c] for t, c in zip(targets, columns)])] = 1.0
        alpha, gamma = self.matcher.alpha, self.matcher.gamma
        loss_ce = sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma, reduction="sum") / num_boxes
        matched = boxes[batch_index, query_index]  # [N,4]
        target_boxes = torch.cat([t["boxes"][c] for t, c in zip(targets, columns)])
        return {"loss_ce": loss_ce, **box_losses(matched, target_boxes, num_boxes)}

    def __call__(self, logits: Tensor, boxes: Tensor, aux: list[tuple[Tensor, Tensor]], targets: list[dict],
                 proposals: tuple[Tensor, ...] = ()) -> dict[str, Tensor]:
        """DETR's per-layer losses plus, given ``proposals = (logits [B,S,K], boxes [B,S,4])``, the
        encoder-proposal terms against class-agnostic targets."""
        losses = super().__call__(logits, boxes, aux, targets)
        if proposals:
            agnostic = [{"boxes": t["boxes"], "labels": torch.zeros_like(t["labels"])} for t in targets]
            terms = self.layer_losses(*proposals, agnostic, num_target_boxes(targets, logits.device))
            losses["loss"] = losses["loss"] + sum(self.weights[name] * value for name, value in terms.items())
            losses.update({name + "_enc": value for name, value in terms.items()})
        return losses
