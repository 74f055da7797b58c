"""Multi-scale deformable attention (Zhu et al., Deformable DETR, ICLR 2021) in plain PyTorch.

Shared by every family that attends over a feature pyramid with learned sampling points
(Deformable DETR, RT-DETR). No custom CUDA/C++ kernel: one ``grid_sample`` per pyramid level, so it
runs on any device, exports to ONNX (opset >= 16) and is traced by ``torch.export``.

Shapes (B batch, S sum of H_l*W_l over levels, M heads, D channels per head, Q queries,
L levels, P points per level per head):

* ``value``: (B, S, M, D) - the flattened pyramid, levels concatenated in ``spatial_shapes`` order;
* ``spatial_shapes``: list of (H_l, W_l) Python ints, one per level;
* ``sampling_locations``: (B, Q, M, L, P, 2), (x, y) normalised to [0, 1] over each level's map,
  where 0 and 1 are the outer edges of the first and last pixel (``align_corners=False``);
* ``attention_weights``: (B, Q, M, L, P), already normalised (softmax over L*P);
* returns (B, Q, M*D).

Points outside a map read zeros (``padding_mode="zeros"``), as in the reference CUDA kernel.

:class:`DeformableAttention` is the layer around it (offset / weight / value / output projections
and the paper's initialisation), used by Deformable DETR's encoder and decoder and RT-DETR's decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinear samples of each level at the given points, summed with the attention weights."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    per_level = value.split([height * width for height, width in spatial_shapes], dim=1)
    grids = 2.0 * sampling_locations - 1.0  # grid_sample wants [-1, 1]
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, H*W, M, D) -> (B*M, D, H, W)
        level_value = per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        # (B, Q, M, P, 2) -> (B*M, Q, P, 2)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # (B*M, D, Q, P)
        sampled.append(F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B*M, D, Q, L*P) weighted by (B*M, 1, Q, L*P), summed over the samples
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(batch, heads * head_dim, queries).transpose(1, 2).contiguous()


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to [0, 1] and both terms to at least ``eps``."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def level_sizes_tensor(spatial_shapes: Sequence[tuple[int, int]], like: Tensor) -> Tensor:
    """[(H_l, W_l)] -> [L, 2] float ``(W_l, H_l)`` on ``like``'s device and dtype (built from
    shapes, so ``torch.export`` keeps them symbolic)."""
    return torch.stack([torch.stack([like.new_full((), width), like.new_full((), height)])
                        for height, width in spatial_shapes])


class DeformableAttention(nn.Module):
    """Multi-scale deformable attention (:func:`~scaledet.models.deformable_attention.multi_scale_deformable_attention`)
    with its projections: each query reads ``P`` bilinear samples per head and level around its
    reference point, at learned offsets, weighted by a softmax over the ``L * P`` samples.

    Initialised as the paper: zero offset weights with biases spreading head ``m`` along direction
    ``2*pi*m/M`` (point ``p`` at distance ``p + 1``), uniform attention weights, Xavier projections.
    """

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"the attention width {dim} must be divisible by the number of heads {num_heads}")
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]  # [M, 2] on the unit square
        distances = torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = directions.view(self.num_heads, 1, 1, 2) * distances  # [M, 1, P, 2]
        self.sampling_offsets.bias.copy_(grid.expand(-1, self.num_levels, -1, -1).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: Sequence[tuple[int, int]], padding_mask: Tensor | None = None) -> Tensor:
        """query [B,Q,C] (positions added); reference_points [B,Q,L,2] (x, y) or [B,Q,L,4] (cx, cy, w, h)
        (L may be 1: the same reference on every level); value [B,S,C]; padding_mask [B,S] bool,
        True on padding (``None``: no padding) -> [B,Q,C]."""
        batch, queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(batch, value.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, queries, heads, levels, points)
        if reference_points.shape[-1] == 2:  # offsets in pixels of each level
            # [L, 2] (w, h) in the reference points' dtype: float32 under autocast too
            normalizer = level_sizes_tensor(spatial_shapes, reference_points)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        else:  # offsets relative to the reference box (half its size over P points)
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5)
        return self.output_proj(multi_scale_deformable_attention(value, spatial_shapes, locations, weights))
