"""EfficientDet's ONNX graph: network + top-k + decode + clip + NMS, tensors in and out.

Inputs ``images [B, 3, H, W]`` (normalised, resized and padded to the model's ``image_size``, as
:meth:`EfficientDet.preprocess <scaledet.models.efficientdet.model.EfficientDet.preprocess>` makes
them) and ``valid_sizes [B, 2]`` float (h, w of the real image inside, network pixels); outputs
``batch_index [M]`` int64, ``boxes [M, 4]`` xyxy network pixels, ``scores [M]``, ``labels [M]``
int64 - per image at most ``max_detections``, by descending score; rows of score 0 are candidates that
clipping left without area (no detections: drop them, as any score threshold does). The decode helpers are the eager
model's (:mod:`.postprocess`); NMS is one ONNX ``NonMaxSuppression`` (per class via coordinate
offsets, :func:`scaledet.models.ops.nms_per_class`).

The feature network is exported with its fusion weights as constants
(:func:`~scaledet.models.efficientdet.feature_network.freeze_fusions`: ``w0 * x0 + w1 * x1 ...`` as
``Mul`` / ``Add`` instead of stacking the inputs and a ``ReduceSum``): the same values, and on D0 512
(batch 1, 1 thread) onnxruntime fp32 runs it 7% faster and INT8 15% faster (an ``Add`` of two
int8 maps is one integer kernel; a ``Concat`` requantizes every input).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from scaledet.models.ops import nms_per_class

from .feature_network import freeze_fusions
from .head import flatten_outputs
from .postprocess import decode_candidates, has_area, top_candidates

INPUT_NAMES = ["images", "valid_sizes"]
OUTPUT_NAMES = ["batch_index", "boxes", "scores", "labels"]


class EfficientDetExport(nn.Module):
    """Export-friendly detections (static top-k, constant anchors for ``image_size``), hard NMS.
    Soft-NMS models export with hard NMS: the graph has no gaussian soft-NMS."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.network = copy.deepcopy(model.network)  # the model itself keeps trainable fusion weights
        freeze_fusions(self.network)
        variant = model.variant
        self.num_classes = model.num_classes
        anchors = model.anchors_for(model.image_size, next(model.parameters()).device)
        self.register_buffer("anchors", anchors.clone(), persistent=False)
        self.max_points = variant.max_detection_points
        self.max_detections = variant.max_detections
        self.iou_threshold = variant.nms_iou
        self.class_offset = float(max(model.image_size) + 1)

    def forward(self, images: Tensor, valid_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cls_out, box_out = self.network(images)
        cls_logits = flatten_outputs(cls_out, self.num_classes)  # [B, A, K]
        box_codes = flatten_outputs(box_out, 4)  # [B, A, 4]
        logits, anchor_index, labels = top_candidates(cls_logits, self.max_points)  # [B, k]
        boxes = decode_candidates(box_codes, self.anchors, anchor_index, valid_sizes)  # [B, k, 4]
        scores = torch.where(has_area(boxes), logits.sigmoid(), 0.0)  # no area: no detection (sorted last)
        return nms_per_class(boxes, scores, labels, self.max_detections, self.iou_threshold, self.class_offset)
