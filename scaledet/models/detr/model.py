"""The DETR detector: a tensor -> tensor network behind the :class:`~scaledet.models.base.Detector` contract.

Box formats: the network predicts normalised ``(cx, cy, w, h)`` in [0, 1] relative to each input
image (the resize and the padding do not enter); targets and detections are xyxy pixels of the
input images. Post-processing: :mod:`scaledet.models.detr.postprocess` (shared with the ONNX graph,
:mod:`scaledet.models.detr.export`); training pipeline: :mod:`scaledet.models.detr.transforms`;
training accelerators (group queries, query denoising): :mod:`scaledet.models.detr.accelerators`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from scaledet.models.base import Batch, Detections, Detector, ExportSpec
from scaledet.models.detr import export
from scaledet.models.detr.accelerators import DenoisingQueries, DenoisingSettings, QueryDenoising, self_attention_mask
from scaledet.models.detr.backbone import ResNetBackbone, SinePositionEncoding
from scaledet.models.detr.criterion import SetCriterion
from scaledet.models.detr.detector_inputs import DetrInputs
from scaledet.models.detr.postprocess import postprocess
from scaledet.models.detr.preprocess import Preprocessor, normalized_targets
from scaledet.models.detr.transformer import Transformer
from scaledet.models.inputs import category_ids_for, check_images, check_targets
from scaledet.models.layers import MLP

#: DETR's raw outputs: (logits [B,Q,K+1], boxes [B,Q,4] normalised cxcywh, aux [(logits, boxes)]);
#: in training with accelerators the query axis is longer (see :meth:`DETR.forward_features`)
Outputs = tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]


#: DETR's COCO head has 91 classes and predicts COCO's category id itself (label 0 is unused)
COCO_HEAD_CLASSES = 91


def default_category_ids(num_classes: int) -> list[int]:
    """Category ids of a DETR head that was not told its dataset's: the label itself for the
    91-class COCO head (0..90), else 1..K as the other families."""
    return category_ids_for(None, num_classes, first=0 if num_classes == COCO_HEAD_CLASSES else 1)


class BoxHead(MLP):
    """3-layer MLP (ReLU between layers) with a final sigmoid: [..., C] -> [..., 4] normalised cxcywh."""

    def __init__(self, dim: int, num_layers: int = 3) -> None:
        super().__init__(dim, dim, 4, num_layers)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).sigmoid()


class DETR(DetrInputs, Detector):
    """DETR (Carion et al. 2020) following the :class:`~scaledet.models.base.Detector` contract.

    * ``model(images)`` in eval mode: list of float [3,H,W] RGB in [0,1] -> list of
      ``dict(boxes [Q,4] xyxy pixels, scores [Q], labels [Q] int64)``, sorted by score (all Q queries).
    * ``model(images, targets)`` -> dict of losses (``"loss"`` = weighted total), with the
      multi-scale training resize.
    * :meth:`forward_features` is the traceable network: normalised padded batch + mask -> raw outputs.

    ``image_size`` (config) is DETR's eval resize ``(shorter side, longest-side cap)``, not an input
    shape: inputs keep their aspect ratio, so :attr:`input_size_is_free` is False. The resize, the
    training pipeline and the export feeds are :class:`~scaledet.models.detr.detector_inputs.DetrInputs`'.

    Args:
        backbone: ResNet trunk returning layer4 features.
        transformer: encoder/decoder returning every decoder layer's output.
        num_classes: K object classes; the class head predicts K + 1 (no-object last).
        num_queries: number of object queries (learned embeddings).
        preprocessor: resize / normalise / pad (configuration only, no tensors).
        criterion: the set loss used in training.
        aux_loss: return auxiliary (earlier decoder layer) outputs in training.
        class_names: K names (``model.class_names``).
        category_ids: the dataset's category id of each label (``model.category_ids``); default
            :func:`default_category_ids`.
        name, overrides: the registry name and the variant overrides it was built with; together with
            the attributes above they make :attr:`config`, from which ``create_model`` rebuilds it.
        query_groups: Group DETR's query groups in training (1 = plain DETR); groups 1.. are
            ``extra_query_groups``, used only in training.
        denoising: query denoising's settings (``None`` = off); builds ``denoising``, used only in training.

    The training accelerators (:mod:`scaledet.models.detr.accelerators`) change nothing in eval
    mode: the network there is the plain DETR of ``query_embed`` (group 0), so published weights
    give the published outputs. Their parameters are created after all others, so a model built
    with them from a seed has the same inference weights as one built without.
    """

    input_size_is_free = False

    def __init__(self, backbone: ResNetBackbone, transformer: Transformer, num_classes: int, num_queries: int,
                 preprocessor: Preprocessor, criterion: SetCriterion, aux_loss: bool = True,
                 class_names: Sequence[str] | None = None, name: str = "detr_r50",
                 overrides: dict | None = None, category_ids: Sequence[int] | None = None,
                 query_groups: int = 1, denoising: DenoisingSettings | None = None) -> None:
        super().__init__(name, num_classes, (preprocessor.min_size, preprocessor.max_size), class_names,
                         category_ids, overrides, first_category_id=0 if num_classes == COCO_HEAD_CLASSES else 1)
        dim = transformer.decoder_norm.normalized_shape[0]
        self.backbone = backbone
        self.position_encoding = SinePositionEncoding(dim // 2)
        self.input_proj = nn.Conv2d(backbone.num_channels, dim, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.transformer = transformer
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.box_head = BoxHead(dim)
        self.preprocessor = preprocessor
        self.criterion = criterion
        self.aux_loss = aux_loss
        if query_groups < 1:
            raise ValueError(f"query_groups must be >= 1 (1 = plain DETR), got {query_groups}")
        self.num_queries = num_queries
        self.query_groups = query_groups
        # training-only parameters last: the inference weights drawn from a seed do not depend on them
        self.extra_query_groups = nn.Embedding((query_groups - 1) * num_queries, dim) if query_groups > 1 else None
        self.denoising = QueryDenoising(dim, num_classes, denoising) if denoising is not None else None

    # ----------------------------------------------------------------------------------------
    # the call chain
    def forward(self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None):
        """:meth:`Detector.forward <scaledet.models.base.Detector.forward>`; in training with query
        denoising, the denoising queries are built from ``targets`` and go to the network and the
        loss (``batch.meta["denoising"]``)."""
        if targets is None or self.denoising is None or not self.training:
            return super().forward(images, targets)
        images = check_images(images)
        check_targets(targets, len(images), self.num_classes, [tuple(i.shape[-2:]) for i in images])
        batch = self.preprocess(images, training=True)
        denoising = self.denoising.build(normalized_targets(batch.image_sizes, targets))
        batch.meta["denoising"] = denoising
        losses = self.loss(self.forward_features(*batch.inputs, denoising), batch, list(targets))
        if denoising is None:  # no box in the batch: keep the denoising parameters in the graph (DDP
            # expects a gradient for every parameter on every rank), with a zero contribution
            losses["loss"] = losses["loss"] + sum(p.sum() for p in self.denoising.parameters()) * 0.0
        return losses

    def forward_features(self, batch: Tensor, mask: Tensor, denoising: DenoisingQueries | None = None) -> Outputs:
        """batch [B,3,H,W] ImageNet-normalised, mask [B,H,W] bool (True on padding) ->
        (logits [B,Q,K+1], boxes [B,Q,4] normalised cxcywh, aux [(logits, boxes)] of the earlier
        decoder layers - only in training mode with ``aux_loss``, else empty).

        Training mode with accelerators: the query axis holds ``query_groups * Q`` matching queries
        (group 0 first), then the ``D`` queries of ``denoising`` (built by :meth:`forward`)."""
        features, small_mask = self.backbone(batch, mask)
        pos = self.position_encoding(small_mask).to(features.dtype)
        queries, extra, attention_mask = self.query_embed.weight, None, None
        groups = self.query_groups if self.training else 1
        if groups > 1 or denoising is not None:
            if groups > 1:
                queries = torch.cat([queries, self.extra_query_groups.weight])
            if denoising is not None:
                extra = self.denoising(denoising)
            attention_mask = self_attention_mask(self.num_queries, groups, denoising, batch.device)
        hidden = self.transformer(self.input_proj(features), small_mask, pos, queries, extra,
                                  attention_mask)  # [L,B,T,C]
        logits = self.class_head(hidden)
        boxes = self.box_head(hidden)
        aux = list(zip(logits[:-1], boxes[:-1])) if self.training and self.aux_loss else []
        return logits[-1], boxes[-1], aux

    def postprocess(self, outputs: Outputs, batch: Batch, fast: bool = False) -> list[Detections]:
        """Every query as a detection in input-image pixels, by score
        (:func:`~scaledet.models.detr.postprocess.postprocess`). ``fast`` changes nothing: there
        is no NMS to shortcut."""
        logits, boxes, _ = outputs
        return postprocess(logits, boxes, batch.image_sizes)

    def loss(self, outputs: Outputs, batch: Batch, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The set loss (:class:`~scaledet.models.detr.criterion.SetCriterion`) on the last decoder
        layer and the auxiliary ones; target boxes (xyxy input-image pixels) are normalised to cxcywh.

        With accelerators: the set loss of each query group (every term summed over the groups) plus
        the denoising reconstruction terms (``*_dn``, from ``batch.meta["denoising"]``) in ``loss``."""
        logits, boxes, aux = outputs
        normalized = normalized_targets(batch.image_sizes, targets)
        denoising: DenoisingQueries | None = batch.meta.get("denoising")
        if denoising is None and logits.shape[1] == self.num_queries:  # plain DETR
            return self.criterion(logits, boxes, aux, normalized)
        matching = logits.shape[1] - (denoising.num_queries if denoising is not None else 0)
        layers = [(logits, boxes)] + list(aux)
        matching_layers = [(layer_logits[:, :matching], layer_boxes[:, :matching])
                           for layer_logits, layer_boxes in layers]
        losses = self.criterion(*matching_layers[0], matching_layers[1:], normalized,
                                groups=matching // self.num_queries)
        if denoising is not None:
            denoising_losses = self.criterion.denoising_losses(
                [(layer_logits[:, matching:], layer_boxes[:, matching:]) for layer_logits, layer_boxes in layers],
                denoising, normalized)
            total = losses["loss"] + denoising_losses.pop("loss")
            losses = {**losses, **denoising_losses, "loss": total}
        return losses

    # ----------------------------------------------------------------------------------------
    # training hooks
    def param_groups(self, lr: float, weight_decay: float, backbone_lr: float | None = None) -> list[dict]:
        """Optimizer parameter groups for DETR's recipe: everything but the backbone at ``lr``, the
        trainable backbone parameters at ``backbone_lr`` (default ``lr / 10``, the paper's 1e-5 vs
        1e-4); ``weight_decay`` on both (the official code decays every parameter)."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        backbone_lr = lr / 10 if backbone_lr is None else backbone_lr
        return [{"params": rest, "lr": lr, "weight_decay": weight_decay},
                {"params": backbone, "lr": backbone_lr, "weight_decay": weight_decay}]

    # ----------------------------------------------------------------------------------------
    # export
    def export_spec(self, input_size: tuple[int, int] | None = None) -> ExportSpec:
        """The ONNX graph of :mod:`scaledet.models.detr.export`; example inputs of ``input_size``
        (h, w), default :meth:`input_size` (height and width are dynamic)."""
        return export.export_spec(self, tuple(input_size or self.input_size()))
