"""RT-DETR pieces on their own: denoising groups, RepVGG re-parameterisation, empty targets, bad options."""

import copy

import pytest
import torch

import scaledet
from scaledet.models.rtdetr.denoising import denoising_groups
from scaledet.models.rtdetr.encoder import RepVggBlock

SMALL = {"image_size": 64, "depths": (1, 1, 1, 1), "widths": (16, 32, 48, 64), "stem_width": 16, "encoder_dim": 32,
         "encoder_heads": 2, "encoder_ffn_dim": 64, "decoder_dim": 32, "decoder_heads": 2, "decoder_ffn_dim": 64,
         "decoder_layers": 2, "num_queries": 12, "num_denoising": 12}


def test_denoising_groups_layout():
    """2 images with 2 and 1 objects: groups of 2 x max(M) queries, positives first in each group,
    the selected queries blind to all of them and the groups blind to each other."""
    targets = [{"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.4, 0.2]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]), "labels": torch.tensor([1])}]
    embed = torch.nn.Embedding(4, 8, padding_idx=3)
    torch.manual_seed(0)
    groups = denoising_groups(targets, embed, num_classes=3, num_queries=5, num_denoising=12,
                              label_noise_ratio=0.5, box_noise_scale=1.0)
    assert groups.num_groups == 6 and groups.queries.shape == (2, 24, 8) and groups.box_logits.shape == (2, 24, 4)
    assert [p.tolist() for p in groups.positive] == [[0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21],
                                                     [0, 4, 8, 12, 16, 20]]
    blocked = torch.isinf(groups.attn_mask)
    assert blocked.shape == (29, 29)
    assert blocked[24:, :24].all() and not blocked[24:, 24:].any()  # selected queries see only each other
    assert not blocked[:4, :4].any() and blocked[:4, 4:24].all() and not blocked[:4, 24:].any()
    positives = groups.box_logits[0, :2].sigmoid()  # moved by less than half the box size
    assert ((positives - targets[0]["boxes"]).abs() <= targets[0]["boxes"][:, 2:].repeat(1, 2)).all()
    assert denoising_groups([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], embed,
                            3, 5, 12, 0.5, 1.0) is None


def test_repvgg_reparameterized_is_the_same_function():
    torch.manual_seed(0)
    block = RepVggBlock(8).eval()
    for norm in (block.conv1.norm, block.conv2.norm):
        norm.running_mean.normal_(), norm.running_var.uniform_(0.5, 2), norm.weight.data.normal_()
    x = torch.randn(2, 8, 10, 12)
    expected = block(x)
    block.reparameterize()
    assert block.fused is not None and not hasattr(block, "conv1")
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_optimize_reparameterizes_the_encoder():
    model = scaledet.create_model("rtdetr_r50vd", num_classes=3, **SMALL).eval()
    ready = copy.deepcopy(model)
    ready.prepare_for_inference()
    blocks = [m for m in ready.modules() if isinstance(m, RepVggBlock)]
    assert len(blocks) == 12 and all(b.fused is not None for b in blocks)
    images = [torch.rand(3, 70, 90)]
    with torch.no_grad():
        torch.testing.assert_close(ready(images)[0]["scores"], model(images)[0]["scores"], atol=1e-5, rtol=0)


def test_training_step_without_objects():
    model = scaledet.create_model("rtdetr_r18vd", num_classes=3, **SMALL).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = model([torch.rand(3, 64, 80), torch.rand(3, 50, 64)], [empty, empty])
    assert not any("_dn_" in name for name in losses) and torch.isfinite(losses["loss"])
    assert losses["loss_bbox"] == 0 and losses["loss_vfl"] > 0  # only "no object" to learn
    losses["loss"].backward()


@pytest.mark.parametrize("options, message", [
    ({"image_size": 100}, "multiples of 32"),
    ({"image_size": 64}, "num_queries"),
    ({"colour": 1}, "unknown RT-DETR option"),
    ({"block": "wide"}, "basic' or 'bottleneck"),
    ({"backbone_norm": "group"}, "backbone_norm"),
])
def test_bad_options_name_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        scaledet.create_model("rtdetr_r18vd", **options)


@pytest.mark.parametrize("name", ["rtdetr_r18vd", "rtdetr_r50vd"])
def test_profile_against_the_paper(name):
    """`scaledet profile` at 640x640: the paper's GFLOPs are 2 x our MACs within 3%, params within 3%."""
    from scaledet.profiling import profile_model

    row = profile_model(name)
    paper = row["paper"]
    assert row["native_size"] == [640, 640]
    assert abs(2 * row["macs"] / 1e9 / paper["gflops"] - 1) < 0.03, (row["macs"], paper)
    assert abs(row["params"] / 1e6 / paper["params_m"] - 1) < 0.03, (row["params"], paper)
