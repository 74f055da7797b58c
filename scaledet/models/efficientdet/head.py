"""Class and box prediction nets, shared across pyramid levels with per-level BatchNorm."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from .feature_network import SeparableConv2d, activation, batch_norm


class HeadNet(nn.Module):
    """``repeats`` x (separable conv -> per-level BN -> activation), then a separable predict conv.

    Convolution weights are shared by all levels; BatchNorm is per repeat and per level.
    Input: list of ``[B, channels, H_l, W_l]``; output: list of ``[B, num_anchors * outputs, H_l, W_l]``
    (channel ``anchor * outputs + k``).
    """

    def __init__(self, channels: int, outputs: int, num_anchors: int, repeats: int, num_levels: int,
                 act: str = "silu", prior_probability: float | None = None) -> None:
        super().__init__()
        self.convs = nn.ModuleList(SeparableConv2d(channels, channels) for _ in range(repeats))
        self.norms = nn.ModuleList(
            nn.ModuleList(batch_norm(channels) for _ in range(num_levels)) for _ in range(repeats)
        )
        self.act = activation(act)
        self.predict = SeparableConv2d(channels, num_anchors * outputs)
        self.reset_parameters(prior_probability)

    def reset_parameters(self, prior_probability: float | None = None) -> None:
        """TF-style init: normal(0, 1/fan_in) weights, zero biases; predict bias from the prior."""
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                fan_in = conv.weight[0].numel()
                nn.init.normal_(conv.weight, std=math.sqrt(1.0 / fan_in))
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
        if prior_probability is not None:
            nn.init.constant_(self.predict.pointwise.bias, -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        outputs = []
        for level, x in enumerate(features):
            for conv, norms in zip(self.convs, self.norms):
                x = self.act(norms[level](conv(x)))
            outputs.append(self.predict(x))
        return outputs


class UnsharedHead(nn.Module):
    """A :class:`HeadNet` with its shared convs copied per level, so that each (conv, per-level
    BatchNorm) pair can be folded (:func:`scaledet.inference.fold.fold_batchnorm`); same outputs.
    list of ``[B, C, H_l, W_l]`` -> list of ``[B, A*outputs, H_l, W_l]``."""

    def __init__(self, head: HeadNet, num_levels: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            layers = []
            for conv, norms in zip(head.convs, head.norms):
                layers += [copy.deepcopy(conv), copy.deepcopy(norms[level]), copy.deepcopy(head.act)]
            self.levels.append(nn.Sequential(*layers))
        self.predict = head.predict

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [self.predict(chain(x)) for chain, x in zip(self.levels, features)]


def flatten_outputs(outputs: list[Tensor], width: int) -> Tensor:
    """Per-level ``[B, A_l * width, H, W]`` -> ``[B, sum_l H*W*A_l, width]`` in anchor order
    (level, row-major position, anchor)."""
    batch = outputs[0].shape[0]
    return torch.cat([o.permute(0, 2, 3, 1).reshape(batch, -1, width) for o in outputs], dim=1)
