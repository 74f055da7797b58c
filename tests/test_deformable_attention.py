"""Multi-scale deformable attention equals transformers' reference (pure PyTorch) kernel."""

import pytest
import torch

from scaledet.models.deformable_attention import multi_scale_deformable_attention

deformable_detr = pytest.importorskip("transformers.models.deformable_detr.modeling_deformable_detr")


def test_equals_transformers_kernel():
    torch.manual_seed(0)
    shapes = [(8, 10), (4, 5), (2, 3)]
    batch, heads, head_dim, queries, points = 2, 4, 8, 7, 3
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, heads, head_dim)
    # some points deliberately outside [0, 1] to exercise the zero padding
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points)
    weights = weights / weights.sum(dim=(-1, -2), keepdim=True)

    ours = multi_scale_deformable_attention(value, shapes, locations, weights)

    shapes_tensor = torch.tensor(shapes)
    starts = torch.cat([shapes_tensor.new_zeros(1), (shapes_tensor[:, 0] * shapes_tensor[:, 1]).cumsum(0)[:-1]])
    reference = deformable_detr.MultiScaleDeformableAttention()(
        value, shapes_tensor, shapes, starts, locations, weights, im2col_step=64
    )
    assert ours.shape == (batch, queries, heads * head_dim)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
