"""DETR's backbone (torchvision ResNet with frozen BatchNorm) and sine positional encoding."""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d

_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
BACKBONE_NORMS = ("frozen", "batch")


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk returning layer4 features and the downsampled padding mask.

    The official DETR (the default here) fine-tunes an ImageNet ResNet: BatchNorm is
    :class:`torchvision.ops.FrozenBatchNorm2d` everywhere and the stem and layer1 are frozen
    (``requires_grad=False``); layer2-4 train. Training from scratch (no ImageNet weights, e.g.
    offline) needs ``norm="batch"`` and ``trainable_layers=5``: frozen identity statistics and
    frozen random early layers leave a random network little to learn with.

    Args:
        name: torchvision ResNet name (``"resnet50"``, ``"resnet101"``, ``"resnet18"``...).
        dilation: DC5 - dilation instead of stride in layer4 (output stride 16 instead of 32).
        norm: ``"frozen"`` (FrozenBatchNorm2d, the published weights) or ``"batch"`` (BatchNorm2d).
        trainable_layers: how many of (layer4, layer3, layer2, layer1, stem) train, counted from
            layer4 (0-5; torchvision's ``trainable_backbone_layers``); the rest get no gradient.
    """

    def __init__(self, name: str = "resnet50", dilation: bool = False, norm: str = "frozen",
                 trainable_layers: int = 3) -> None:
        super().__init__()
        if not name.startswith("resnet"):
            raise ValueError(f"DETR backbone must be a torchvision ResNet, got {name!r}")
        if norm not in BACKBONE_NORMS:
            raise ValueError(f"DETR backbone norm must be one of {BACKBONE_NORMS}, got {norm!r}")
        if not 0 <= trainable_layers <= len(_STAGES):
            raise ValueError(f"trainable_layers must be in 0..{len(_STAGES)}, got {trainable_layers}")
        body = torchvision.models.get_model(
            name, weights=None, norm_layer=FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d,
            replace_stride_with_dilation=[False, False, dilation],
        )
        self.num_channels: int = body.fc.in_features
        del body.fc, body.avgpool
        self.body = body
        trainable = _STAGES[len(_STAGES) - trainable_layers:]
        for param_name, param in self.body.named_parameters():
            stage = param_name.split(".")[0] if param_name.startswith("layer") else "stem"
            if stage not in trainable:
                param.requires_grad_(False)

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """images [B,3,H,W] normalised, mask [B,H,W] bool (True on padding) ->
        (features [B,C,H/s,W/s], mask [B,H/s,W/s] resized with nearest interpolation)."""
        body = self.body
        x = body.maxpool(body.relu(body.bn1(body.conv1(images))))
        x = body.layer4(body.layer3(body.layer2(body.layer1(x))))
        small_mask = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
        return x, small_mask


class SinePositionEncoding(nn.Module):
    """Parameter-free 2-D sine/cosine encoding of pixel positions (DETR's ``normalize=True`` form).

    For each axis, positions are the cumulative count of valid (not padded) pixels, divided by the
    axis total (+1e-6) and scaled by 2*pi; feature ``i`` uses frequency ``T^(2*floor(i/2)/F)`` with
    sin on even and cos on odd indices. Output channels are ``cat(pos_y, pos_x)``. Subclasses may
    set :attr:`pixel_offset` (counts minus the offset: 0.5 gives pixel centres).
    """

    #: subtracted from each cumulative count before normalising (DETR: 0)
    pixel_offset: float = 0.0

    def __init__(self, num_features: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi) -> None:
        super().__init__()
        self.num_features = num_features
        self.temperature = temperature
        self.scale = scale

    def _encode(self, position: Tensor) -> Tensor:
        """position [B,H,W] -> [B,H,W,F] interleaved sin/cos."""
        index = torch.arange(self.num_features, dtype=torch.float32, device=position.device)
        frequencies = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / self.num_features)
        angles = position[..., None] / frequencies
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)

    def encode_boxes(self, boxes: Tensor) -> Tensor:
        """boxes [..., 4] normalised to [0, 1] -> [..., 4F]: each coordinate * ``scale`` encoded as
        one axis (DETR's query denoising embeds noised boxes with it)."""
        return self._encode(boxes * self.scale).flatten(-2)

    def forward(self, mask: Tensor) -> Tensor:
        """mask [B,H,W] bool (True on padding) -> positions [B, 2F, H, W] float32."""
        valid = (~mask).to(torch.float32)
        y = valid.cumsum(1)
        x = valid.cumsum(2)
        y = (y - self.pixel_offset) / (y[:, -1:, :] + 1e-6) * self.scale
        x = (x - self.pixel_offset) / (x[:, :, -1:] + 1e-6) * self.scale
        return torch.cat((self._encode(y), self._encode(x)), dim=3).permute(0, 3, 1, 2)
