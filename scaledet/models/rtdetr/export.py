"""RT-DETR's ONNX graph (what :meth:`RTDETR.export_spec <scaledet.models.rtdetr.model.RTDETR.export_spec>`
hands to :func:`scaledet.export.export_onnx`).

Inputs: ``images [B, 3, H, W]`` float in [0, 1] already resized to the model's fixed input size,
``image_sizes [B, 2]`` float ``(h, w)`` of each original image. Outputs: ``boxes [B, Q, 4]`` xyxy
original-image pixels, ``scores [B, Q]``, ``labels [B, Q]`` int64, by score. The batch is dynamic;
height and width are the model's (the proposal anchors and position embedding are constants).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scaledet.models.base import ExportSpec
from scaledet.models.rtdetr.postprocess import top_detections

INPUT_NAMES = ["images", "image_sizes"]
OUTPUT_NAMES = ["boxes", "scores", "labels"]


class RtDetrExport(nn.Module):
    """The network (:meth:`forward_features`) followed by :func:`top_detections`, tensors only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, boxes = self.model.forward_features(images)
        return top_detections(logits, boxes, image_sizes)


def export_spec(model: nn.Module, input_size: tuple[int, int]) -> ExportSpec:
    """The :class:`ExportSpec` of an eval-mode RT-DETR with a batch-2 example of ``input_size`` (h, w)."""
    height, width = input_size
    device = next(model.parameters()).device
    example = (torch.zeros(2, 3, height, width, device=device),
               torch.tensor([[height, width]] * 2, dtype=torch.float32, device=device))
    batch = torch.export.Dim("batch", min=1, max=1024)
    return ExportSpec(module=RtDetrExport(model), example_inputs=example, input_names=list(INPUT_NAMES),
                      output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: batch}, {0: batch}))
