"""Backbones: any timm model that supports ``features_only``, tapped at strides 8, 16, 32."""

from __future__ import annotations

import timm
from torch import nn


def create_backbone(name: str, drop_path_rate: float = 0.0, pretrained: bool = False) -> nn.Module:
    """A timm feature extractor returning ``[C3, C4, C5]`` (strides 8/16/32) for ``[B, 3, H, W]``.

    ``backbone.feature_info.channels()`` gives their channel counts (B0: 40, 112, 320).
    """
    kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    try:
        model = timm.create_model(name, features_only=True, pretrained=pretrained, out_indices=(2, 3, 4), **kwargs)
    except RuntimeError as error:  # timm raises RuntimeError for unknown names
        raise ValueError(f"unknown timm backbone {name!r}: {error}") from error
    if list(model.feature_info.reduction()) != [8, 16, 32]:
        raise ValueError(f"backbone {name!r} does not give features at strides 8/16/32 for out_indices (2, 3, 4)")
    return model
