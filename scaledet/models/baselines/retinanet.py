"""RetinaNet with a swappable backbone, built from torchvision's RetinaNet, behind scaledet's contract.

Network: backbone maps C3, C4, C5 (strides 8/16/32) -> torchvision ``FeaturePyramidNetwork``
(256 channels, P6/P7 by strided 3x3 convs, ``LastLevelP6P7``) -> ``RetinaNetHead`` (4 x 3x3 conv
256 + predictors, 9 anchors per location). ``resnet50``/``resnet101`` are torchvision's ResNets
(as ``torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)``:
BatchNorm, every layer trainable); any other name
is a timm ``features_only`` model tapped at strides 8/16/32.

Images go through torchvision's ``GeneralizedRCNNTransform`` with ``min_size = max_size =``
the longest side of ``image_size``: the longest image side becomes that size (as EfficientDet).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from scaledet.models.checkpoints import CheckpointSpec
from scaledet.models.efficientdet.config import as_size
from scaledet.models.inputs import category_ids_for, check_images, check_targets, class_names_for

FPN_CHANNELS = 256
_TORCHVISION_RESNETS = ("resnet50", "resnet101")
#: key prefix of the class predictor in our state dicts
CLASS_LOGITS = "net.head.classification_head.cls_logits."


@dataclass(frozen=True)
class RetinaNetVariant:
    """A RetinaNet row: backbone name, input size (h, w), classes and the paper's numbers."""

    backbone: str
    image_size: tuple[int, int] = (640, 640)
    num_classes: int = 90
    paper_params_m: float | None = None
    paper_gflops: float | None = None
    paper_ap: float | None = None  # COCO AP the EfficientDet paper gives for this baseline
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100


#: Table 4 of the paper (ResNet50 + FPN 37.0 AP / 34M / 97B, EfficientNet-B3 + FPN 40.3 / 21M / 75B)
#: and Table 2's RetinaNet-R101 (640 px: 39.9 AP, 53M, 127B).
VARIANTS: dict[str, RetinaNetVariant] = {
    "retinanet_r50_fpn": RetinaNetVariant("resnet50", paper_params_m=34, paper_gflops=97, paper_ap=37.0),
    "retinanet_r101_fpn": RetinaNetVariant("resnet101", paper_params_m=53, paper_gflops=127, paper_ap=39.9),
    "retinanet_effb3_fpn": RetinaNetVariant("tf_efficientnet_b3", paper_params_m=21, paper_gflops=75, paper_ap=40.3),
}


class TimmFPNBackbone(nn.Module):
    """timm feature extractor (C3, C4, C5) + torchvision FPN with P6/P7: ``[B,3,H,W]`` ->
    ``OrderedDict`` of 5 maps ``[B, 256, H/2^l, W/2^l]``, l = 3..7."""

    def __init__(self, name: str) -> None:
        super().__init__()
        from scaledet.models.efficientdet.backbone import create_backbone

        self.body = create_backbone(name)
        channels = self.body.feature_info.channels()
        self.fpn = FeaturePyramidNetwork(channels, FPN_CHANNELS, extra_blocks=LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS))
        self.out_channels = FPN_CHANNELS

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def create_fpn_backbone(name: str) -> nn.Module:
    """Backbone + FPN with ``out_channels`` = 256 for ``name`` (torchvision ResNet or timm model)."""
    if name in _TORCHVISION_RESNETS:
        import torchvision

        # as torchvision's retinanet_resnet50_fpn without weights: trainable BatchNorm, all layers trainable
        resnet = getattr(torchvision.models, name)(weights=None)
        return _resnet_fpn_extractor(resnet, 5, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS))
    return TimmFPNBackbone(name)


class RetinaNetDetector(nn.Module):
    """RetinaNet following the scaledet model contract (see :mod:`scaledet`).

    eval: ``model(list of Tensor[3,H,W] in [0,1])`` -> list of ``{boxes xyxy (input pixels),
    scores, labels}``; train: ``model(images, targets)`` -> ``{"classification", "bbox_regression",
    "loss"}``. ``forward_features(batch)`` runs backbone + head on a normalised ``[B,3,H,W]`` batch.
    """

    def __init__(self, variant: RetinaNetVariant, name: str, class_names: list[str] | None = None,
                 overrides: dict | None = None, category_ids: list[int] | None = None) -> None:
        super().__init__()
        self.variant, self.name = variant, name
        self.num_classes = variant.num_classes
        self.image_size = tuple(variant.image_size)
        self.class_names = class_names_for(class_names, self.num_classes)
        self.category_ids = category_ids_for(category_ids, self.num_classes)
        self.overrides = dict(overrides or {})
        side = max(self.image_size)
        self.net = RetinaNet(create_fpn_backbone(variant.backbone), num_classes=self.num_classes, min_size=side,
                             max_size=side, score_thresh=variant.score_thresh, nms_thresh=variant.nms_iou,
                             detections_per_img=variant.max_detections)

    @property
    def config(self) -> dict:
        """``{"model", "num_classes", "class_names", "category_ids", "image_size", "overrides"}`` for
        ``create_model``."""
        return {"model": self.name, "num_classes": self.num_classes, "class_names": list(self.class_names),
                "category_ids": list(self.category_ids), "image_size": list(self.image_size),
                "overrides": dict(self.overrides)}

    def forward_features(self, batch: Tensor) -> dict[str, Tensor]:
        """Normalised ``[B, 3, H, W]`` -> ``{"cls_logits": [B, A, K], "bbox_regression": [B, A, 4]}``."""
        features = list(self.net.backbone(batch).values())
        return self.net.head(features)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Eval: list of detection dicts sorted by score. Train: dict of losses with ``"loss"``."""
        images = check_images(images)
        if targets is None:
            if self.training:
                raise ValueError("training mode needs targets; call model.eval() for detections")
            return self.net(images)
        check_targets(targets, len(images), self.num_classes)
        targets = [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in targets]
        losses = self.net(images, targets)
        losses["loss"] = sum(losses.values())
        return losses


def build(name: str, num_classes: int | None = None, image_size: int | tuple[int, int] | None = None,
          class_names: list[str] | None = None, category_ids: list[int] | None = None,
          **overrides) -> RetinaNetDetector:
    """Build baseline ``name`` (a key of :data:`VARIANTS`), randomly initialised (weights files:
    our safetensors, :data:`CHECKPOINT`); ``overrides`` are :class:`RetinaNetVariant` fields (e.g.
    ``backbone="tf_efficientnet_b3"``)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(VARIANTS)}")
    fields = {f.name for f in dataclasses.fields(RetinaNetVariant)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown RetinaNet option(s) {unknown}; valid: {sorted(fields)}")
    if num_classes is not None:
        overrides["num_classes"] = int(num_classes)
    if image_size is not None:
        overrides["image_size"] = as_size(image_size)
    base = VARIANTS[name]
    variant = dataclasses.replace(base, **overrides)
    changed = {k: v for k, v in overrides.items() if k not in ("num_classes", "image_size") and v != getattr(base, k)}
    return RetinaNetDetector(variant, name, class_names, overrides=changed, category_ids=category_ids)


#: our safetensors files only (no published weights, no other project's layout); torchvision's
#: class predictor has anchors-per-location x K outputs
CHECKPOINT = CheckpointSpec(class_head=(CLASS_LOGITS,), class_bias=CLASS_LOGITS + "bias")


def profile_info(name: str) -> dict:
    """For ``scaledet profile``: native size and the paper's numbers (params in M, GFLOPs = GMACs)."""
    variant = VARIANTS[name]
    paper = {"params_m": variant.paper_params_m, "gflops": variant.paper_gflops, "ap_test_dev": variant.paper_ap}
    side = variant.image_size[0]
    anchors = 9 * sum(math.ceil(side / 2**level) ** 2 for level in range(3, 8))
    return {"native_size": variant.image_size, "anchors": anchors, "paper": {k: v for k, v in paper.items() if v}}


