"""Training accelerators for plain DETR that keep its architecture and its published weights.

Both are used only in training mode; at inference the network is DETR as published (the
matching queries of group 0, no extra decoder inputs), so outputs and exported graphs are unchanged.

* **Group queries** (Group DETR, Chen et al. 2023): ``query_groups = G`` sets of ``Q`` learned
  queries. Each group is matched one-to-one to the ground truth on its own (G x the supervision,
  one-to-many overall) and the groups cannot see each other in the decoder's self-attention, so
  each group is a DETR decoder pass of its own sharing the weights. Group 0 is ``query_embed``
  (what a published checkpoint holds); groups 1..G-1 are ``extra_query_groups``.
* **Query denoising** (DN-DETR, Li et al. 2022; optional contrastive negatives as in DINO, Zhang et
  al. 2023): ``denoising_groups`` copies of the ground truth, with noised boxes (centre shift up to
  ``box_noise * w / 2`` (``h / 2``), width and height scaled by ``1 +- box_noise``) and labels
  (each flipped to a random class with probability ``label_noise``), go through the decoder as
  extra queries that must reconstruct the clean box and label (no matching). With
  ``contrastive=True`` every group also holds a negative copy with noise between ``box_noise`` and
  ``2 * box_noise`` that must predict "no object".

**Adaptation to plain DETR.** DN-DETR feeds the noised boxes as DAB-DETR's anchor boxes and the
labels as content queries. Plain DETR's decoder has learned positional queries (``query_embed``,
added to queries and keys in every attention) and starts from a zero content input; it has no
anchor boxes. Here a denoising query therefore gets

* positional query: ``box_embed(sine(noised box))``, a two-layer MLP on the sine encoding of the
  four normalised box coordinates (the encoding DETR uses for pixel positions): where to look, and
* content input: ``label_embed(noised label) + box_embed(sine(noised box))``. DAB-DETR's decoder
  predicts a box as an offset to its anchor; plain DETR's box head predicts absolute boxes from
  the content stream, where the positional query never enters (it is added to attention queries
  and keys only), so the noised box is given to the content input too,

both used only in training (the ``denoising.`` parameters). DN-DETR's extra "is denoising"
indicator bit is not needed: matching queries start from zero content. The matching queries can
see no denoising query and denoising groups cannot see each other; denoising queries see the
matching queries of group 0 (their context at inference) and the real queries of their own group.
Slots that pad a denoising group to the batch's largest ground-truth count are hidden from every
query and get no loss.

Checkpoints: the ``extra_query_groups`` and ``denoising.`` parameters are saved with the model
(its config has ``query_groups`` / ``denoising_groups``, so a saved run resumes or fine-tunes with
them). Loading a file into a model whose training-only parameters differ (a published checkpoint
into a model with accelerators, or an accelerated run's file into one without, e.g. for inference)
fills the missing ones with a fresh initialisation and drops the ones the model does not have
(:func:`align_training_only`); nothing the inference network uses is touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from scaledet.models.detr.backbone import SinePositionEncoding

log = logging.getLogger(__name__)

#: state-dict key prefixes of the training-only parameters (unused at inference)
TRAINING_ONLY_PREFIXES: tuple[str, ...] = ("extra_query_groups.", "denoising.")

#: training-only entries with one row per class (re-initialised with the class head on a new class count)
CLASS_DEPENDENT_PREFIXES: tuple[str, ...] = ("denoising.label_embed.",)

#: the target class of padding slots, ignored by the loss (``F.cross_entropy``'s ``ignore_index``)
IGNORED_CLASS = -100


@dataclass(frozen=True)
class DenoisingSettings:
    """Query denoising's options (the ``denoising_*`` fields of the variant table).

    Attributes:
        groups: denoising groups per batch (DN-DETR: 5).
        label_noise: probability of flipping a label to a random class (DN-DETR: 0.2).
        box_noise: box noise scale (DN-DETR: 0.4; see the module docstring).
        contrastive: add a negative copy per ground-truth box (DINO) that must predict no object.
    """

    groups: int = 5
    label_noise: float = 0.2
    box_noise: float = 0.4
    contrastive: bool = False

    def __post_init__(self) -> None:
        if self.groups < 1:
            raise ValueError(f"denoising_groups must be >= 1 for query denoising (0 = off), got {self.groups}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"denoising_label_noise must be in [0, 1], got {self.label_noise}")
        if self.box_noise < 0:
            raise ValueError(f"denoising_box_noise must be >= 0, got {self.box_noise}")


@dataclass
class DenoisingQueries:
    """One training batch's denoising queries, ``D = groups * group_size`` per image.

    Within a group the first ``max_targets`` slots are the noised copies of the image's ground
    truth (padded to the batch's largest count), followed (``contrastive``) by as many negatives.

    Attributes:
        labels: ``[B, D]`` int64 noised labels (decoder input; padding slots hold 0).
        boxes: ``[B, D, 4]`` noised normalised cxcywh (decoder input).
        target_classes: ``[B, D]`` int64: the clean label (positives), ``K`` = no object
            (negatives), :data:`IGNORED_CLASS` (padding).
        target_boxes: ``[B, D, 4]`` clean normalised cxcywh of the positives (zeros elsewhere).
        positive: ``[B, D]`` bool, the slots with a box loss.
        real: ``[B, D]`` bool, every slot that is not padding.
        groups: number of denoising groups.
        group_size: slots per group (``max_targets``, doubled with negatives).
    """

    labels: Tensor
    boxes: Tensor
    target_classes: Tensor
    target_boxes: Tensor
    positive: Tensor
    real: Tensor
    groups: int
    group_size: int

    @property
    def num_queries(self) -> int:
        """``D``, the number of denoising queries per image."""
        return self.groups * self.group_size


def noised_boxes(boxes: Tensor, scale: Tensor) -> Tensor:
    """Noise normalised cxcywh ``boxes`` [N,4]: centre shifted by ``scale * (w, h) / 2``, width
    and height multiplied by ``1 + scale``; ``scale`` [N,4] holds one signed factor per
    coordinate. Centres are clamped to [0, 1], sizes to [1e-3, 1]."""
    centre, size = boxes[:, :2], boxes[:, 2:]
    centre = (centre + scale[:, :2] * size / 2).clamp(0.0, 1.0)
    size = (size * (1 + scale[:, 2:])).clamp(1e-3, 1.0)
    return torch.cat([centre, size], dim=1)


class QueryDenoising(nn.Module):
    """Builds denoising queries from the ground truth and embeds them for DETR's decoder.

    Args:
        dim: the transformer width ``C`` (a multiple of 8: the box encoding gives ``C / 4``
            features per coordinate, sine and cosine).
        num_classes: ``K`` object classes.
        settings: groups and noise (:class:`DenoisingSettings`).
    """

    def __init__(self, dim: int, num_classes: int, settings: DenoisingSettings) -> None:
        super().__init__()
        if dim % 8:
            raise ValueError(f"query denoising needs hidden_dim divisible by 8, got {dim}")
        self.num_classes, self.settings = num_classes, settings
        self.label_embed = nn.Embedding(num_classes, dim)
        self.box_encoding = SinePositionEncoding(dim // 4)
        self.box_embed = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def build(self, targets: list[dict[str, Tensor]]) -> DenoisingQueries | None:
        """Targets ``dict(boxes=[M,4] normalised cxcywh, labels=[M])`` per image -> this batch's
        noised queries and what they must reconstruct; ``None`` when no image has a box."""
        max_targets = max(len(target["labels"]) for target in targets)
        if max_targets == 0:
            return None
        device = targets[0]["boxes"].device
        settings = self.settings
        copies = 2 if settings.contrastive else 1
        group_size = copies * max_targets
        total = settings.groups * group_size
        batch = len(targets)
        labels = torch.zeros(batch, total, dtype=torch.int64, device=device)
        boxes = torch.full((batch, total, 4), 0.5, device=device)
        target_classes = torch.full((batch, total), IGNORED_CLASS, dtype=torch.int64, device=device)
        target_boxes = torch.zeros(batch, total, 4, device=device)
        positive = torch.zeros(batch, total, dtype=torch.bool, device=device)
        blocks = settings.groups * copies  # positives (and negatives) of each group, max_targets slots each
        for index, target in enumerate(targets):
            count = len(target["labels"])
            if count == 0:
                continue
            slots = (torch.arange(blocks, device=device)[:, None] * max_targets
                     + torch.arange(count, device=device)).flatten()  # [blocks * count]
            negative = (torch.arange(blocks, device=device) % copies == 1).repeat_interleave(count)
            clean_boxes = target["boxes"].to(torch.float32).repeat(blocks, 1)
            clean_labels = target["labels"].repeat(blocks)
            # noise magnitude uniform in [0, 1) x box_noise, negatives [1, 2) x box_noise, random sign
            # (torch's RNG: seeded runs repeat)
            magnitude = torch.rand(len(slots), 4, device=device) + negative[:, None]
            sign = torch.randint(0, 2, (len(slots), 4), device=device) * 2 - 1
            boxes[index, slots] = noised_boxes(clean_boxes, settings.box_noise * magnitude * sign)
            labels[index, slots] = self._flipped(clean_labels)
            target_classes[index, slots] = torch.where(negative, self.num_classes, clean_labels)
            positive[index, slots] = ~negative
            target_boxes[index, slots[~negative]] = clean_boxes[~negative]
        return DenoisingQueries(labels, boxes, target_classes, target_boxes, positive,
                                target_classes != IGNORED_CLASS, settings.groups, group_size)

    def _flipped(self, labels: Tensor) -> Tensor:
        """Each label replaced by a uniformly drawn class with probability ``label_noise``."""
        flip = torch.rand(labels.shape, device=labels.device) < self.settings.label_noise
        random_labels = torch.randint(0, self.num_classes, labels.shape, device=labels.device)
        return torch.where(flip, random_labels, labels)

    def forward(self, queries: DenoisingQueries) -> tuple[Tensor, Tensor]:
        """-> (content input [B,D,C] = label embedding + box embedding, positional query [B,D,C] =
        box embedding)."""
        position = self.box_embed(self.box_encoding.encode_boxes(queries.boxes))
        return self.label_embed(queries.labels) + position, position


def self_attention_mask(num_queries: int, query_groups: int, denoising: DenoisingQueries | None,
                        device: torch.device) -> Tensor | None:
    """The decoder self-attention mask for the training query layout, True = may not attend.

    Layout of the decoder's query axis: ``query_groups`` groups of ``num_queries`` matching
    queries, then the ``D`` denoising queries (``denoising.groups`` groups of ``group_size``).
    Matching group g attends to itself only; denoising group d attends to itself and to matching
    group 0; padding slots of the denoising groups are hidden from every query (each query still
    sees its own matching group or group 0, so no row is fully masked).

    Returns ``None`` when there is nothing to mask (one group, no denoising), ``[T, T]`` without
    denoising, else ``[B, T, T]`` (padding differs per image); ``T = query_groups * num_queries + D``.
    """
    if query_groups == 1 and denoising is None:
        return None
    group_of = torch.arange(query_groups, device=device).repeat_interleave(num_queries)
    if denoising is not None:  # denoising groups numbered after the matching ones
        dn_groups = torch.arange(denoising.groups, device=device).repeat_interleave(denoising.group_size)
        group_of = torch.cat([group_of, query_groups + dn_groups])
    blocked = group_of[:, None] != group_of[None, :]
    if denoising is None:
        return blocked
    matching = query_groups * num_queries
    blocked[matching:, :num_queries] = False  # denoising queries see matching group 0
    hidden = torch.cat([torch.zeros(len(denoising.real), matching, dtype=torch.bool, device=device),
                        ~denoising.real], dim=1)  # [B, T]: padding slots as keys
    return blocked[None] | hidden[:, None, :]


def align_training_only(state_dict: dict[str, Tensor], model: nn.Module, file_classes: int | None = None
                        ) -> dict[str, Tensor]:
    """``state_dict`` (our key names) with its training-only entries (:data:`TRAINING_ONLY_PREFIXES`)
    made to fit ``model``: entries the model lacks are dropped, entries the model has but the file
    lacks (or holds with another shape: another number of groups or queries) take a fresh
    initialisation. Everything the inference network uses is returned unchanged.

    Per-class entries (:data:`CLASS_DEPENDENT_PREFIXES`) are made for ``file_classes`` (the
    file's class count, default the model's) and kept as the file has them: when the model's class
    count differs, the strict loader re-initialises them with the class head (they are listed in
    ``CHECKPOINT.class_head``).

    ``model`` may be on the ``meta`` device (a weightless probe built with the variant's default
    class count): fresh values come from a new :class:`QueryDenoising` / embedding on the CPU."""
    expected = {key: value for key, value in model.state_dict().items() if key.startswith(TRAINING_ONLY_PREFIXES)}
    aligned = {key: value for key, value in state_dict.items()
               if not key.startswith(TRAINING_ONLY_PREFIXES) or key in expected}
    fresh_needed = [key for key, value in expected.items() if key not in aligned
                    or (aligned[key].shape != value.shape and not key.startswith(CLASS_DEPENDENT_PREFIXES))]
    dropped = sorted(set(state_dict) - set(aligned))
    if fresh_needed or dropped:
        log.info("training-only DETR parameters: %s initialised fresh, %s dropped",
                 ", ".join(fresh_needed) or "none", ", ".join(dropped) or "none")
    if fresh_needed:
        fresh = _fresh_training_only(model, file_classes or model.num_classes)
        aligned.update({key: fresh[key] for key in fresh_needed})
    return aligned


def _fresh_training_only(model: nn.Module, num_classes: int) -> dict[str, Tensor]:
    """Freshly initialised training-only parameters of ``model``'s shapes (``num_classes`` rows of
    the label embedding), on the CPU."""
    fresh: dict[str, Tensor] = {}
    extra = getattr(model, "extra_query_groups", None)
    if extra is not None:
        fresh["extra_query_groups.weight"] = nn.Embedding(*extra.weight.shape).weight.detach()
    denoising = getattr(model, "denoising", None)
    if denoising is not None:
        new = QueryDenoising(denoising.label_embed.embedding_dim, num_classes, denoising.settings)
        fresh.update({f"denoising.{key}": value for key, value in new.state_dict().items()})
    return fresh
