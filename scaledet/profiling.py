"""Model size and cost: parameters and multiply-accumulates (MACs).

MACs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix
products; activations, BN, pooling and additions are not counted) and divided by 2. The model is
built on the ``meta`` device, so nothing is computed and even D7x at 1536 px takes a second (a
model whose forward reads tensor values falls back to a real CPU forward pass).

Families join ``scaledet profile`` by exposing ``profile_info(name) -> dict`` in their package
(``scaledet/models/<family>/__init__.py``) with ``native_size=(h, w)``, optionally ``anchors`` (int),
``paper`` (``{"params_m": .., "gflops": .., ...}``) and ``forward`` (a callable ``(model, batch)`` that
runs the network on a ``[1, 3, h, w]`` batch; default ``model.forward_features(batch)`` if that takes
the batch alone, else ``model(list(batch))`` in eval mode).

Rows report total and trainable parameters: DETR freezes its stem and layer1 (R50: 41,302,368
trainable of 41,524,768).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scaledet.models.registry import create_model, family_hook


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _default_forward(model: nn.Module, batch: torch.Tensor):
    features = getattr(model, "forward_features", None)
    if features is not None and len(inspect.signature(features).parameters) == 1:
        return features(batch)
    return model(list(batch))


def count_macs(model: nn.Module, image_size: tuple[int, int], forward: Callable | None = None) -> int:
    """Multiply-accumulates of one forward pass of a batch of one ``image_size`` (h, w) image: FLOPs / 2."""
    device = next(model.parameters()).device
    batch = torch.zeros(1, 3, *image_size, device=device)
    model.eval()
    # frozen parameters instead of no_grad(): FlopCounterMode's module tracker trips over
    # parameters used as inputs under no_grad()
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            (forward or _default_forward)(model, batch)
    finally:
        for param, flag in zip(model.parameters(), flags):
            param.requires_grad_(flag)
    return counter.get_total_flops() // 2


def profile_model(name: str) -> dict[str, Any]:
    """Parameters, MACs at native resolution, anchors and the paper's numbers for model ``name``."""
    profile_info = family_hook(name, "profile_info")
    if profile_info is None:
        raise ValueError(f"model family of {name!r} does not provide profile_info()")
    info = profile_info(name)
    size = tuple(info["native_size"])
    try:  # on the meta device nothing is computed
        with torch.device("meta"):
            model = create_model(name)
        macs = count_macs(model, size, info.get("forward"))
    except (RuntimeError, NotImplementedError):  # a forward that reads tensor values: run it for real
        model = create_model(name)
        macs = count_macs(model, size, info.get("forward"))
    return {
        "model": name,
        "native_size": list(size),
        "params": count_parameters(model),
        "trainable_params": count_parameters(model, trainable_only=True),
        "macs": macs,
        "anchors": info.get("anchors"),
        "paper": dict(info.get("paper", {})),
    }
