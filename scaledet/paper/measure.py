"""What ``scaledet paper`` measures: parameters and MACs (meta device), and latency (real forward passes).

MACs follow :mod:`scaledet.profiling` (``FlopCounterMode`` total / 2, convolutions and matrix
products only). Latency is the network's forward pass (``model.forward_features`` on a
``[1, 3, H, W]`` batch: backbone, feature network and heads; no pre- or post-processing), the
median of ``runs`` timed passes after ``warmup`` untimed ones, under ``torch.inference_mode``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scaledet.models.registry import create_model
from scaledet.profiling import count_parameters


@dataclass(frozen=True)
class Size:
    """Parameters and MACs of a model, and of one named submodule (``part``) if asked for."""

    params: int
    macs: int
    part_params: int | None = None
    part_macs: int | None = None


def build_meta(name: str, **overrides) -> nn.Module:
    """``create_model(name, **overrides)`` on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        return create_model(name, **overrides)


def measure_size(model: nn.Module, image_size: tuple[int, int], part: str | None = None) -> Size:
    """Params and MACs of ``model`` for one ``image_size`` (h, w) input; ``part`` is a submodule path
    (e.g. ``"network.fpn"``) whose own params and MACs are reported too."""
    try:
        module = model.get_submodule(part) if part is not None else None
    except AttributeError as error:
        raise ValueError(f"no submodule {part!r} in {type(model).__name__}: {error}") from error
    device = next(model.parameters()).device
    batch = torch.zeros(1, 3, *image_size, device=device)
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)  # see scaledet.profiling.count_macs
    try:
        with FlopCounterMode(display=False) as counter:
            model.forward_features(batch)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    if part is None:
        return Size(count_parameters(model), counter.get_total_flops() // 2)
    counts = counter.get_flop_counts()
    # the tracker names modules from the outermost one called (e.g. "EfficientDetNet.fpn")
    paths = {k: k.partition(".")[2] for k in counts}
    matches = [k for k, p in paths.items() if p and (part == p or part.endswith("." + p))]
    key = max(matches, key=lambda k: len(paths[k]), default=None)
    if key is None:
        raise ValueError(f"no FLOPs recorded for submodule {part!r}")
    return Size(count_parameters(model), counter.get_total_flops() // 2, count_parameters(module),
                sum(counts[key].values()) // 2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(fn: Callable[[], object], device: torch.device, runs: int, warmup: int = 1) -> list[float]:
    """Wall times in ms of ``runs`` calls of ``fn`` after ``warmup`` untimed calls."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync(device)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append((time.perf_counter() - start) * 1000)
    return times


def model_latency_ms(name: str, device: str = "cpu", runs: int = 3, warmup: int = 1, **overrides) -> float:
    """Median batch-1 latency (ms) of ``name``'s network at its native size on ``device``."""
    target = torch.device(device)
    model = create_model(name, **overrides).eval().to(target)
    batch = torch.rand(1, 3, *model.image_size, device=target)
    return statistics.median(time_forward(lambda: model.forward_features(batch), target, runs, warmup))


def fusion_speed(name: str, device: str = "cpu", runs: int = 5, part: str = "network.fpn") -> dict[str, float]:
    """Median ms of ``name``'s feature network (``part``) with fast vs softmax fusion, same weights
    and inputs, runs interleaved to share the machine's noise. Returns ``fast_ms``, ``softmax_ms``
    and ``speedup`` = softmax / fast."""
    target = torch.device(device)
    models = {f: create_model(name, fusion=f).eval().to(target) for f in ("fast", "softmax")}
    models["softmax"].load_state_dict(models["fast"].state_dict())
    network = models["fast"].network
    batch = torch.rand(1, 3, *models["fast"].image_size, device=target)
    with torch.inference_mode():
        features = network.backbone(batch)[network.first_backbone_map :]
    parts = {f: m.get_submodule(part) for f, m in models.items()}
    times: dict[str, list[float]] = {"fast": [], "softmax": []}
    for _ in range(runs):
        for fusion, module in parts.items():
            times[fusion] += time_forward(lambda: module(features), target, runs=1, warmup=1 if not times[fusion] else 0)
    fast, soft = statistics.median(times["fast"]), statistics.median(times["softmax"])
    return {"fast_ms": fast, "softmax_ms": soft, "speedup": soft / fast}
