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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
