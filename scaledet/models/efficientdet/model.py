"""The EfficientDet module: a pure tensor network plus the wrapper that implements the contract.

* :class:`EfficientDetNet` - ``[B, 3, H, W]`` normalised batch -> (class outputs, box outputs), one
  ``[B, A*K, H_l, W_l]`` / ``[B, A*4, H_l, W_l]`` tensor per level. Traceable: no data-dependent
  Python control flow.
* :class:`EfficientDet` - validates input, resizes (longest side) and pads each image to
  ``image_size``, normalises, and runs the loss (train) or post-processing (eval).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaledet.models.inputs import category_ids_for, check_images, check_targets, class_names_for

from .anchors import generate_anchors
from .backbone import create_backbone
from .config import EfficientDetVariant
from .feature_network import TOPOLOGIES, FeatureNetwork
from .head import HeadNet, flatten_outputs
from .loss import detection_loss
from .postprocess import select_detections

class EfficientDetNet(nn.Module):
    """Backbone -> feature network (BiFPN) -> shared class / box heads."""

    def __init__(self, variant: EfficientDetVariant) -> None:
        super().__init__()
        self.backbone = create_backbone(variant.backbone, variant.backbone_drop_path_rate)
        in_channels = self.backbone.feature_info.channels()[variant.min_level - 3 :]
        self.first_backbone_map = variant.min_level - 3
        if variant.feature_network not in TOPOLOGIES:
            raise ValueError(f"unknown feature_network {variant.feature_network!r}; choose one of {sorted(TOPOLOGIES)}")
        topology = TOPOLOGIES[variant.feature_network](variant.min_level, variant.max_level)
        self.fpn = FeatureNetwork(in_channels, variant.fpn_channels, topology, variant.fpn_repeats,
                                  variant.min_level, variant.max_level, variant.fusion, variant.activation)
        head = dict(channels=variant.fpn_channels, num_anchors=variant.num_anchors, repeats=variant.head_repeats,
                    num_levels=variant.num_levels, act=variant.activation)
        self.class_net = HeadNet(outputs=variant.num_classes, prior_probability=0.01, **head)
        self.box_net = HeadNet(outputs=4, **head)
        self._init_feature_network()

    def _init_feature_network(self) -> None:
        """Glorot-uniform as in the TF code, whose depthwise fan-out counts one channel per group."""
        for module in self.fpn.modules():
            if isinstance(module, nn.Conv2d):
                receptive = module.weight[0, 0].numel()
                fan_in = module.weight.shape[1] * receptive
                fan_out = module.weight.shape[0] * receptive // module.groups
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                nn.init.uniform_(module.weight, -limit, limit)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``[B, 3, H, W]`` normalised -> (class logits per level, box codes per level)."""
        features = self.backbone(x)[self.first_backbone_map :]
        features = self.fpn(features)
        return self.class_net(features), self.box_net(features)


class EfficientDet(nn.Module):
    """EfficientDet following the scaledet contract (see :mod:`scaledet`).

    Attributes: ``network`` (:class:`EfficientDetNet`), ``variant``, ``num_classes``,
    ``class_names``, ``category_ids`` (the dataset's category id of each label, default 1..K),
    ``image_size`` (h, w) and ``config`` (JSON-able, rebuilds the model).
    """

    def __init__(self, variant: EfficientDetVariant, name: str, class_names: list[str] | None = None,
                 overrides: dict | None = None, category_ids: list[int] | None = None) -> None:
        super().__init__()
        self.variant = variant
        self.name = name
        self.network = EfficientDetNet(variant)
        self.num_classes = variant.num_classes
        self.image_size = tuple(variant.image_size)
        self.class_names = class_names_for(class_names, self.num_classes)
        self.category_ids = category_ids_for(category_ids, self.num_classes)
        self.overrides = dict(overrides or {})
        self.register_buffer("mean", torch.tensor(variant.mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(variant.std).view(3, 1, 1), persistent=False)
        self._anchors: dict[tuple, Tensor] = {}  # (size, device) -> anchors

    @property
    def config(self) -> dict:
        """``{"model", "num_classes", "class_names", "category_ids", "image_size", "overrides"}`` for
        :func:`scaledet.create_model`."""
        return {"model": self.name, "num_classes": self.num_classes, "class_names": list(self.class_names),
                "category_ids": list(self.category_ids), "image_size": list(self.image_size),
                "overrides": dict(self.overrides)}

    def input_size(self) -> tuple[int, int]:
        """The (h, w) every image is resized and padded to; data pipelines may prepare exactly this."""
        return self.image_size

    def anchors_for(self, image_size: tuple[int, int] | None = None) -> Tensor:
        """Anchors ``[A, 4]`` xyxy in network-input pixels for an input of ``image_size`` (default: ours)."""
        size = tuple(image_size or self.image_size)
        key = (size, self.mean.device)
        if key not in self._anchors:
            v = self.variant
            anchors = generate_anchors(size, v.min_level, v.max_level, v.num_scales, v.aspect_ratios, v.anchor_scale)
            self._anchors[key] = anchors.to(self.mean.device)
        return self._anchors[key]

    def forward_features(self, batch: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The pure network: normalised ``[B, 3, H, W]`` -> per-level class logits and box codes."""
        return self.network(batch)

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, list[float], list[tuple[float, float]]]:
        """Resize each image (longest side) into ``image_size``, normalise, pad bottom/right with the
        mean colour. Returns the batch ``[B, 3, H, W]``, the scale per image and the (h, w) of the
        valid region in network pixels."""
        height, width = self.image_size
        batch = torch.zeros(len(images), 3, height, width, dtype=images[0].dtype, device=images[0].device)
        scales, valid = [], []
        for i, image in enumerate(images):
            h, w = image.shape[-2:]
            scale = min(height / h, width / w)
            new_h, new_w = min(height, round(h * scale)), min(width, round(w * scale))
            if (new_h, new_w) != (h, w):
                image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                                      antialias=scale < 1)[0]
            batch[i, :, :new_h, :new_w] = (image - self.mean) / self.std
            scales.append(scale)
            valid.append((h * scale, w * scale))
        return batch, scales, valid

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Eval: list of detections dicts. Train (``targets`` given): dict of named losses."""
        images = check_images(images)
        if targets is not None:
            check_targets(targets, len(images), self.num_classes)
        batch, scales, valid = self.preprocess(images)
        cls_out, box_out = self.forward_features(batch)
        cls_logits = flatten_outputs(cls_out, self.num_classes)
        box_codes = flatten_outputs(box_out, 4)
        anchors = self.anchors_for(tuple(batch.shape[-2:]))
        if targets is not None:
            scaled = [{"boxes": t["boxes"].to(batch) * s, "labels": t["labels"]} for t, s in zip(targets, scales)]
            v = self.variant
            return detection_loss(cls_logits, box_codes, anchors, scaled, self.num_classes, v.match_iou,
                                  v.focal_alpha, v.focal_gamma, v.huber_delta, v.box_loss_weight)
        return self.postprocess(cls_logits, box_codes, anchors, scales, valid)

    def postprocess(self, cls_logits: Tensor, box_codes: Tensor, anchors: Tensor, scales: list[float],
                    valid: list[tuple[float, float]]) -> list[dict[str, Tensor]]:
        """Flattened outputs ``[B, A, K]``, ``[B, A, 4]`` -> detections in each input image's pixels."""
        v = self.variant
        results = []
        for logits, codes, scale, size in zip(cls_logits, box_codes, scales, valid):
            det = select_detections(logits, codes, anchors, size, v.max_detection_points, v.max_detections,
                                    v.nms_iou, v.soft_nms, v.soft_nms_sigma)
            det["boxes"] = det["boxes"] / scale
            results.append(det)
        return results


def variant_overrides(base: EfficientDetVariant, variant: EfficientDetVariant) -> dict:
    """JSON-able fields where ``variant`` differs from ``base`` (num_classes and image_size excluded)."""
    out = {}
    for f in dataclasses.fields(base):
        value = getattr(variant, f.name)
        if f.name in ("num_classes", "image_size", "paper") or value == getattr(base, f.name):
            continue
        out[f.name] = [list(v) for v in value] if f.name == "aspect_ratios" else (list(value) if isinstance(value, tuple) else value)
    return out
