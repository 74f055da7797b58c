"""Deformable DETR's multi-scale backbone (DETR's ResNet, three stages out) and its sine position encoding."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from scaledet.models.detr.backbone import ResNetBackbone, SinePositionEncoding


def downsampled_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """mask [B,H,W] bool (True on padding) -> [B,h,w] by nearest interpolation (DETR's rule)."""
    return F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]


class MultiScaleResNet(ResNetBackbone):
    """DETR's torchvision ResNet (frozen BatchNorm, stem + layer1 frozen by default) returning
    C3, C4 and C5 (layer2-4, strides 8, 16, 32) with the padding mask at each stride.

    Arguments as :class:`~scaledet.models.detr.backbone.ResNetBackbone` (no dilation).
    """

    def __init__(self, name: str = "resnet50", norm: str = "frozen", trainable_layers: int = 3) -> None:
        super().__init__(name, dilation=False, norm=norm, trainable_layers=trainable_layers)
        #: channels of C3, C4, C5 (each stage doubles them: 512/1024/2048 for ResNet-50)
        self.level_channels: tuple[int, ...] = (self.num_channels // 4, self.num_channels // 2, self.num_channels)

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """images [B,3,H,W] normalised, mask [B,H,W] bool (True on padding) ->
        [(C3 [B,C/4,H/8,W/8], mask [B,H/8,W/8]), (C4, mask /16), (C5 [B,C,H/32,W/32], mask /32)]."""
        body = self.body
        x = body.layer1(body.maxpool(body.relu(body.bn1(body.conv1(images)))))
        levels = []
        for stage in (body.layer2, body.layer3, body.layer4):
            x = stage(x)
            levels.append((x, downsampled_mask(mask, x.shape[-2:])))
        return levels


class CenteredSinePositionEncoding(SinePositionEncoding):
    """DETR's normalised sine encoding with pixel centres: position ``(count - 0.5) / total`` instead
    of ``count / total`` (Deformable DETR's form), scaled by 2*pi.

    ``forward``: mask [B,H,W] bool (True on padding) -> [B, 2F, H, W] float32, ``cat(pos_y, pos_x)``;
    ``encode_boxes`` (two-stage proposal embedding) as DETR's.
    """

    pixel_offset = 0.5
