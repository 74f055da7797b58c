"""DETR's set loss: classification, L1 and GIoU on matched pairs, on every decoder layer; with the
training accelerators (:mod:`scaledet.models.detr.accelerators`) per query group and on the
denoising queries."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import box_convert, generalized_box_iou

from scaledet.models.detr.accelerators import IGNORED_CLASS, DenoisingQueries
from scaledet.models.detr.matcher import HungarianMatcher


def num_target_boxes(targets: list[dict], device: torch.device) -> float:
    """Number of target boxes, averaged over processes when torch.distributed runs (at least 1)."""
    count = torch.tensor(float(sum(len(target["labels"]) for target in targets)), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        count = count / torch.distributed.get_world_size()
    return max(float(count), 1.0)


def box_losses(boxes: Tensor, target_boxes: Tensor, num_boxes: float) -> dict[str, Tensor]:
    """Matched pairs ``boxes`` / ``target_boxes`` [N, 4] normalised cxcywh -> unweighted ``loss_bbox``
    (L1) and ``loss_giou`` (1 - GIoU), each summed and divided by ``num_boxes`` (the DETR family's)."""
    loss_bbox = F.l1_loss(boxes, target_boxes, reduction="sum") / num_boxes
    giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy"))
    return {"loss_bbox": loss_bbox, "loss_giou": (1 - torch.diag(giou)).sum() / num_boxes}


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
        target_boxes = torch.cat(
            [target["boxes"][cols.to(logits.device)] for target, (_, cols) in zip(targets, matches)]
        )
        return self._terms(logits, classes, boxes[batch_index, query_index], target_boxes, num_boxes)

    def _terms(self, logits: Tensor, classes: Tensor, boxes: Tensor, target_boxes: Tensor,
               num_boxes: float) -> dict[str, Tensor]:
        """logits [B,Q,K+1] against classes [B,Q] (K = no object, weight ``eos_coef``;
        :data:`~scaledet.models.detr.accelerators.IGNORED_CLASS` = no loss); boxes and target_boxes
        [N,4] normalised cxcywh, pairwise -> unweighted ``loss_ce``, ``loss_bbox``, ``loss_giou``."""
        class_weight = torch.ones(self.num_classes + 1, dtype=logits.dtype, device=logits.device)
        class_weight[-1] = self.eos_coef
        loss_ce = F.cross_entropy(logits.transpose(1, 2), classes, class_weight, ignore_index=IGNORED_CLASS)
        return {"loss_ce": loss_ce, **box_losses(boxes, target_boxes, num_boxes)}

    def _sum_layers(self, layers: list[tuple[Tensor, Tensor]], terms_of, suffix: str = "") -> dict[str, Tensor]:
        """``terms_of(logits, boxes)`` on the final layer (``layers[0]``) and the auxiliary ones
        (suffix ``_{i}``) -> the terms by name plus their weighted total ``loss``."""
        losses: dict[str, Tensor] = {}
        total = layers[0][0].new_zeros(())
        for index, (layer_logits, layer_boxes) in enumerate(layers):
            terms = terms_of(layer_logits, layer_boxes)
            total = total + sum(self.weights[name] * value for name, value in terms.items())
            layer_suffix = suffix if index == 0 else f"{suffix}_{index - 1}"
            losses.update({name + layer_suffix: value for name, value in terms.items()})
        losses["loss"] = total
        return losses

    def __call__(self, logits: Tensor, boxes: Tensor, aux: list[tuple[Tensor, Tensor]], targets: list[dict],
                 groups: int = 1) -> dict[str, Tensor]:
        """Final-layer ``logits``/``boxes`` and ``aux`` [(logits, boxes)] of earlier layers; targets with
        normalised cxcywh boxes -> dict of unweighted terms plus the weighted total ``loss``.

        ``groups`` > 1 (Group DETR): the query axis holds that many equal groups, each matched to
        the targets on its own; every term (and the total) is the sum over the groups."""
        num_boxes = num_target_boxes(targets, logits.device)
        layers = [(logits, boxes)] + list(aux)
        if groups == 1:
            return self._sum_layers(layers, lambda lg, bx: self.layer_losses(lg, bx, targets, num_boxes))
        size = logits.shape[1] // groups
        losses: dict[str, Tensor] = {}
        for group in range(groups):
            queries = slice(group * size, (group + 1) * size)
            group_layers = [(layer_logits[:, queries], layer_boxes[:, queries]) for layer_logits, layer_boxes in layers]
            group_losses = self._sum_layers(
                group_layers, lambda lg, bx: self.layer_losses(lg, bx, targets, num_boxes))
            losses = {name: losses.get(name, 0) + value for name, value in group_losses.items()}
        return losses

    def denoising_losses(self, layers: list[tuple[Tensor, Tensor]], queries: DenoisingQueries,
                         targets: list[dict]) -> dict[str, Tensor]:
        """The reconstruction loss of the denoising queries (no matching: each query's target is
        the box it was noised from, or no object for a contrastive negative).

        Args:
            layers: [(logits [B,D,K+1], boxes [B,D,4] normalised cxcywh)] of the denoising
                queries, final decoder layer first, then the auxiliary ones.
            queries: what the queries must reconstruct (:class:`~scaledet.models.detr.accelerators.DenoisingQueries`).
            targets: the batch's targets (their box count normalises the box terms, as in :meth:`__call__`).

        Returns:
            ``loss_ce_dn``, ``loss_bbox_dn``, ``loss_giou_dn`` (auxiliary layers: ``_dn_{i}``),
            box terms divided by the positive count (boxes x groups), and their weighted total ``loss``.
        """
        num_positive = num_target_boxes(targets, layers[0][0].device) * queries.groups
        positive = queries.positive
        target_boxes = queries.target_boxes[positive]
        return self._sum_layers(
            layers, lambda lg, bx: self._terms(lg, queries.target_classes, bx[positive], target_boxes, num_positive),
            suffix="_dn")
