"""Exponential moving average of the weights, on top of ``torch.optim.swa_utils.AveragedModel``.

The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as in timm's and the
TF EfficientDet code's EMA), so short from-scratch runs are not dominated by the random init.
Buffers (BatchNorm statistics) are averaged too. The target ``decay`` can be changed during the
run (:func:`set_ema_decay`): the adaptive recipe sets it once it knows how many steps the run makes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class WarmupEMA:
    """``multi_avg_fn`` for ``AveragedModel``: a foreach lerp with the warmed-up decay."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        step_decay = min(self.decay, (1.0 + n) / (10.0 + n))
        floating = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floating:
            torch._foreach_lerp_([a for a, _ in floating], [c for _, c in floating], 1.0 - step_decay)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)


def _check(decay: float) -> float:
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
    return decay


def create_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (``.module`` is the averaged detector); call ``update_parameters``."""
    ema = AveragedModel(model, multi_avg_fn=WarmupEMA(_check(decay)), use_buffers=True)
    ema.requires_grad_(False)
    return ema


def set_ema_decay(ema: AveragedModel, decay: float) -> None:
    """Change the target decay of an EMA made by :func:`create_ema`."""
    ema.multi_avg_fn.decay = _check(decay)
