"""Deformable DETR's ONNX graph (what :meth:`DeformableDETR.export_spec
<scaledet.models.deformable_detr.model.DeformableDETR.export_spec>` hands to :func:`scaledet.export.export_onnx`).

Inputs and dynamic axes are DETR's (:mod:`scaledet.models.detr.export`): ``images [B, 3, H, W]``
(ImageNet-normalised, zero-padded), ``mask [B, H, W]`` bool (True on padding), ``image_sizes [B, 2]``
float ``(h, w)``. Outputs: ``boxes [B, k, 4]`` xyxy original-image pixels, ``scores [B, k]``,
``labels [B, k]`` int64, the ``k = top_k`` best (query, class) pairs by score, as
:meth:`DeformableDETR.postprocess` returns them.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from scaledet.models.base import ExportSpec
from scaledet.models.deformable_detr.postprocess import ranked_detections
from scaledet.models.detr import export as detr_export


INPUT_NAMES, OUTPUT_NAMES = detr_export.INPUT_NAMES, detr_export.OUTPUT_NAMES


class DeformableDetrExport(nn.Module):
    """The network (:meth:`forward_features`) followed by :func:`ranked_detections`, tensors only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, mask: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, boxes = self.model.forward_features(images, mask)[:2]
        return ranked_detections(logits, boxes, image_sizes, self.model.top_k)


def smallest_side(num_levels: int) -> int:
    """The smallest input side whose coarsest level (stride ``2 ** (num_levels + 2)``: C3 is stride 8)
    is at least 2 pixels: ``torch.export`` treats dynamic sizes as >= 2 and guards the input to it
    (65 px for 4 levels); a size-1 level in the example would be specialised to a constant."""
    return 2 ** (num_levels + 2) + 1


def export_spec(model: nn.Module, input_size: tuple[int, int]) -> ExportSpec:
    """DETR's inputs with this family's module (``model`` in eval mode): the example of ``input_size``
    (h, w), at least :func:`smallest_side`; batch, height and width dynamic, height and width from
    :func:`smallest_side` to 4096."""
    smallest = smallest_side(len(model.input_proj))
    size = max(input_size[0], smallest), max(input_size[1], smallest)
    spec = detr_export.export_spec(model, size)
    batch = spec.dynamic_shapes[0][0]
    rows = torch.export.Dim("height", min=smallest, max=4096)
    columns = torch.export.Dim("width", min=smallest, max=4096)
    dynamic = ({0: batch, 2: rows, 3: columns}, {0: batch, 1: rows, 2: columns}, {0: batch})
    return dataclasses.replace(spec, module=DeformableDetrExport(model), dynamic_shapes=dynamic)
