"""RetinaNet with a swappable backbone, built from torchvision's RetinaNet, behind scaledet's contract.

Network: backbone maps C3, C4, C5 (strides 8/16/32) -> torchvision ``FeaturePyramidNetwork``
(256 channels, P6/P7 by strided 3x3 convs, ``LastLevelP6P7``) -> ``RetinaNetHead`` (4 x 3x3 conv
256 + predictors, 9 anchors per location). ``resnet50``/``resnet101`` are torchvision's ResNets
(as ``torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)``:
BatchNorm, every layer trainable); any other name
is a timm ``features_only`` model tapped at strides 8/16/32.

Images go through torchvision's ``GeneralizedRCNNTransform`` with ``min_size = max_size =``
the longest side of ``image_size`` and ``size_divisible`` = that side: the longest image side
becomes that size and every batch is padded to that square (as EfficientDet), so the network
input has one shape and the ONNX graph needs no dynamic height or width (dynamic sizes through
timm's TF-"same" padding send ``torch.export`` into minutes of symbolic shape reasoning).
:class:`RetinaNetDetector` splits torchvision's forward into the Detector contract's steps (same
outputs); its ONNX graph is :mod:`.export`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from scaledet.models import preprocessing
from scaledet.models.base import Batch, Detections, Detector, ExportSpec
from scaledet.models.checkpoints import CheckpointSpec
from scaledet.models.coco_names import COCO_NAMES_BY_ID
from scaledet.models.efficientdet.backbone import create_backbone
from scaledet.models.efficientdet.config import as_size
from scaledet.models.inputs import check_option_names
from scaledet.models.ops import split_by_image

from .export import INPUT_NAMES, OUTPUT_NAMES, RetinaNetExport

FPN_CHANNELS = 256
LEVELS = range(3, 8)  # P3..P7
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
        self.body = create_backbone(name)
        channels = self.body.feature_info.channels()
        self.fpn = FeaturePyramidNetwork(channels, FPN_CHANNELS, extra_blocks=LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS))
        self.out_channels = FPN_CHANNELS

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def create_fpn_backbone(name: str) -> nn.Module:
    """Backbone + FPN with ``out_channels`` = 256 for ``name`` (torchvision ResNet or timm model)."""
    if name in _TORCHVISION_RESNETS:
        # as torchvision's retinanet_resnet50_fpn without weights: trainable BatchNorm, all layers trainable
        resnet = getattr(torchvision.models, name)(weights=None)
        return _resnet_fpn_extractor(resnet, 5, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS))
    return TimmFPNBackbone(name)


def level_sizes(input_size: Sequence[int]) -> list[tuple[int, int]]:
    """(h, w) of the pyramid maps P3..P7 for a network input of ``input_size`` (h, w; the
    transform pads to the model's square): ``ceil(side / 2**l)`` - the backbones' stride-2 convs and the P6/P7
    convs (3x3, stride 2, padding 1) round up."""
    height, width = int(input_size[0]), int(input_size[1])
    return [(-(-height // 2**level), -(-width // 2**level)) for level in LEVELS]


class RetinaNetDetector(Detector):
    """RetinaNet implementing the :class:`~scaledet.models.base.Detector` contract with torchvision's
    pieces (``net`` is a ``torchvision.models.detection.RetinaNet``); eval output equals ``net(images)``.

    * :meth:`preprocess`: ``net.transform`` (normalise, resize the longest side to
      ``max(image_size)``, pad to that square): ``Batch.inputs = (batch [B, 3, S, S],)``,
      ``meta["resized_sizes"]`` = each image's (h, w) inside the batch;
    * :meth:`forward_features`: backbone + head -> ``{"cls_logits": [B, A, K], "bbox_regression":
      [B, A, 4]}`` (A anchors over all levels);
    * :meth:`postprocess`: ``net.postprocess_detections`` (score threshold, per-level top-k, decode,
      clip, per-class NMS) with ``net.anchor_generator``'s anchors, boxes scaled back to the input
      images; :meth:`loss`: ``net.compute_loss`` (``"classification"``, ``"bbox_regression"``, ``"loss"``);
    * :meth:`export_spec`: :class:`~scaledet.models.baselines.export.RetinaNetExport`.
    """

    backbone_prefix = "net.backbone.body."  # the ResNet / EfficientNet (the FPN, ``net.backbone.fpn``, is not)

    def __init__(self, variant: RetinaNetVariant, name: str, class_names: list[str] | None = None,
                 overrides: dict | None = None, category_ids: list[int] | None = None) -> None:
        super().__init__(name, variant.num_classes, variant.image_size, class_names, category_ids, overrides)
        self.variant = variant
        side = max(self.image_size)
        self.net = RetinaNet(create_fpn_backbone(variant.backbone), num_classes=self.num_classes, min_size=side,
                             max_size=side, score_thresh=variant.score_thresh, nms_thresh=variant.nms_iou,
                             detections_per_img=variant.max_detections, size_divisible=side)
        self._anchors: dict[tuple, tuple[Tensor, list[int]]] = {}  # (input size, device) -> (anchors, per level)

    def anchors_for(self, input_size: Sequence[int], device: torch.device | str | None = None) -> tuple[Tensor, list[int]]:
        """(anchors ``[A, 4]`` xyxy network-input pixels, anchor count per level) for a network input of
        ``input_size`` (h, w) on ``device`` (default CPU): ``net.anchor_generator`` on the level sizes of
        :func:`level_sizes`, cached. Configuration only (no feature maps needed)."""
        size, device = (int(input_size[0]), int(input_size[1])), torch.device(device or "cpu")
        key = (size, device)
        if key not in self._anchors:
            levels = level_sizes(size)
            maps = [torch.empty(1, 0, h, w, device=device) for h, w in levels]  # shapes only
            anchors = self.net.anchor_generator(ImageList(torch.empty(1, 0, *size, device=device), [size]), maps)[0]
            per_location = self.net.anchor_generator.num_anchors_per_location()[0]
            self._anchors[key] = (anchors, [h * w * per_location for h, w in levels])
        return self._anchors[key]

    def preprocess(self, images: list[Tensor], training: bool = False) -> Batch:
        """torchvision's transform (see the class docstring); ``training`` changes nothing (one size)."""
        image_list, _ = self.net.transform([_thick_enough(image, self.net.transform.max_size) for image in images])
        return Batch(inputs=(image_list.tensors,),
                     image_sizes=[(int(image.shape[-2]), int(image.shape[-1])) for image in images],
                     meta={"resized_sizes": [(int(h), int(w)) for h, w in image_list.image_sizes]})

    def forward_features(self, batch: Tensor) -> dict[str, Tensor]:
        """Normalised ``[B, 3, H, W]`` -> ``{"cls_logits": [B, A, K], "bbox_regression": [B, A, 4]}``."""
        features = list(self.net.backbone(batch).values())
        return self.net.head(features)

    def _batch_anchors(self, outputs: dict[str, Tensor], batch: Batch) -> tuple[Tensor, list[int]]:
        """:meth:`anchors_for` the batch's input size, checked against the outputs' anchor count."""
        anchors, per_level = self.anchors_for(batch.inputs[0].shape[-2:], outputs["cls_logits"].device)
        if sum(per_level) != outputs["cls_logits"].shape[1]:
            raise ValueError(f"RetinaNet outputs have {outputs['cls_logits'].shape[1]} anchors, the level sizes "
                             f"{level_sizes(batch.inputs[0].shape[-2:])} give {sum(per_level)}")
        return anchors, per_level

    def postprocess(self, outputs: dict[str, Tensor], batch: Batch, fast: bool = False) -> list[Detections]:
        """``net.postprocess_detections`` -> boxes xyxy in input-image pixels, by score. ``fast`` changes
        nothing (torchvision's path has no shortcut to take)."""
        anchors, per_level = self._batch_anchors(outputs, batch)
        split = {key: list(value.split(per_level, dim=1)) for key, value in outputs.items()}
        level_anchors = [list(anchors.split(per_level))] * len(batch.image_sizes)
        detections = self.net.postprocess_detections(split, level_anchors, batch.meta["resized_sizes"])
        return _to_input_pixels(detections, batch)

    def loss(self, outputs: dict[str, Tensor], batch: Batch, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """``net.compute_loss`` on the targets resized as the images were: ``"classification"``,
        ``"bbox_regression"`` and their sum ``"loss"``. ValueError on a box without area."""
        anchors, _ = self._batch_anchors(outputs, batch)
        resized = []
        for index, (target, original, size) in enumerate(zip(targets, batch.image_sizes, batch.meta["resized_sizes"])):
            boxes = resize_boxes(target["boxes"].float(), original, size)
            flat = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if flat.any():
                raise ValueError(f"target {index}: RetinaNet needs boxes with positive width and height, got "
                                 f"{target['boxes'][flat][0].tolist()}")
            resized.append({"boxes": boxes, "labels": target["labels"].long()})
        losses = self.net.compute_loss(resized, outputs, [anchors] * len(resized))
        losses["loss"] = sum(losses.values())
        return losses

    def export_spec(self, input_size: tuple[int, int] | None = None) -> ExportSpec:
        """The graph of :mod:`.export`, traced on a batch of two ``input_size`` images (default
        :meth:`input_size`); the batch is dynamic, the padded square input is not (class docstring)."""
        device = next(self.parameters()).device
        example = self.preprocess([torch.zeros(3, *(input_size or self.input_size()), device=device)] * 2)
        feeds = self.export_feeds(example)
        batch = torch.export.Dim("batch", min=1, max=1024)
        return ExportSpec(module=RetinaNetExport(self), example_inputs=(feeds["images"], feeds["image_sizes"]),
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_shapes=({0: batch}, {0: batch}))

    def export_feeds(self, batch: Batch) -> dict[str, Tensor]:
        """``images`` (the preprocessed batch) and ``image_sizes [B, 2]`` float32 (each resized image's h, w)."""
        sizes = torch.tensor(batch.meta["resized_sizes"], dtype=torch.float32, device=batch.inputs[0].device)
        return {"images": batch.inputs[0], "image_sizes": sizes}

    def detections_from_export(self, outputs: Sequence[Tensor], batch: Batch) -> list[Detections]:
        """``(batch_index, boxes, scores, labels)`` -> per-image detections in input-image pixels."""
        return _to_input_pixels(split_by_image(*outputs, num_images=len(batch.image_sizes)), batch)

    def preprocessing_spec(self) -> dict:
        """:meth:`preprocess` (torchvision's transform) written out (:mod:`scaledet.models.preprocessing`):
        normalised first, then the longest side resized to S (sizes floored, no antialiasing), padded
        bottom / right with zeros to the S x S square."""
        transform = self.net.transform
        return preprocessing.spec(
            constants={"S": int(transform.max_size)},
            let=[("scale", "min(S / min(h, w), S / max(h, w))"), ("new_h", "floor(h * scale)"),
                 ("new_w", "floor(w * scale)")],
            steps=[preprocessing.normalize(transform.image_mean, transform.image_std),
                   preprocessing.resize("(new_h, new_w)", antialias=False), preprocessing.pad("(S, S)")],
            feeds={"images": preprocessing.BATCH, "image_sizes": "[new_h, new_w]"},
            boxes="batch_index [M], boxes [M, 4] xyxy in resized-image pixels: x times w / new_w, y times h / new_h "
                  "for the image's pixels; scores [M], labels [M] (0-based: the 'config' metadata's class_names / "
                  "category_ids)",
            notes=["an image whose short side the resize would floor to 0 pixels (a 2000 x 3 strip) is first "
                   "stretched (bilinear) to short side ceil(max(h, w) / S) + 1"])


def _thick_enough(image: Tensor, side: int) -> Tensor:
    """``image`` ``[3, H, W]``, its short side stretched where torchvision's resize of the long side to ``side``
    would make it 0 pixels (a 2000 x 3 strip); boxes still map back through the image's own size (per axis)."""
    height, width = image.shape[-2:]
    need = math.ceil(max(height, width) / side) + 1  # the resize floors short * side / long
    if min(height, width) >= need:
        return image
    return F.interpolate(image[None], size=(max(height, need), max(width, need)), mode="bilinear",
                         align_corners=False)[0]


def _to_input_pixels(detections: list[Detections], batch: Batch) -> list[Detections]:
    """Boxes from resized-image pixels back to each input image's (torchvision's ``resize_boxes``), in place."""
    for det, size, original in zip(detections, batch.meta["resized_sizes"], batch.image_sizes):
        det["boxes"] = resize_boxes(det["boxes"], size, original)
    return detections


def build(name: str, num_classes: int | None = None, image_size: int | tuple[int, int] | None = None,
          class_names: list[str] | None = None, category_ids: list[int] | None = None,
          **overrides) -> RetinaNetDetector:
    """Build baseline ``name`` (a key of :data:`VARIANTS`), randomly initialised (weights files:
    our safetensors, :data:`CHECKPOINT`); ``overrides`` are :class:`RetinaNetVariant` fields (e.g.
    ``backbone="tf_efficientnet_b3"``)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(VARIANTS)}")
    check_option_names(overrides, RetinaNetVariant, "RetinaNet")
    if num_classes is not None:
        overrides["num_classes"] = int(num_classes)
    if image_size is not None:
        overrides["image_size"] = as_size(image_size)
    base = VARIANTS[name]
    variant = dataclasses.replace(base, **overrides)
    changed = {k: v for k, v in overrides.items() if k not in ("num_classes", "image_size") and v != getattr(base, k)}
    if variant.num_classes == len(COCO_NAMES_BY_ID) and class_names is None and category_ids is None:
        # torchvision's 91-class COCO head predicts the category id itself (label 0 unused), as DETR's
        class_names, category_ids = list(COCO_NAMES_BY_ID), list(range(len(COCO_NAMES_BY_ID)))
    return RetinaNetDetector(variant, name, class_names, overrides=changed, category_ids=category_ids)


def to_scaledet(state_dict: dict[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Ours (``net.*``) unchanged; torchvision's ``RetinaNet`` state dict (``backbone.body.*``,
    ``head.*``: e.g. ``retinanet_resnet50_fpn``'s COCO file) under ``net.`` (our ``net`` is that module)."""
    if any(key.startswith("net.") for key in state_dict):
        return state_dict
    if any(key.startswith(("backbone.body.", "head.classification_head.")) for key in state_dict):
        return {f"net.{key}": value for key, value in state_dict.items()}
    raise ValueError(f"not a RetinaNet checkpoint (scaledet or torchvision); first keys: {list(state_dict)[:5]}")


#: our safetensors files and torchvision's RetinaNet state dicts (no download of published weights);
#: the class predictor has anchors-per-location x K outputs
CHECKPOINT = CheckpointSpec(class_head=(CLASS_LOGITS,), class_bias=CLASS_LOGITS + "bias", convert=to_scaledet,
                            coco_hint="torchvision's retinanet_resnet50_fpn_coco-eeacb38b.pth loads into "
                                      "retinanet_r50_fpn: download it elsewhere and give its path")


def profile_info(name: str) -> dict:
    """For ``scaledet profile``: native size and the paper's numbers (params in M, GFLOPs = GMACs)."""
    variant = VARIANTS[name]
    paper = {"params_m": variant.paper_params_m, "gflops": variant.paper_gflops, "ap_test_dev": variant.paper_ap}
    side = variant.image_size[0]
    anchors = 9 * sum(math.ceil(side / 2**level) ** 2 for level in range(3, 8))
    return {"native_size": variant.image_size, "anchors": anchors, "paper": {k: v for k, v in paper.items() if v}}


