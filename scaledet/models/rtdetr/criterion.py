"""RT-DETR's training loss: Hungarian matching with a focal class cost, varifocal classification
loss (targets are the IoU of the matched box) plus L1 and GIoU on the boxes, on the last decoder
layer, every earlier layer, the encoder's selected proposals and the denoising queries.

Every box is normalised ``(cx, cy, w, h)``. Term names: ``loss_vfl`` / ``loss_bbox`` / ``loss_giou``
(last layer), with ``_aux_{i}`` (earlier layers), ``_enc`` (proposals) and ``_dn_{i}`` (denoising,
every layer); ``loss`` is the weighted total.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import box_convert, box_iou

from scaledet.models.deformable_detr.criterion import FocalHungarianMatcher
from scaledet.models.detr.criterion import box_losses, num_target_boxes

Matches = list[tuple[Tensor, Tensor]]


def _xyxy(boxes: Tensor) -> Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


class RtDetrCriterion:
    """The weighted set loss of every output (see the module docstring).

    Args:
        num_classes: K.
        matcher: the Hungarian matcher with the focal class cost (Deformable DETR's, shared).
        weights: ``{"loss_vfl", "loss_bbox", "loss_giou"}`` -> weight (paper: 1, 5, 2).
        alpha / gamma: the varifocal loss's negative weighting ``alpha * p^gamma`` (0.75, 2).
    """

    def __init__(self, num_classes: int, matcher: FocalHungarianMatcher, weights: dict[str, float],
                 alpha: float = 0.75, gamma: float = 2.0) -> None:
        self.num_classes, self.matcher, self.weights = num_classes, matcher, dict(weights)
        self.alpha, self.gamma = alpha, gamma

    def terms(self, logits: Tensor, boxes: Tensor, targets: list[dict], matches: Matches,
              num_boxes: float) -> dict[str, Tensor]:
        """Unweighted ``loss_vfl``, ``loss_bbox``, ``loss_giou`` of one output (logits [B, Q, K], boxes [B, Q, 4])."""
        image = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(matches)]).to(logits.device)
        query = torch.cat([rows for rows, _ in matches]).to(logits.device)
        matched = boxes[image, query]
        target_boxes = torch.cat([t["boxes"][cols.to(logits.device)] for t, (_, cols) in zip(targets, matches)])
        target_labels = torch.cat([t["labels"][cols.to(logits.device)] for t, (_, cols) in zip(targets, matches)])
        iou = torch.diag(box_iou(_xyxy(matched.detach()), _xyxy(target_boxes)))
        score = torch.zeros_like(logits)
        score[image, query, target_labels] = iou.to(logits.dtype)  # IoU-aware target of the matched class
        is_target = torch.zeros_like(logits)
        is_target[image, query, target_labels] = 1.0
        weight = self.alpha * logits.detach().sigmoid().pow(self.gamma) * (1 - is_target) + score
        vfl = F.binary_cross_entropy_with_logits(logits, score, weight=weight, reduction="none")
        return {"loss_vfl": vfl.mean(1).sum() * logits.shape[1] / num_boxes,
                **box_losses(matched, target_boxes, num_boxes)}

    def __call__(self, outputs: dict[str, Tensor], targets: list[dict], denoising=None) -> dict[str, Tensor]:
        """``outputs``: ``logits [L, B, Q, K]`` / ``boxes [L, B, Q, 4]`` of every decoder layer,
        ``enc_logits`` / ``enc_boxes`` of the proposals, optionally ``dn_logits`` / ``dn_boxes``
        ``[L, B, N, ...]`` with ``denoising`` (:class:`~scaledet.models.rtdetr.denoising.DenoisingGroups`)."""
        num_boxes = num_target_boxes(targets, outputs["logits"].device)
        layers = len(outputs["logits"])
        named = [(outputs["logits"][-1], outputs["boxes"][-1], "")]
        named += [(outputs["logits"][i], outputs["boxes"][i], f"_aux_{i}") for i in range(layers - 1)]
        named.append((outputs["enc_logits"], outputs["enc_boxes"], "_enc"))
        runs = [(logits, boxes, suffix, self.matcher(logits, boxes, targets), num_boxes)
                for logits, boxes, suffix in named]
        if denoising is not None:  # fixed assignment: each positive copy reconstructs its own object
            matches = [(positive, torch.arange(len(t["labels"]), device=positive.device).tile(denoising.num_groups))
                       for positive, t in zip(denoising.positive, targets)]
            runs += [(outputs["dn_logits"][i], outputs["dn_boxes"][i], f"_dn_{i}", matches,
                      num_boxes * denoising.num_groups) for i in range(layers)]
        losses: dict[str, Tensor] = {}
        total = outputs["logits"].new_zeros(())
        for logits, boxes, suffix, matches, count in runs:
            terms = self.terms(logits, boxes, targets, matches, count)
            total = total + sum(self.weights[name] * value for name, value in terms.items())
            losses.update({name + suffix: value for name, value in terms.items()})
        losses["loss"] = total
        return losses
