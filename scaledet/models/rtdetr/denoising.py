"""RT-DETR's contrastive denoising groups (from DN-DETR / DINO): noised copies of the ground truth
fed to the decoder in training next to the selected queries, each to be reconstructed.

Every group holds each image's M ground-truth objects twice (padded to the batch's largest M):
a *positive* copy with the box corners moved by less than half the box size, to be reconstructed,
and a *negative* copy moved by between one and two halves, to be classified as nothing. Labels are
flipped to a random class with probability ``label_noise_ratio / 2``. Groups: ``num_denoising //
max M`` (at least 1). The self-attention mask lets no selected query see a denoising query and no
group see another one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from scaledet.models.deformable_attention import inverse_sigmoid


@dataclass
class DenoisingGroups:
    """Decoder inputs and bookkeeping of the denoising queries.

    Attributes:
        queries: [B, N, C] embedded noised labels (N = 2 * max M * groups).
        box_logits: [B, N, 4] noised boxes, unactivated.
        attn_mask: [N + Q, N + Q] float, ``-inf`` where attention is not allowed.
        positive: per image, the query indices of its positive copies (group by group, object order).
        num_groups: groups.
    """

    queries: Tensor
    box_logits: Tensor
    attn_mask: Tensor
    positive: list[Tensor]
    num_groups: int


def denoising_groups(targets: list[dict[str, Tensor]], class_embed: nn.Embedding, num_classes: int,
                     num_queries: int, num_denoising: int, label_noise_ratio: float,
                     box_noise_scale: float) -> DenoisingGroups | None:
    """Build the groups for ``targets`` (``boxes`` [M, 4] normalised cxcywh, ``labels`` [M]); ``None``
    when no image has an object or ``num_denoising`` is 0. Random draws use torch's generator."""
    counts = [len(target["labels"]) for target in targets]
    most = max(counts, default=0)
    if num_denoising <= 0 or most == 0:
        return None
    groups = max(num_denoising // most, 1)
    batch, device = len(targets), targets[0]["labels"].device
    labels = torch.full([batch, most], num_classes, dtype=torch.int32, device=device)
    boxes = torch.zeros([batch, most, 4], device=device)
    present = torch.zeros([batch, most], dtype=torch.bool, device=device)
    for index, (count, target) in enumerate(zip(counts, targets)):
        labels[index, :count] = target["labels"].to(torch.int32)
        boxes[index, :count] = target["boxes"]
        present[index, :count] = True
    labels, boxes, present = labels.tile(1, 2 * groups), boxes.tile(1, 2 * groups, 1), present.tile(1, 2 * groups)
    negative = torch.zeros([batch, 2 * most, 1], device=device)
    negative[:, most:] = 1
    negative = negative.tile(1, groups, 1)  # [B, N, 1]: 1 on the negative copies
    positive = ((1 - negative.squeeze(-1)) * present).nonzero()[:, 1].split([c * groups for c in counts])
    if label_noise_ratio > 0:
        flip = torch.rand_like(labels, dtype=torch.float) < label_noise_ratio * 0.5
        random_labels = torch.randint_like(flip, 0, num_classes, dtype=labels.dtype)
        labels = torch.where(flip & present, random_labels, labels)
    if box_noise_scale > 0:
        corners = box_convert(boxes, "cxcywh", "xyxy")
        half_size = boxes[..., 2:].tile(1, 1, 2) * 0.5 * box_noise_scale
        sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
        amount = torch.rand_like(boxes)
        amount = (amount + 1.0) * negative + amount * (1 - negative)
        corners = (corners + sign * amount * half_size).clamp(0.0, 1.0)
        boxes = box_convert(corners, "xyxy", "cxcywh")
    box_logits = inverse_sigmoid(boxes)
    total = 2 * most * groups
    mask = torch.zeros([total + num_queries, total + num_queries], device=device)
    mask[total:, :total] = -torch.inf  # the selected queries never see the denoising ones
    for group in range(groups):
        start, end = 2 * most * group, 2 * most * (group + 1)
        mask[start:end, :start] = -torch.inf
        mask[start:end, end:total] = -torch.inf
    return DenoisingGroups(class_embed(labels), box_logits, mask, list(positive), groups)
