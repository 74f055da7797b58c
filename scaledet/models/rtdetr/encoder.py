"""RT-DETR's hybrid encoder (Zhao et al. 2024, Sec. 4.2): AIFI, a transformer encoder layer on the
top (stride-32) level only, then CCFM, a top-down and bottom-up fusion of the three levels with
CSP blocks of RepVGG convolutions.

Shapes: three projected backbone levels ``[B, C, H/8, W/8]``, ``[B, C, H/16, W/16]``,
``[B, C, H/32, W/32]`` in, the same three shapes out (``C`` = ``encoder_dim``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from scaledet.models.rtdetr.backbone import ConvNormAct


def sine_position_embedding(height: int, width: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """2-D sine-cosine position embedding of a ``height x width`` grid, row-major: [H*W, dim] laid
    out ``[sin(y w), cos(y w), sin(x w), cos(x w)]`` with ``w = temperature^(-i / (dim/4))``
    (computed in float64, returned as float32)."""
    if dim % 4:
        raise ValueError(f"encoder_dim must be a multiple of 4 for the position embedding, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, columns = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                   torch.arange(width, dtype=torch.float64), indexing="ij")
    rows, columns = rows.flatten().outer(omega), columns.flatten().outer(omega)
    return torch.cat([rows.sin(), rows.cos(), columns.sin(), columns.cos()], dim=1).float()


class FeedForward(nn.Module):
    """``linear2(dropout(act(linear1(x))))``: [..., C] -> [..., C]."""

    def __init__(self, dim: int, hidden_dim: int, activation: type[nn.Module], dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.activation = activation()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class EncoderLayer(nn.Module):
    """AIFI: post-norm self-attention (positions added to queries and keys) and a GELU FFN.
    [B, S, C] tokens and [1, S, C] positions -> [B, S, C]."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, nn.GELU, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        query = x + pos
        x = self.norm1(x + self.dropout(self.self_attn(query, query, x, need_weights=False)[0]))
        return self.norm2(x + self.dropout(self.ffn(x)))


class RepVggBlock(nn.Module):
    """SiLU(3x3 conv-BN + 1x1 conv-BN) at constant width (RepVGG's training-time form); after
    :meth:`reparameterize`, SiLU(one 3x3 conv with bias), the same function in eval mode."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 3)
        self.conv2 = ConvNormAct(channels, channels, 1)
        self.fused: nn.Conv2d | None = None

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both branches and their (eval-mode) BatchNorms into one 3x3 convolution, in place
        (RepVGG's deploy form; inference only: the branches are removed)."""
        wide = fuse_conv_bn_eval(self.conv1.conv, self.conv1.norm)
        narrow = fuse_conv_bn_eval(self.conv2.conv, self.conv2.norm)
        wide.weight += F.pad(narrow.weight, [1, 1, 1, 1])
        wide.bias += narrow.bias
        self.fused = wide
        del self.conv1, self.conv2

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return F.silu(self.fused(x))
        return F.silu(self.conv1(x) + self.conv2(x))


class CSPRepLayer(nn.Module):
    """CSP fusion block: [B, 2C, H, W] -> two 1x1 branches of ``C * expansion`` channels, RepVGG
    blocks on the first, summed, and a 1x1 back to ``C`` when the expansion is not 1 -> [B, C, H, W]."""

    def __init__(self, channels: int, expansion: float, num_blocks: int = 3) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.conv1 = ConvNormAct(2 * channels, hidden, 1, 1, nn.SiLU)
        self.conv2 = ConvNormAct(2 * channels, hidden, 1, 1, nn.SiLU)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden) for _ in range(num_blocks)])
        self.conv3 = ConvNormAct(hidden, channels, 1, 1, nn.SiLU) if hidden != channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class HybridEncoder(nn.Module):
    """Project each backbone level to ``dim`` (1x1 conv + BN), AIFI on the top level, then CCFM.

    Args:
        in_channels: channels of the three backbone levels (strides 8, 16, 32).
        dim: encoder width (256; 384 for R101).
        num_heads / ffn_dim / num_layers: the AIFI transformer layer(s).
        expansion: CSP hidden width as a fraction of ``dim`` (0.5 for R18 / R34, 1.0 for R50 / R101).
        temperature: of the sine position embedding.
    """

    def __init__(self, in_channels: Sequence[int], dim: int = 256, num_heads: int = 8, ffn_dim: int = 1024,
                 num_layers: int = 1, expansion: float = 1.0, dropout: float = 0.0,
                 temperature: float = 10000.0) -> None:
        super().__init__()
        self.dim, self.temperature = dim, temperature
        levels = len(in_channels)
        self.input_proj = nn.ModuleList(ConvNormAct(c, dim, 1) for c in in_channels)
        self.aifi = nn.ModuleList(EncoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.lateral_convs = nn.ModuleList(ConvNormAct(dim, dim, 1, 1, nn.SiLU) for _ in range(levels - 1))
        self.fpn_blocks = nn.ModuleList(CSPRepLayer(dim, expansion) for _ in range(levels - 1))
        self.downsample_convs = nn.ModuleList(ConvNormAct(dim, dim, 3, 2, nn.SiLU) for _ in range(levels - 1))
        self.pan_blocks = nn.ModuleList(CSPRepLayer(dim, expansion) for _ in range(levels - 1))

    def intra_scale(self, top: Tensor) -> Tensor:
        """AIFI on the top level: [B, C, h, w] -> [B, C, h, w]."""
        batch, channels, height, width = top.shape
        pos = sine_position_embedding(height, width, channels, self.temperature).to(top)[None]
        tokens = top.flatten(2).transpose(1, 2)  # [B, h*w, C]
        for layer in self.aifi:
            tokens = layer(tokens, pos)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Backbone levels (fine to coarse) -> fused levels, the same shapes with ``dim`` channels."""
        projected = [proj(feature) for proj, feature in zip(self.input_proj, features)]
        projected[-1] = self.intra_scale(projected[-1])
        # top-down: each coarser map is laterally convolved, upsampled x2 and fused with the finer one
        inner = [projected[-1]]
        for index, (lateral, block) in enumerate(zip(self.lateral_convs, self.fpn_blocks)):
            top = lateral(inner[0])
            inner[0] = top
            finer = projected[-index - 2]
            inner.insert(0, block(torch.cat([F.interpolate(top, scale_factor=2.0, mode="nearest"), finer], 1)))
        # bottom-up: each finer output is downsampled and fused with the next coarser top-down map
        outputs = [inner[0]]
        for index, (down, block) in enumerate(zip(self.downsample_convs, self.pan_blocks)):
            outputs.append(block(torch.cat([down(outputs[-1]), inner[index + 1]], 1)))
        return outputs
