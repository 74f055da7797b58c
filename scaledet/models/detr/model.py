"""The DETR detector: a tensor -> tensor network plus the contract wrapper around it."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import box_convert

from scaledet.models.detr.backbone import ResNetBackbone, SinePositionEncoding
from scaledet.models.detr.criterion import SetCriterion
from scaledet.models.detr.preprocess import Preprocessor, normalized_targets
from scaledet.models.inputs import category_ids_for, check_images, check_targets
from scaledet.models.detr.transformer import Transformer


#: DETR's COCO head has 91 classes and predicts COCO's category id itself (label 0 is unused)
COCO_HEAD_CLASSES = 91


def default_category_ids(num_classes: int) -> list[int]:
    """Category ids of a DETR head that was not told its dataset's: the label itself for the
    91-class COCO head (0..90), else 1..K as the other families."""
    return category_ids_for(None, num_classes, first=0 if num_classes == COCO_HEAD_CLASSES else 1)


class BoxHead(nn.Module):
    """3-layer MLP (ReLU between layers) with a final sigmoid: [..., C] -> [..., 4] normalised cxcywh."""

    def __init__(self, dim: int, num_layers: int = 3) -> None:
        super().__init__()
        sizes = [dim] * (num_layers - 1) + [4]
        self.layers = nn.ModuleList(nn.Linear(dim, out) for out in sizes)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x).sigmoid()


def postprocess(logits: Tensor, boxes: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """logits [B,Q,K+1] (no-object last), boxes [B,Q,4] normalised cxcywh, image_sizes [(h, w)]
    -> per image ``dict(boxes=[Q,4] xyxy pixels, scores=[Q], labels=[Q] int64)`` sorted by score.

    Score and label are the max softmax probability over the K object classes; no NMS, all Q kept.
    """
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)
    detections = []
    for image_scores, image_labels, image_boxes, (height, width) in zip(scores, labels, boxes, image_sizes):
        scale = image_boxes.new_tensor([width, height, width, height])
        order = image_scores.argsort(descending=True)
        xyxy = box_convert(image_boxes, "cxcywh", "xyxy") * scale
        detections.append({"boxes": xyxy[order], "scores": image_scores[order], "labels": image_labels[order]})
    return detections


class DETR(nn.Module):
    """DETR (Carion et al. 2020) following scaledet's detector contract.

    * ``model(images)`` in eval mode: list of float [3,H,W] RGB in [0,1] -> list of
      ``dict(boxes xyxy pixels, scores, labels)``, sorted by score.
    * ``model(images, targets)`` in train mode -> dict of losses (``"loss"`` = weighted total).
    * :meth:`forward_features` is the traceable network: normalised padded batch + mask -> raw outputs.

    Args:
        backbone: ResNet trunk returning layer4 features.
        transformer: encoder/decoder returning every decoder layer's output.
        num_classes: K object classes; the class head predicts K + 1 (no-object last).
        num_queries: number of object queries (learned embeddings).
        preprocessor: resize / normalise / pad.
        criterion: the set loss used in training mode.
        aux_loss: return auxiliary (earlier decoder layer) outputs in training.
        class_names: K names (``model.class_names``).
        category_ids: the dataset's category id of each label (``model.category_ids``); default
            :func:`default_category_ids`.
        name, overrides: the registry name and the variant overrides it was built with; together with
            the attributes above they make :attr:`config`, from which ``create_model`` rebuilds it.
    """

    def __init__(self, backbone: ResNetBackbone, transformer: Transformer, num_classes: int, num_queries: int,
                 preprocessor: Preprocessor, criterion: SetCriterion, aux_loss: bool = True,
                 class_names: Sequence[str] | None = None, name: str = "detr_r50",
                 overrides: dict | None = None, category_ids: Sequence[int] | None = None) -> None:
        super().__init__()
        dim = transformer.decoder_norm.normalized_shape[0]
        self.backbone = backbone
        self.position_encoding = SinePositionEncoding(dim // 2)
        self.input_proj = nn.Conv2d(backbone.num_channels, dim, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.transformer = transformer
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.box_head = BoxHead(dim)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.category_ids = (category_ids_for(category_ids, num_classes) if category_ids is not None
                             else default_category_ids(num_classes))
        self.preprocessor = preprocessor
        self.criterion = criterion
        self.aux_loss = aux_loss
        self.image_size = (preprocessor.min_size, preprocessor.max_size)
        self.name = name
        self.overrides = dict(overrides or {})

    @property
    def config(self) -> dict:
        """JSON-able ``{"model", "num_classes", "class_names", "category_ids", "image_size", "overrides"}``;
        ``image_size`` is DETR's eval resize (shorter side, longest-side cap)."""
        overrides = {key: list(value) if isinstance(value, tuple) else value for key, value in self.overrides.items()}
        return {"model": self.name, "num_classes": self.num_classes, "class_names": list(self.class_names),
                "category_ids": list(self.category_ids), "image_size": list(self.image_size), "overrides": overrides}

    def forward_features(self, batch: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
        """batch [B,3,H,W] ImageNet-normalised, mask [B,H,W] bool (True on padding) ->
        (logits [B,Q,K+1], boxes [B,Q,4] normalised cxcywh, aux [(logits, boxes)] of the earlier
        decoder layers - only in training mode with ``aux_loss``, else empty)."""
        features, small_mask = self.backbone(batch, mask)
        pos = self.position_encoding(small_mask).to(features.dtype)
        hidden = self.transformer(self.input_proj(features), small_mask, pos, self.query_embed.weight)  # [L,B,Q,C]
        logits = self.class_head(hidden)
        boxes = self.box_head(hidden)
        aux = list(zip(logits[:-1], boxes[:-1])) if self.training and self.aux_loss else []
        return logits[-1], boxes[-1], aux

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict] | None = None):
        """See the class docstring for the contract."""
        images = check_images(images)
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets (call model.eval() for detections)")
            check_targets(targets, len(images), self.num_classes)
            batch, mask = self.preprocessor(images, training=True)
            logits, boxes, aux = self.forward_features(batch, mask)
            return self.criterion(logits, boxes, aux, normalized_targets(images, targets))
        batch, mask = self.preprocessor(images)
        logits, boxes, _ = self.forward_features(batch, mask)
        return postprocess(logits, boxes, [tuple(image.shape[1:]) for image in images])

    def param_groups(self, lr: float, backbone_lr: float | None = None,
                     weight_decay: float | None = None) -> list[dict]:
        """Optimizer parameter groups for DETR's recipe: trainable backbone parameters at
        ``backbone_lr`` (default ``lr / 10``, the paper's 1e-5 vs 1e-4), everything else at ``lr``;
        ``weight_decay`` is set on both groups when given (else the optimizer's default applies)."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        groups = [{"params": rest, "lr": lr}, {"params": backbone, "lr": lr / 10 if backbone_lr is None else backbone_lr}]
        if weight_decay is not None:
            for group in groups:
                group["weight_decay"] = weight_decay
        return groups

    def reset_class_head(self) -> None:
        """Re-initialise the class predictor (fine-tuning with a new set of classes)."""
        self.class_head.reset_parameters()
