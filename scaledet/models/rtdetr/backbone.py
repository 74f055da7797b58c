"""RT-DETR's ResNet-vd backbone (PResNet in the official code): deep stem, stride on the 3x3
convolution, average-pool downsampling in the projection shortcuts.

timm's ``resnet18d`` / ``resnet34d`` are not this network: RT-DETR's basic-block stages give the
first block of *every* stage a 1x1 projection shortcut (also the first stage, where the channel
count does not change), which timm's ResNet-D leaves out. The bottleneck forms (R50 / R101) match
timm's ResNet-D up to the pooling of odd-sized maps; one implementation serves all four.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d


def norm_layer(kind: str):
    """``"batch"`` -> :class:`torch.nn.BatchNorm2d`, ``"frozen"`` -> torchvision's ``FrozenBatchNorm2d``."""
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "frozen":
        return FrozenBatchNorm2d
    raise ValueError(f"backbone_norm must be 'batch' or 'frozen', got {kind!r}")


class ConvNormAct(nn.Sequential):
    """``conv`` (no bias, padding (k-1)/2) -> ``norm`` -> ``act`` (identity when ``activation`` is None):
    [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 activation: type[nn.Module] | None = None, norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False),
            norm=norm(out_channels),
            act=activation() if activation is not None else nn.Identity(),
        ))


def _projection(in_channels: int, out_channels: int, stride: int, norm) -> nn.Sequential:
    """The vd shortcut of a stage's first block: 2x2 average pool (stride 2 only) -> 1x1 conv -> norm."""
    layers = OrderedDict(pool=nn.AvgPool2d(2, 2, 0, ceil_mode=True)) if stride == 2 else OrderedDict()
    layers.update(conv=nn.Conv2d(in_channels, out_channels, 1, bias=False), norm=norm(out_channels))
    return nn.Sequential(layers)


def _residual_parts(block: nn.Module, layers: tuple[str, ...]) -> tuple[tuple[str, ...], str | None] | None:
    """``residual_parts()`` of the blocks below, for ``scaledet.inference.residual`` (fusing the add and
    ReLUs into the convs at inference): the main path's convs and the shortcut's name (``None``:
    identity), once every norm is folded into its conv (``Identity``); else ``None``."""
    steps = [getattr(block, name) for name in layers]
    shortcut = block.shortcut if isinstance(block.shortcut, nn.Sequential) else None
    norms = [step.norm for step in steps] + ([shortcut.norm] if shortcut is not None else [])
    acts_fit = all(type(step.act) is nn.ReLU for step in steps[:-1]) and isinstance(steps[-1].act, nn.Identity)
    if not (acts_fit and all(isinstance(norm, nn.Identity) for norm in norms)):
        return None
    return tuple(f"{name}.conv" for name in layers), None if shortcut is None else "shortcut"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (R18 / R34); the first block of a stage always has a projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, first: bool, norm) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, 3, stride, nn.ReLU, norm)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, 1, None, norm)
        self.shortcut = _projection(in_channels, out_channels, stride, norm) if first else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.shortcut(x)).relu()

    def residual_parts(self) -> tuple[tuple[str, ...], str | None] | None:
        return _residual_parts(self, ("conv1", "conv2"))


class Bottleneck(nn.Module):
    """1x1 reduce (to out/4) -> 3x3 with the stride -> 1x1 expand (R50 / R101)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, first: bool, norm) -> None:
        super().__init__()
        mid = out_channels // 4
        self.conv1 = ConvNormAct(in_channels, mid, 1, 1, nn.ReLU, norm)
        self.conv2 = ConvNormAct(mid, mid, 3, stride, nn.ReLU, norm)
        self.conv3 = ConvNormAct(mid, out_channels, 1, 1, None, norm)
        self.shortcut = _projection(in_channels, out_channels, stride, norm) if first else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x)).relu()

    def residual_parts(self) -> tuple[tuple[str, ...], str | None] | None:
        return _residual_parts(self, ("conv1", "conv2", "conv3"))


class PResNet(nn.Module):
    """ResNet-vd returning the last three stages: [B, 3, H, W] -> [C3 [B, w1, H/8, W/8],
    C4 [B, w2, H/16, W/16], C5 [B, w3, H/32, W/32]] with ``widths = (w0, w1, w2, w3)``.

    Args:
        block: ``"basic"`` (R18 / R34) or ``"bottleneck"`` (R50 / R101).
        depths: blocks per stage (R18 ``(2, 2, 2, 2)``, R34 / R50 ``(3, 4, 6, 3)``, R101 ``(3, 4, 23, 3)``).
        widths: output channels per stage (basic ``(64, 128, 256, 512)``, bottleneck ``(256, 512, 1024, 2048)``).
        stem_width: channels of the deep stem's last conv (its first two have half).
        norm: ``"batch"`` or ``"frozen"``.
        freeze_stem: the stem's convolutions do not train (the official R50 / R101 recipe).
    """

    def __init__(self, block: str, depths: Sequence[int], widths: Sequence[int], stem_width: int = 64,
                 norm: str = "batch", freeze_stem: bool = False) -> None:
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if len(depths) != 4 or len(widths) != 4:
            raise ValueError(f"depths and widths need 4 stages, got {tuple(depths)} / {tuple(widths)}")
        norm_class = norm_layer(norm)
        half = stem_width // 2
        self.stem = nn.Sequential(
            ConvNormAct(3, half, 3, 2, nn.ReLU, norm_class), ConvNormAct(half, half, 3, 1, nn.ReLU, norm_class),
            ConvNormAct(half, stem_width, 3, 1, nn.ReLU, norm_class), nn.MaxPool2d(3, 2, 1))
        block_class = BasicBlock if block == "basic" else Bottleneck
        stages, in_channels = [], stem_width
        for index, (depth, width) in enumerate(zip(depths, widths)):
            stride = 1 if index == 0 else 2
            blocks = [block_class(in_channels if i == 0 else width, width, stride if i == 0 else 1, i == 0, norm_class)
                      for i in range(depth)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(widths[1:])
        if freeze_stem:
            self.stem.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index > 0:
                features.append(x)
        return features
