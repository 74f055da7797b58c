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

from torch import Tensor, nn

from scaledet.models.base import ExportSpec
from scaledet.models.deformable_detr.postprocess import ranked_detections
from scaledet.models.detr import export as detr_export


class DeformableDetrExport(nn.Module):
    """The network (:meth:`forward_features`) followed by :func:`ranked_detections`, tensors only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, mask: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, boxes = self.model.forward_features(images, mask)[:2]
        return ranked_detections(logits, boxes, image_sizes, self.model.top_k)


def example_size(input_size: tuple[int, int], num_levels: int) -> tuple[int, int]:
    """``input_size`` (h, w), enlarged where needed so that the coarsest level (stride
    ``2 ** (num_levels + 2)``: C3 is stride 8) is at least 2x2: ``torch.export`` specialises a
    dimension of size 1 in the example to a constant, and the graph would then fail on larger inputs."""
    smallest = 2 * 2 ** (num_levels + 2)
    return max(input_size[0], smallest), max(input_size[1], smallest)


def export_spec(model: nn.Module, input_size: tuple[int, int]) -> ExportSpec:
    """DETR's inputs and dynamic axes with this family's module (``model`` in eval mode); the
    example of ``input_size`` (h, w), at least :func:`example_size`."""
    size = example_size(input_size, len(model.input_proj))
    return dataclasses.replace(detr_export.export_spec(model, size), module=DeformableDetrExport(model))
