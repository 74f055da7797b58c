"""A generic multi-level feature network: topologies are data, nodes reuse small blocks.

A *topology* is a tuple of :class:`NodeSpec`. Node inputs index a growing list of feature
maps: ``0 .. L-1`` are the layer's inputs (levels ``min_level .. max_level``), node ``n`` of
the topology appends entry ``L + n``. A layer outputs, per level, the last entry at that
level. BiFPN is :func:`bifpn_topology`; other pyramids (repeated top-down FPN, PANet, NAS-FPN,
...) are further topology functions registered in :data:`TOPOLOGIES` reusing the same blocks:

* :class:`Resample` - 1x1 conv + BN where channels differ, then nearest upsample or a
  TF-"same" max-pool to the target level;
* fusions :class:`FastNormalizedFusion`, :class:`SoftmaxFusion`, :class:`SumFusion`;
* :class:`FeatureNode` - resample inputs, fuse, activation -> separable conv -> BN.

All tensors are ``[B, C, H, W]``; level ``l`` has stride ``2**l`` and size
``ceil(image / 2**l)`` per side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import create_pool2d
from torch import Tensor, nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the TF reference's eps 1e-3 and momentum 0.01 (PyTorch convention)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def activation(name: str) -> nn.Module:
    """``"silu"`` or ``"relu6"`` as a module."""
    return {"silu": nn.SiLU, "relu6": nn.ReLU6}[name]()


@dataclass(frozen=True)
class NodeSpec:
    """One node: output level, indices of its inputs, fusion kind (``None``: the network's)."""

    level: int
    inputs: tuple[int, ...]
    fusion: str | None = None


Topology = tuple[NodeSpec, ...]


def bifpn_topology(min_level: int = 3, max_level: int = 7) -> Topology:
    """BiFPN: a top-down pass (P_{max-1} .. P_min) then a bottom-up pass (P_{min+1} .. P_max).

    Top-down node at level l fuses [latest P_l, latest P_{l+1}]; bottom-up node at level l fuses
    [input P_l, top-down P_l (absent at max_level), latest P_{l-1}].
    """
    levels = range(min_level, max_level + 1)
    entries = {level: [index] for index, level in enumerate(levels)}  # level -> entry indices
    nodes: list[NodeSpec] = []

    def add(level: int, inputs: list[int]) -> None:
        nodes.append(NodeSpec(level, tuple(inputs)))
        entries[level].append(len(levels) + len(nodes) - 1)

    for level in range(max_level - 1, min_level - 1, -1):
        add(level, [entries[level][-1], entries[level + 1][-1]])
    for level in range(min_level + 1, max_level + 1):
        add(level, entries[level] + [entries[level - 1][-1]])
    return tuple(nodes)


#: Topology name -> function(min_level, max_level) -> Topology.
TOPOLOGIES: dict[str, Callable[[int, int], Topology]] = {"bifpn": bifpn_topology}


def max_pool_same(stride: int) -> nn.Module:
    """Max-pool with kernel ``stride + 1`` and TensorFlow "SAME" padding (pads with -inf)."""
    return create_pool2d("max", kernel_size=stride + 1, stride=stride, padding="same")


class Resample(nn.Module):
    """Bring a feature map from ``in_level`` to ``out_level`` with ``out_channels`` channels.

    [B, in_channels, H_in, W_in] -> [B, out_channels, *size]; 1x1 conv (+bias) + BN only if the
    channel counts differ, applied before nearest upsampling or max-pool downsampling.
    """

    def __init__(self, in_channels: int, out_channels: int, in_level: int, out_level: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.norm = batch_norm(out_channels) if in_channels != out_channels else None
        self.pool = max_pool_same(2 ** (out_level - in_level)) if out_level > in_level else None
        self.upsample = out_level < in_level

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if self.proj is not None:
            x = self.norm(self.proj(x))
        if self.pool is not None:
            x = self.pool(x)
        elif self.upsample:
            x = F.interpolate(x, size=size, mode="nearest")
        return x


class FastNormalizedFusion(nn.Module):
    """sum_i relu(w_i) * x_i / (sum_j relu(w_j) + eps), weights initialised to 1."""

    def __init__(self, num_inputs: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_inputs))
        self.eps = eps

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        weight = F.relu(self.weight.to(inputs[0].dtype))
        weight = weight / (weight.sum() + self.eps)
        return torch.stack([x * weight[i] for i, x in enumerate(inputs)], dim=-1).sum(dim=-1)

    @torch.no_grad()
    def frozen_weights(self) -> list[float]:
        """The normalised weights as constants (see :class:`FrozenWeightedSum`)."""
        weight = F.relu(self.weight)
        return [float(w) for w in weight / (weight.sum() + self.eps)]


class SoftmaxFusion(nn.Module):
    """sum_i softmax(w)_i * x_i, weights initialised to 1."""

    def __init__(self, num_inputs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_inputs))

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        weight = torch.softmax(self.weight.to(inputs[0].dtype), dim=0)
        return (torch.stack(list(inputs), dim=-1) * weight).sum(dim=-1)

    @torch.no_grad()
    def frozen_weights(self) -> list[float]:
        """The softmax weights as constants (see :class:`FrozenWeightedSum`)."""
        return [float(w) for w in torch.softmax(self.weight, dim=0)]


class SumFusion(nn.Module):
    """Plain sum of the inputs (no parameters)."""

    def __init__(self, num_inputs: int) -> None:
        super().__init__()

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return torch.stack(list(inputs), dim=-1).sum(dim=-1)

    def frozen_weights(self) -> None:
        """No weights: a plain sum (see :class:`FrozenWeightedSum`)."""
        return None


FUSION_MODULES: dict[str, type[nn.Module]] = {
    "fast": FastNormalizedFusion,
    "softmax": SoftmaxFusion,
    "sum": SumFusion,
}


class FrozenWeightedSum(nn.Module):
    """A fusion node with its (eval-time constant) weights precomputed: ``sum_i w_i * x_i`` via
    in-place adds instead of stacking the inputs (``weights=None``: a plain sum). list of
    ``[B, C, H, W]`` -> ``[B, C, H, W]``."""

    def __init__(self, weights: list[float] | None) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        if self.weights is None:
            out = inputs[0].clone()
            for x in inputs[1:]:
                out.add_(x)
            return out
        out = inputs[0] * self.weights[0]
        for x, w in zip(inputs[1:], self.weights[1:]):
            out.add_(x, alpha=w)
        return out


def freeze_fusions(network: nn.Module) -> int:
    """Replace, in place, every fusion module under ``network`` that is a weighted sum (it has
    ``frozen_weights()``: fast, softmax, sum) by a :class:`FrozenWeightedSum` with its current
    weights; other fusions (e.g. NAS-FPN's global attention) stay. Eval only: the weights no longer
    train. Returns the number replaced."""
    names = [name for name, module in network.named_modules() if callable(getattr(module, "frozen_weights", None))]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = network.get_submodule(parent) if parent else network
        setattr(owner, child, FrozenWeightedSum(owner.get_submodule(child).frozen_weights()))
    return len(names)


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (no bias) -> pointwise 1x1 (with bias). [B, C_in, H, W] -> [B, C_out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class FeatureNode(nn.Module):
    """Resample every input to the node's level, fuse, then activation -> separable conv -> BN."""

    def __init__(self, in_channels: Sequence[int], in_levels: Sequence[int], level: int,
                 channels: int, fusion: str, act: str) -> None:
        super().__init__()
        self.level = level
        self.resample = nn.ModuleList(
            Resample(c, channels, in_level, level) for c, in_level in zip(in_channels, in_levels)
        )
        self.fusion = FUSION_MODULES[fusion](len(in_channels))
        self.act = activation(act)
        self.conv = SeparableConv2d(channels, channels)
        self.norm = batch_norm(channels)

    def forward(self, inputs: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        fused = self.fusion([resample(x, size) for resample, x in zip(self.resample, inputs)])
        return self.norm(self.conv(self.act(fused)))


class FeatureLayer(nn.Module):
    """One pass of a topology: list of L maps (levels min..max) -> list of L maps, ``channels`` each."""

    def __init__(self, topology: Topology, in_channels: Sequence[int], min_level: int,
                 channels: int, fusion: str, act: str) -> None:
        super().__init__()
        entry_channels = list(in_channels)
        entry_levels = list(range(min_level, min_level + len(in_channels)))
        self.inputs = [spec.inputs for spec in topology]
        self.nodes = nn.ModuleList()
        for spec in topology:
            self.nodes.append(FeatureNode(
                [entry_channels[i] for i in spec.inputs], [entry_levels[i] for i in spec.inputs],
                spec.level, channels, spec.fusion or fusion, act,
            ))
            entry_channels.append(channels)
            entry_levels.append(spec.level)
        # index of the last entry at each level = this layer's outputs
        self.outputs = [max(i for i, lv in enumerate(entry_levels) if lv == level) for level in entry_levels[: len(in_channels)]]
        self.min_level = min_level

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        sizes = [tuple(f.shape[-2:]) for f in features]
        entries = list(features)
        for node, inputs in zip(self.nodes, self.inputs):
            entries.append(node([entries[i] for i in inputs], sizes[node.level - self.min_level]))
        return [entries[i] for i in self.outputs]


class ExtraLevels(nn.Module):
    """P6.. from the last backbone map: each extra level is :class:`Resample` (conv+BN if the
    channels differ, then a 3x3/2 "same" max-pool) of the previous one."""

    def __init__(self, in_channels: int, channels: int, first_level: int, max_level: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(first_level, max_level + 1):
            self.levels.append(Resample(in_channels, channels, level - 1, level))
            in_channels = channels

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        features = list(features)
        for resample in self.levels:
            features.append(resample(features[-1], (0, 0)))
        return features


class FeatureNetwork(nn.Module):
    """Backbone maps (C_min_level .. C5) -> ``repeats`` topology layers over levels min..max.

    Args:
        in_channels: channels of the backbone maps, finest first.
        channels: width of every node (W_bifpn).
        topology: node list applied in every repeat.
        repeats: number of layers (D_bifpn).
        min_level / max_level: pyramid levels; levels above the backbone's are made by :class:`ExtraLevels`.
        fusion: default fusion kind for nodes that do not name one.
        act: ``"silu"`` or ``"relu6"``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, topology: Topology, repeats: int,
                 min_level: int, max_level: int, fusion: str = "fast", act: str = "silu") -> None:
        super().__init__()
        num_backbone = len(in_channels)
        self.extra = ExtraLevels(in_channels[-1], channels, min_level + num_backbone, max_level)
        level_channels = list(in_channels) + [channels] * (max_level - min_level + 1 - num_backbone)
        self.layers = nn.ModuleList()
        for _ in range(repeats):
            self.layers.append(FeatureLayer(topology, level_channels, min_level, channels, fusion, act))
            level_channels = [channels] * len(level_channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        features = self.extra(features)
        for layer in self.layers:
            features = layer(features)
        return features
