"""DETR's ONNX graph (what :meth:`DETR.export_spec <scaledet.models.detr.model.DETR.export_spec>`
hands to :func:`scaledet.export.export_onnx`).

Inputs: ``images [B, 3, H, W]`` float (ImageNet-normalised, zero-padded bottom/right),
``mask [B, H, W]`` bool (True on padding) and ``image_sizes [B, 2]`` float ``(h, w)`` of each
original image. Outputs: ``boxes [B, Q, 4]`` xyxy original-image pixels, ``scores [B, Q]``,
``labels [B, Q]`` int64, each image's queries sorted by score. Batch, height and width are dynamic:
DETR pads each batch to its largest image, as the eager model does. No NMS (set prediction): all
Q queries are returned, exactly as :meth:`DETR.postprocess` returns them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scaledet.models.base import ExportSpec
from scaledet.models.detr.postprocess import ranked_detections

INPUT_NAMES = ["images", "mask", "image_sizes"]
OUTPUT_NAMES = ["boxes", "scores", "labels"]


class DetrExport(nn.Module):
    """The network (:meth:`forward_features`) followed by :func:`ranked_detections`, tensors only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, mask: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, boxes, _ = self.model.forward_features(images, mask)
        return ranked_detections(logits, boxes, image_sizes)


def export_spec(model: nn.Module, input_size: tuple[int, int]) -> ExportSpec:
    """The :class:`ExportSpec` of ``model`` (an eval-mode DETR) with a batch-2 example of ``input_size`` (h, w)."""
    height, width = input_size
    device = next(model.parameters()).device
    example = (torch.zeros(2, 3, height, width, device=device),
               torch.zeros(2, height, width, dtype=torch.bool, device=device),
               torch.tensor([[height, width]] * 2, dtype=torch.float32, device=device))
    batch = torch.export.Dim("batch", min=1, max=1024)
    rows, columns = torch.export.Dim("height", min=32, max=4096), torch.export.Dim("width", min=32, max=4096)
    dynamic = ({0: batch, 2: rows, 3: columns}, {0: batch, 1: rows, 2: columns}, {0: batch})
    return ExportSpec(module=DetrExport(model), example_inputs=example, input_names=list(INPUT_NAMES),
                      output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic)
