"""The EfficientDet module: a pure tensor network plus the wrapper that implements the contract.

* :class:`EfficientDetNet` - ``[B, 3, H, W]`` normalised batch -> (class outputs, box outputs), one
  ``[B, A*K, H_l, W_l]`` / ``[B, A*4, H_l, W_l]`` tensor per level. Traceable: no data-dependent
  Python control flow.
* :class:`EfficientDet` - the :class:`~scaledet.models.base.Detector`: resizes (longest side) and
  pads each image to ``image_size``, normalises, and runs the loss (train) or post-processing
  (eval, :mod:`.postprocess`); its export graph is :mod:`.export`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaledet.models import preprocessing
from scaledet.models.base import Batch, Detections, Detector, ExportSpec
from scaledet.models.ops import split_by_image

from .anchors import generate_anchors
from .backbone import create_backbone
from .config import EfficientDetVariant
from .export import INPUT_NAMES, OUTPUT_NAMES, EfficientDetExport
from .feature_network import TOPOLOGIES, FeatureNetwork, freeze_fusions
from .head import HeadNet, UnsharedHead, flatten_outputs
from .loss import detection_loss
from .postprocess import select_detections, with_area_only


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


class EfficientDet(Detector):
    """EfficientDet implementing the :class:`~scaledet.models.base.Detector` contract.

    Attributes: ``network`` (:class:`EfficientDetNet`), ``variant``, and the contract's ``name``,
    ``num_classes``, ``class_names``, ``category_ids`` (default 1..K), ``image_size`` (h, w),
    ``overrides`` and ``config``.

    :meth:`preprocess` resizes each image (longest side) into ``image_size``, normalises it and pads
    bottom/right with the mean colour: :class:`~scaledet.models.base.Batch` with ``inputs = (batch
    [B, 3, H, W],)`` and ``meta = {"scales": [s_i], "valid": [(h_i * s_i, w_i * s_i)]}`` (resize
    scale and valid region in network pixels). :meth:`forward_features` returns the per-level
    ``([B, A_l*K, H_l, W_l], ...), ([B, A_l*4, H_l, W_l], ...)`` class logits and box codes.
    """

    backbone_prefix = "network.backbone."  # the EfficientNet (what --backbone-lr trains at its own lr)

    def __init__(self, variant: EfficientDetVariant, name: str, class_names: list[str] | None = None,
                 overrides: dict | None = None, category_ids: list[int] | None = None) -> None:
        super().__init__(name, variant.num_classes, variant.image_size, class_names, category_ids, overrides)
        self.variant = variant
        self.network = EfficientDetNet(variant)
        self._anchors: dict[tuple, Tensor] = {}  # (input size, device) -> anchors
        self._mean_std: dict[torch.device, Tensor] = {}  # device -> [2, 3, 1, 1]

    def anchors_for(self, image_size: tuple[int, int] | None = None,
                    device: torch.device | str | None = None) -> Tensor:
        """Anchors ``[A, 4]`` xyxy in network-input pixels for an input of ``image_size`` (h, w;
        default ours) on ``device`` (default CPU); generated from the variant, cached."""
        size, device = tuple(image_size or self.image_size), torch.device(device or "cpu")
        if (size, device) not in self._anchors:
            v = self.variant
            anchors = generate_anchors(size, v.min_level, v.max_level, v.num_scales, v.aspect_ratios, v.anchor_scale)
            self._anchors[size, device] = anchors.to(device)
        return self._anchors[size, device]

    def _normalisation(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The variant's mean and std as float32 ``[3, 1, 1]`` tensors on ``device``, cached."""
        if device not in self._mean_std:
            self._mean_std[device] = torch.tensor([self.variant.mean, self.variant.std], device=device).view(2, 3, 1, 1)
        mean, std = self._mean_std[device]
        return mean, std

    def preprocess(self, images: list[Tensor], training: bool = False) -> Batch:
        """Resize each image (longest side) into ``image_size``, normalise, pad bottom/right with the
        mean colour (see the class docstring). The same at training time: the data pipeline crops."""
        height, width = self.image_size
        device = images[0].device
        mean, std = self._normalisation(device)
        batch = torch.zeros(len(images), 3, height, width, dtype=images[0].dtype, device=device)
        scales, valid = [], []
        for i, image in enumerate(images):
            h, w = image.shape[-2:]
            scale = min(height / h, width / w)
            # at least one pixel: a 2000 x 3 strip scales its short side below one
            new_h, new_w = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
            if (new_h, new_w) != (h, w):
                image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                                      antialias=scale < 1)[0]
            batch[i, :, :new_h, :new_w] = (image - mean) / std
            scales.append(scale)
            valid.append((h * scale, w * scale))
        return Batch(inputs=(batch,), image_sizes=[(int(image.shape[-2]), int(image.shape[-1])) for image in images],
                     meta={"scales": scales, "valid": valid})

    def forward_features(self, batch: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The pure network: normalised ``[B, 3, H, W]`` -> per-level class logits and box codes."""
        return self.network(batch)

    def _flat_outputs(self, outputs: tuple[list[Tensor], list[Tensor]], batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Per-level outputs -> (class logits ``[B, A, K]``, box codes ``[B, A, 4]``, anchors ``[A, 4]``)."""
        cls_out, box_out = outputs
        cls_logits = flatten_outputs(cls_out, self.num_classes)
        anchors = self.anchors_for(tuple(batch.inputs[0].shape[-2:]), cls_logits.device)
        return cls_logits, flatten_outputs(box_out, 4), anchors

    def postprocess(self, outputs: tuple[list[Tensor], list[Tensor]], batch: Batch,
                    fast: bool = False) -> list[Detections]:
        """Top-k, decode, clip to the valid region, per-class NMS (:func:`.postprocess.select_detections`),
        boxes divided by each image's resize scale: xyxy pixels of the input images."""
        cls_logits, box_codes, anchors = self._flat_outputs(outputs, batch)
        v = self.variant
        clip_sizes = torch.tensor(batch.meta["valid"], dtype=torch.float64)
        results = select_detections(cls_logits, box_codes, anchors, clip_sizes, v.max_detection_points,
                                    v.max_detections, v.nms_iou, v.soft_nms, v.soft_nms_sigma, fast=fast)
        return _to_input_pixels(results, batch.meta["scales"])

    def loss(self, outputs: tuple[list[Tensor], list[Tensor]], batch: Batch,
             targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Focal loss + Huber box loss (``"class_loss"``, ``"box_loss"``, ``"loss"``); target boxes are
        scaled into network pixels."""
        cls_logits, box_codes, anchors = self._flat_outputs(outputs, batch)
        scales = batch.meta["scales"]
        network_input = batch.inputs[0]
        scaled = [{"boxes": t["boxes"].to(network_input) * s, "labels": t["labels"]} for t, s in zip(targets, scales)]
        v = self.variant
        return detection_loss(cls_logits, box_codes, anchors, scaled, self.num_classes, v.match_iou,
                              v.focal_alpha, v.focal_gamma, v.huber_delta, v.box_loss_weight)

    def prepare_for_inference(self) -> None:
        """Unshare the heads' convs per level (so BatchNorm folds) and freeze the fusion weights."""
        net, levels = self.network, self.variant.num_levels
        net.class_net, net.box_net = UnsharedHead(net.class_net, levels), UnsharedHead(net.box_net, levels)
        freeze_fusions(net)

    def export_spec(self, input_size: tuple[int, int] | None = None) -> ExportSpec:
        """The graph of :mod:`.export` at ``image_size`` (every image is resized and padded to it, so
        ``input_size`` must be ``None`` or equal). Soft-NMS models export with hard NMS."""
        if input_size is not None and tuple(input_size) != tuple(self.image_size):
            raise ValueError(f"EfficientDet exports at its image_size {self.image_size}, got input_size {input_size}; "
                             "build the model with image_size=... instead")
        device = next(self.parameters()).device
        images = torch.zeros(2, 3, *self.image_size, device=device)
        valid = torch.tensor([list(self.image_size)] * 2, dtype=torch.float32, device=device)
        batch = torch.export.Dim("batch", min=1, max=1024)
        return ExportSpec(module=EfficientDetExport(self), example_inputs=(images, valid),
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_shapes=({0: batch}, {0: batch}))

    def export_feeds(self, batch: Batch) -> dict[str, Tensor]:
        """``images`` (the preprocessed batch) and ``valid_sizes [B, 2]`` float32."""
        return {"images": batch.inputs[0], "valid_sizes": torch.tensor(batch.meta["valid"], dtype=torch.float32)}

    def detections_from_export(self, outputs: Sequence[Tensor], batch: Batch) -> list[Detections]:
        """``(batch_index, boxes, scores, labels)`` -> per-image detections in input-image pixels (the graph's
        score-0 rows, candidates without area, dropped as the eager path drops them)."""
        results = with_area_only(split_by_image(*outputs, num_images=len(batch.image_sizes)))
        return _to_input_pixels(results, batch.meta["scales"])

    def preprocessing_spec(self) -> dict:
        """:meth:`preprocess` written out (:mod:`scaledet.models.preprocessing`): longest side fitted into
        ``image_size``, normalised, padded bottom / right with zeros (the mean colour) to ``image_size``."""
        height, width = self.image_size
        return preprocessing.spec(
            constants={"H": height, "W": width},
            let=[("scale", "min(H / h, W / w)"), ("new_h", "max(1, min(H, round(h * scale)))"),
                 ("new_w", "max(1, min(W, round(w * scale)))")],
            steps=[preprocessing.resize("(new_h, new_w)", antialias="scale < 1"),
                   preprocessing.normalize(self.variant.mean, self.variant.std), preprocessing.pad("(H, W)")],
            feeds={"images": preprocessing.BATCH, "valid_sizes": "[h * scale, w * scale]"},
            boxes="batch_index [M], boxes [M, 4] xyxy in network-input pixels: divide by the image's scale for its "
                  "pixels; scores [M] (rows of score 0 are candidates left without area: drop them), labels [M] "
                  "(0-based: the 'config' metadata's class_names / category_ids)")


def _to_input_pixels(detections: list[Detections], scales: list[float]) -> list[Detections]:
    """Divide each image's boxes (network pixels) by its resize scale, in place; returns ``detections``."""
    for det, scale in zip(detections, scales):
        det["boxes"] = det["boxes"] / scale
    return detections


def variant_overrides(base: EfficientDetVariant, variant: EfficientDetVariant) -> dict:
    """JSON-able fields where ``variant`` differs from ``base`` (num_classes and image_size excluded)."""
    out = {}
    for f in dataclasses.fields(base):
        value = getattr(variant, f.name)
        if f.name in ("num_classes", "image_size", "paper") or value == getattr(base, f.name):
            continue
        out[f.name] = [list(v) for v in value] if f.name == "aspect_ratios" else (list(value) if isinstance(value, tuple) else value)
    return out
