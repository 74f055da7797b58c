"""Exact parameter counts (reference port), MACs within 3% of the paper, `scaledet profile`."""

import json

import pytest
import torch

from scaledet.cli import main
from scaledet.models.efficientdet import VARIANTS
from scaledet.profiling import profile_model

# Exact counts of effdet 0.4.1's tf_efficientdet_* with 90 classes (shared/reference/efficientdet.md)
REFERENCE_PARAMS = {
    "efficientdet_d0": 3_880_067, "efficientdet_d1": 6_625_898, "efficientdet_d2": 8_097_039,
    "efficientdet_d3": 12_032_296, "efficientdet_d4": 20_723_675, "efficientdet_d5": 33_653_315,
    "efficientdet_d6": 51_871_782, "efficientdet_d7": 51_871_782, "efficientdet_d7x": 77_147_166,
    "efficientdet_lite0": 3_243_470, "efficientdet_lite1": 4_248_318, "efficientdet_lite2": 5_252_334,
    "efficientdet_lite3": 8_350_862, "efficientdet_lite3x": 9_280_862, "efficientdet_lite4": 15_130_894,
}
# anchors at native resolution (reference doc table)
REFERENCE_ANCHORS = {"efficientdet_d0": 49_104, "efficientdet_d1": 76_725, "efficientdet_d2": 110_484,
                     "efficientdet_d3": 150_381, "efficientdet_d4": 196_416, "efficientdet_d5": 306_900,
                     "efficientdet_d6": 306_900, "efficientdet_d7": 441_936, "efficientdet_d7x": 442_260}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_params_macs_anchors(name):
    row = profile_model(name)
    assert row["params"] == REFERENCE_PARAMS[name]
    assert row["native_size"] == list(VARIANTS[name].image_size)
    if name in REFERENCE_ANCHORS:
        assert row["anchors"] == REFERENCE_ANCHORS[name]
        paper_gflops = VARIANTS[name].paper.gflops
        assert abs(row["macs"] / 1e9 / paper_gflops - 1) < 0.03, (row["macs"], paper_gflops)


def test_params_match_effdet_module():
    effdet = pytest.importorskip("effdet")
    import scaledet

    theirs = effdet.create_model("tf_efficientdet_lite1", pretrained=False, pretrained_backbone=False)
    ours = scaledet.create_model("efficientdet_lite1")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert len(ours.state_dict()) == len(theirs.state_dict())


def test_profile_cli_json(capsys):
    assert main(["profile", "efficientdet_d0", "efficientdet_lite0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["efficientdet_d0", "efficientdet_lite0"]
    assert rows[0]["params"] == 3_880_067 and rows[0]["anchors"] == 49_104
    assert rows[0]["paper"]["gflops"] == 2.5 and 2.45e9 < rows[0]["macs"] < 2.55e9


def test_profile_cli_table(capsys):
    assert main(["profile", "efficientdet_d0"]) == 0
    out = capsys.readouterr().out
    assert "| efficientdet_d0 | 512x512 | 3,880,067 | 3,880,067 | 3.9M | 2.49 | 2.5 |" in out


def test_profile_table_compares_in_each_paper_s_unit(capsys):
    """RT-DETR's paper counts 2 FLOPs per multiply-accumulate: 2 x 30.74 GMACs vs its 60 GFLOPs, not 0.51."""
    assert main(["profile", "rtdetr_r18vd"]) == 0
    out = capsys.readouterr().out
    assert "| 30.74 | 60 | 1.025 |" in out and "rtdetr_r18vd: its paper counts 2 per multiply-accumulate" in out


def test_meta_device_count_equals_a_real_forward():
    import scaledet
    from scaledet.profiling import count_macs

    real = count_macs(scaledet.create_model("efficientdet_lite0"), (320, 320))
    with torch.device("meta"):
        meta = count_macs(scaledet.create_model("efficientdet_lite0"), (320, 320))
    assert real == meta and 0.9e9 < real < 1.0e9
