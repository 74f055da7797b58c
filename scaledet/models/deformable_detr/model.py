"""The Deformable DETR detector: a tensor -> tensor network behind the :class:`~scaledet.models.base.Detector` contract.

Box formats: the network predicts normalised ``(cx, cy, w, h)`` in [0, 1] relative to each input
image; targets and detections are xyxy pixels of the input images. Pre-processing (resize,
normalise, pad + mask), training pipeline, export feeds and target conversion are DETR's
(:class:`scaledet.models.detr.detector_inputs.DetrInputs`, :mod:`scaledet.models.detr.preprocess`); post-processing:
:mod:`scaledet.models.deformable_detr.postprocess` (shared with the ONNX graph).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from scaledet.models.base import Batch, Detections, Detector, ExportSpec
from scaledet.models.deformable_detr import export
from scaledet.models.deformable_detr.backbone import CenteredSinePositionEncoding, MultiScaleResNet, downsampled_mask
from scaledet.models.deformable_detr.criterion import FocalSetCriterion
from scaledet.models.deformable_detr.postprocess import postprocess
from scaledet.models.deformable_detr.transformer import DeformableTransformer
from scaledet.models.detr.detector_inputs import DetrInputs
from scaledet.models.detr.model import COCO_HEAD_CLASSES
from scaledet.models.detr.preprocess import Preprocessor, normalized_targets
from scaledet.models.layers import MLP

#: raw outputs: (logits [B,Q,K], boxes [B,Q,4] normalised cxcywh, aux [(logits, boxes)] of the earlier
#: decoder layers, proposals: (logits [B,S,K], boxes [B,S,4]) of the encoder in two-stage training, else ())
Outputs = tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]], tuple[Tensor, ...]]

#: parameters trained at lr * LINEAR_PROJ_LR_SCALE (official ``lr_linear_proj_mult``)
LINEAR_PROJ_NAMES = ("sampling_offsets", "reference_points")
LINEAR_PROJ_LR_SCALE = 0.1


def input_projections(level_channels: Sequence[int], dim: int, num_levels: int) -> nn.ModuleList:
    """1x1 conv + GroupNorm(32) per backbone level, then 3x3 stride-2 conv + GroupNorm(32) per extra
    level (the first from the last backbone level, the next from the previous extra level)."""
    projections = [nn.Sequential(nn.Conv2d(channels, dim, 1), nn.GroupNorm(32, dim)) for channels in level_channels]
    in_channels = level_channels[-1]
    for _ in range(num_levels - len(level_channels)):
        projections.append(nn.Sequential(nn.Conv2d(in_channels, dim, 3, stride=2, padding=1), nn.GroupNorm(32, dim)))
        in_channels = dim
    for projection in projections:
        nn.init.xavier_uniform_(projection[0].weight, gain=1)
        nn.init.zeros_(projection[0].bias)
    return nn.ModuleList(projections)


class DeformableDETR(DetrInputs, Detector):
    """Deformable DETR (Zhu et al. 2021) following the :class:`~scaledet.models.base.Detector` contract.

    * ``model(images)`` in eval mode: list of float [3,H,W] RGB in [0,1] -> list of
      ``dict(boxes [k,4] xyxy pixels, scores [k], labels [k] int64)``, the ``top_k`` best
      (query, class) pairs by sigmoid score.
    * ``model(images, targets)`` -> dict of losses (``"loss"`` = weighted total), with DETR's
      multi-scale training resize.
    * :meth:`forward_features` is the traceable network: normalised padded batch + mask -> raw outputs.

    ``image_size`` (config) is the eval resize ``(shorter side, longest-side cap)``, as DETR's.

    Args:
        backbone: ResNet returning C3-C5 with their masks.
        transformer: deformable encoder / decoder (two-stage or not).
        num_classes: K sigmoid classes (no background).
        num_queries: learned object queries (ignored in two-stage mode: proposals are the queries).
        box_refine: one class / box head per decoder layer, each layer refining the previous boxes.
        preprocessor: resize / normalise / pad (configuration only).
        criterion: the set loss used in training.
        top_k: detections per image.
        aux_loss: return the earlier decoder layers' outputs in training.
        class_names, category_ids, name, overrides: as :class:`~scaledet.models.detr.model.DETR`.
        num_levels: pyramid levels fed to the transformer (C3-C5 plus ``num_levels - 3`` stride-2 levels).
    """

    input_size_is_free = False

    def __init__(self, backbone: MultiScaleResNet, transformer: DeformableTransformer, num_classes: int,
                 num_queries: int, box_refine: bool, preprocessor: Preprocessor, criterion: FocalSetCriterion,
                 top_k: int = 100, aux_loss: bool = True, class_names: Sequence[str] | None = None,
                 name: str = "deformable_detr_r50", overrides: dict | None = None,
                 category_ids: Sequence[int] | None = None, num_levels: int = 4) -> None:
        super().__init__(name, num_classes, (preprocessor.min_size, preprocessor.max_size), class_names,
                         category_ids, overrides, first_category_id=0 if num_classes == COCO_HEAD_CLASSES else 1)
        dim, dec_layers = transformer.dim, len(transformer.decoder)
        self.backbone = backbone
        self.position_encoding = CenteredSinePositionEncoding(dim // 2)
        self.input_proj = input_projections(backbone.level_channels, dim, num_levels)
        if not transformer.two_stage:
            self.query_embed = nn.Embedding(num_queries, 2 * dim)  # (position, content) halves
        self.transformer = transformer
        num_heads = (dec_layers if box_refine else 1) + (1 if transformer.two_stage else 0)
        self.class_heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(num_heads))
        self.box_heads = nn.ModuleList(MLP(dim, dim, 4, 3) for _ in range(num_heads))  # box deltas, inverse-sigmoid space
        self.box_refine = box_refine
        self.preprocessor = preprocessor
        self.criterion = criterion
        self.top_k = top_k
        self.aux_loss = aux_loss
        self._init_heads()

    @torch.no_grad()
    def _init_heads(self) -> None:
        """Official initialisation: class bias at prior 0.01, zero last box layer; the first box head's
        size bias at -2 (small boxes), 0 for every head in two-stage mode."""
        prior = -math.log((1 - 0.01) / 0.01)
        for head in self.class_heads:
            nn.init.constant_(head.bias, prior)
        for head in self.box_heads:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        if not self.transformer.two_stage:
            self.box_heads[0].layers[-1].bias[2:] = -2.0

    def class_head(self, layer: int) -> nn.Module:
        """The class head of decoder layer ``layer`` (its own with box refinement, else the shared one)."""
        return self.class_heads[layer if self.box_refine else 0]

    # ----------------------------------------------------------------------------------------
    # the call chain
    def forward_features(self, batch: Tensor, mask: Tensor) -> Outputs:
        """batch [B,3,H,W] ImageNet-normalised, mask [B,H,W] bool (True on padding) -> (logits [B,Q,K],
        boxes [B,Q,4] normalised cxcywh, aux, proposals); ``aux`` (earlier decoder layers, with
        ``aux_loss``) and ``proposals`` (two-stage) only in training mode, else empty."""
        levels = self.backbone(batch, mask)
        sources = [projection(features) for projection, (features, _) in zip(self.input_proj, levels)]
        masks = [level_mask for _, level_mask in levels]
        extra = levels[-1][0]
        for projection in self.input_proj[len(levels):]:
            extra = projection(extra)
            sources.append(extra)
            masks.append(downsampled_mask(mask, extra.shape[-2:]))
        positions = [self.position_encoding(level_mask).to(source.dtype) for source, level_mask in zip(sources, masks)]
        query_embed = None if self.transformer.two_stage else self.query_embed.weight
        hidden, boxes, proposals = self.transformer(sources, masks, positions, query_embed, self.class_heads,
                                                    self.box_heads, self.box_refine)
        last = len(hidden) - 1
        if not self.training:  # the last layer's classes only
            return self.class_head(last)(hidden[last]), boxes[last], [], ()
        logits = [self.class_head(index)(layer) for index, layer in enumerate(hidden)]
        aux = list(zip(logits[:-1], boxes[:-1])) if self.aux_loss else []
        return logits[-1], boxes[-1], aux, proposals

    def postprocess(self, outputs: Outputs, batch: Batch, fast: bool = False) -> list[Detections]:
        """The ``top_k`` (query, class) pairs by sigmoid score, boxes in input-image pixels
        (:func:`~scaledet.models.deformable_detr.postprocess.postprocess`). ``fast`` changes nothing."""
        logits, boxes = outputs[:2]
        return postprocess(logits, boxes, batch.image_sizes, self.top_k)

    def loss(self, outputs: Outputs, batch: Batch, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The focal set loss (:class:`~scaledet.models.deformable_detr.criterion.FocalSetCriterion`) on
        the last decoder layer, the auxiliary ones and the encoder proposals; target boxes (xyxy
        input-image pixels) are normalised to cxcywh."""
        logits, boxes, aux, proposals = outputs
        return self.criterion(logits, boxes, aux, normalized_targets(batch.image_sizes, targets), proposals)

    # ----------------------------------------------------------------------------------------
    # training hooks
    def param_groups(self, lr: float, weight_decay: float, backbone_lr: float | None = None) -> list[dict]:
        """The official groups: trainable backbone parameters at ``backbone_lr`` (default ``lr / 10``),
        sampling offsets and reference-point projections at ``lr / 10``, the rest at ``lr``;
        ``weight_decay`` on all."""
        backbone_lr = lr / 10 if backbone_lr is None else backbone_lr
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "linear_proj": [], "rest": []}
        for param_name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if param_name.startswith("backbone."):
                groups["backbone"].append(param)
            elif any(part in param_name for part in LINEAR_PROJ_NAMES):
                groups["linear_proj"].append(param)
            else:
                groups["rest"].append(param)
        rates = {"backbone": backbone_lr, "linear_proj": lr * LINEAR_PROJ_LR_SCALE, "rest": lr}
        return [{"params": params, "lr": rates[group], "weight_decay": weight_decay}
                for group, params in groups.items() if params]

    # ----------------------------------------------------------------------------------------
    # export
    def export_spec(self, input_size: tuple[int, int] | None = None) -> ExportSpec:
        """The ONNX graph of :mod:`scaledet.models.deformable_detr.export` (height and width dynamic)."""
        return export.export_spec(self, tuple(input_size or self.input_size()))
