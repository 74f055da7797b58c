"""Fold inference-mode BatchNorm into the convolution that feeds it (module surgery).

Pairs are discovered by running the module once with hooks: a BatchNorm whose input is the exact
output tensor of a convolution (each called exactly once) is folded into that convolution with
:func:`torch.nn.utils.fusion.fuse_conv_bn_weights`, then replaced by what it did after
normalising (timm's ``BatchNormAct2d`` keeps its dropout/activation, plain BatchNorm becomes
``Identity``). Convolutions that are called several times (weights shared across levels) are left
alone; families unshare them first (``Detector.prepare_for_inference``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _after_norm(norm: nn.Module) -> nn.Module:
    """What remains of ``norm`` once its affine normalisation lives in the conv."""
    parts = [getattr(norm, name) for name in ("drop", "act") if isinstance(getattr(norm, name, None), nn.Module)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def find_conv_norm_pairs(module: nn.Module, run: Callable[[], Any]) -> list[tuple[str, str]]:
    """(conv name, norm name) pairs where the norm consumes only that conv's output, found by ``run()``."""
    conv_out: dict[int, tuple[str, Tensor]] = {}
    calls: dict[str, int] = {}
    pairs: dict[str, str | None] = {}
    handles = []

    def conv_hook(name: str):
        def hook(_module, _inputs, output):
            calls[name] = calls.get(name, 0) + 1
            conv_out[id(output)] = (name, output)  # the tensor is kept alive so ids stay unique
        return hook

    def norm_hook(name: str):
        def hook(_module, inputs):
            calls[name] = calls.get(name, 0) + 1
            source = conv_out.get(id(inputs[0]))
            conv = source[0] if source is not None and source[1] is inputs[0] else None
            pairs[name] = conv if pairs.get(name, conv) == conv else None
        return hook

    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            handles.append(child.register_forward_hook(conv_hook(name)))
        elif isinstance(child, _NORMS):
            handles.append(child.register_forward_pre_hook(norm_hook(name)))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return [(conv, norm) for norm, conv in pairs.items()
            if conv is not None and calls[conv] == 1 and calls[norm] == 1]


def _set_submodule(root: nn.Module, name: str, value: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, value)


@torch.no_grad()
def fold_batchnorm(module: nn.Module, run: Callable[[], Any]) -> int:
    """Fold every eval-mode BatchNorm that directly follows a conv into it, in place.

    ``run`` is called once to trace the data flow (e.g. ``lambda: net(example)``). Returns the
    number of folded pairs. ``module`` must be in eval mode (running statistics are used).
    """
    if module.training:
        raise ValueError("fold_batchnorm needs an eval-mode module (call .eval() first)")
    pairs = find_conv_norm_pairs(module, run)
    for conv_name, norm_name in pairs:
        conv, norm = module.get_submodule(conv_name), module.get_submodule(norm_name)
        weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_mean)
        bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
        fused_w, fused_b = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                norm.eps, weight, bias)
        conv.weight, conv.bias = fused_w, fused_b
        _set_submodule(module, norm_name, _after_norm(norm))
    return len(pairs)
