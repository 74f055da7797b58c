"""The variant table, compound scaling (paper Table 1) and the BiFPN topology as data."""

import dataclasses

import pytest

import scaledet
from scaledet.models.efficientdet import VARIANTS
from scaledet.models.efficientdet.config import (
    TABLE1_DEPARTURES,
    compound_scaling,
    round_width,
    table1_row,
    with_overrides,
)
from scaledet.models.efficientdet.feature_network import NodeSpec, bifpn_topology

# Table 1 of the paper: phi -> (input, W_bifpn, D_bifpn, D_class)
TABLE1 = {0: (512, 64, 3, 3), 1: (640, 88, 4, 3), 2: (768, 112, 5, 3), 3: (896, 160, 6, 4),
          4: (1024, 224, 7, 4), 5: (1280, 288, 7, 4), 6: (1280, 384, 8, 5), 7: (1536, 384, 8, 5)}


def test_compound_scaling_equations():
    dims = compound_scaling(3)
    assert (dims.fpn_channels, dims.fpn_repeats, dims.head_repeats, dims.image_size) == (160, 6, 4, 896)
    assert [compound_scaling(p).fpn_channels for p in range(7)] == [64, 88, 120, 160, 216, 288, 384]
    assert round_width(86.4) == 88 and round_width(116.64) == 120
    with pytest.raises(ValueError):
        compound_scaling(-1)


@pytest.mark.parametrize("phi", sorted(TABLE1))
def test_table1_reproduced(phi):
    row = table1_row(phi)
    assert (row.image_size, row.fpn_channels, row.fpn_repeats, row.head_repeats) == TABLE1[phi]
    # every recorded departure really departs from the equations (the list is minimal)
    equations = compound_scaling(phi)
    for field, value in TABLE1_DEPARTURES.get(phi, {}).items():
        assert getattr(equations, field) != value


@pytest.mark.parametrize("phi", range(8))
def test_variant_rows_follow_table1(phi):
    variant = VARIANTS[f"efficientdet_d{phi}"]
    assert (variant.image_size[0], variant.fpn_channels, variant.fpn_repeats, variant.head_repeats) == TABLE1[phi]


def test_variant_table():
    assert len(VARIANTS) == 15
    assert [n for n in scaledet.list_models() if n.startswith("efficientdet_")] == sorted(VARIANTS)
    sums = {n for n, v in VARIANTS.items() if v.fusion == "sum"}
    assert sums == {"efficientdet_d6", "efficientdet_d7", "efficientdet_d7x"} | {n for n in VARIANTS if "lite" in n}
    assert VARIANTS["efficientdet_d7x"].max_level == 8 and VARIANTS["efficientdet_d7"].anchor_scale == 5.0
    for name, v in VARIANTS.items():
        assert v.pretrained_url.endswith(".pth") and v.pretrained_sha256 in v.pretrained_url
        assert v.activation == ("relu6" if "lite" in name else "silu")


def test_overrides():
    v = with_overrides(VARIANTS["efficientdet_d0"], fusion="softmax", image_size=384)
    assert v.fusion == "softmax" and v.image_size == (384, 384)
    with pytest.raises(ValueError, match="unknown EfficientDet option"):
        with_overrides(VARIANTS["efficientdet_d0"], fpn_width=3)
    with pytest.raises(ValueError, match="fusion"):
        dataclasses.replace(VARIANTS["efficientdet_d0"], fusion="mean")


def test_bifpn_topology_is_the_published_graph():
    expected = [(6, (3, 4)), (5, (2, 5)), (4, (1, 6)), (3, (0, 7)),
                (4, (1, 7, 8)), (5, (2, 6, 9)), (6, (3, 5, 10)), (7, (4, 11))]
    assert bifpn_topology(3, 7) == tuple(NodeSpec(level, inputs) for level, inputs in expected)
    p8 = bifpn_topology(3, 8)
    assert len(p8) == 10 and p8[0] == NodeSpec(7, (4, 5)) and p8[-1] == NodeSpec(8, (5, 14))
