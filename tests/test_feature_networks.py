"""Feature networks of the paper's Table 5 (FPN, PANet, NAS-FPN, fully-connected FPN, BiFPN x 3
fusions), their fusion functions against hand-written formulas, and the RetinaNet baselines."""

from __future__ import annotations

import math

import pytest
import torch

import scaledet
from scaledet.models.efficientdet.feature_network import (
    TOPOLOGIES,
    FastNormalizedFusion,
    FeatureNetwork,
    SoftmaxFusion,
    SumFusion,
)
from scaledet.models.efficientdet.topologies import (
    GlobalAttentionFusion,
    fcfpn_topology,
    fpn_topology,
    nasfpn_topology,
    panet_topology,
)
from scaledet.paper.reference import FEATURE_NETWORKS

IN_CHANNELS = (6, 10, 14)  # C3, C4, C5
CHANNELS = 8


def _backbone_maps(image: int = 64, batch: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(batch, c, math.ceil(image / 2**level), math.ceil(image / 2**level))
            for c, level in zip(IN_CHANNELS, (3, 4, 5))]


@pytest.mark.parametrize("row", FEATURE_NETWORKS, ids=lambda r: r.key)
def test_feature_network_shapes_and_gradients(row):
    topology = TOPOLOGIES[row.topology](3, 7)
    net = FeatureNetwork(IN_CHANNELS, CHANNELS, topology, repeats=2, min_level=3, max_level=7, fusion=row.fusion)
    net.train()
    for p in net.parameters():  # fusion weights start at 1: move them so every path is exercised
        if p.dim() == 1 and p.numel() <= 16:
            p.data.uniform_(0.5, 1.5)
    # 128 px: P7 (1x1) differs from P6 (2x2), so every fusion weight matters
    outputs = net(_backbone_maps(image=128))
    assert [tuple(o.shape) for o in outputs] == [(2, CHANNELS, 128 // 2**lv, 128 // 2**lv) for lv in range(3, 8)]
    sum(((o - 0.3) ** 2).mean() for o in outputs).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{row.key}: no gradient reaches {missing}"


def test_odd_input_sizes_keep_levels_aligned():
    net = FeatureNetwork(IN_CHANNELS, CHANNELS, nasfpn_topology(), 1, 3, 7, fusion="sum").eval()
    sizes = [(math.ceil(100 / 2**lv), math.ceil(108 / 2**lv)) for lv in (3, 4, 5)]  # a 100x108 image
    outputs = net([torch.randn(1, c, *hw) for c, hw in zip(IN_CHANNELS, sizes)])
    assert [tuple(o.shape[-2:]) for o in outputs] == [(13, 14), (7, 7), (4, 4), (2, 2), (1, 1)]


def test_fpn_and_panet_topologies():
    assert [(n.level, n.inputs) for n in fpn_topology()] == [(6, (3, 4)), (5, (2, 5)), (4, (1, 6)), (3, (0, 7))]
    # bottom-up: [latest P_l, latest P_{l-1}], no skip from the layer input (unlike BiFPN)
    assert [(n.level, n.inputs) for n in panet_topology()][4:] == [(4, (7, 8)), (5, (6, 9)), (6, (5, 10)), (7, (4, 11))]
    assert len(fpn_topology(3, 8)) == 5 and len(panet_topology(4, 7)) == 6


def test_nasfpn_topology_is_the_published_cell():
    nodes = [(n.level, n.inputs, n.fusion) for n in nasfpn_topology()]
    assert nodes == [
        (4, (3, 1), "attention"),  # P6 gates P4
        (4, (1, 5), "sum"),
        (3, (0, 6), "sum"),
        (4, (6, 7), "sum"),
        (5, (8, 7, 2), "attention"),  # unused input P5 added to the P5 output
        (7, (9, 6, 4), "attention"),  # unused input P7 added to the P7 output
        (6, (10, 9), "attention"),
    ]
    assert [n.level for n in nasfpn_topology(4, 8)] == [5, 5, 4, 5, 6, 8, 7]
    with pytest.raises(ValueError, match="5 levels"):
        nasfpn_topology(3, 8)


def test_fcfpn_connects_every_level():
    nodes = fcfpn_topology()
    assert all(set(range(5)) <= set(n.inputs) for n in nodes[:4])  # top-down: all layer inputs
    assert nodes[1].inputs == (0, 1, 2, 3, 4, 5)  # ... plus the previous top-down node
    assert nodes[4].inputs == (8, 7, 6, 5, 4)  # first bottom-up node: the whole top-down column
    assert nodes[5].inputs == (8, 7, 6, 5, 4, 9)
    with pytest.raises(ValueError, match="max_level > min_level"):
        fcfpn_topology(5, 5)


def _three_inputs():
    torch.manual_seed(1)
    return [torch.randn(2, 3, 4, 5) for _ in range(3)]


def test_fast_normalized_fusion_formula():
    xs = _three_inputs()
    fusion = FastNormalizedFusion(3)
    fusion.weight.data = torch.tensor([0.5, -1.0, 2.0])
    expected = (0.5 * xs[0] + 0.0 * xs[1] + 2.0 * xs[2]) / (0.5 + 0.0 + 2.0 + 1e-4)
    torch.testing.assert_close(fusion(xs), expected)


def test_softmax_fusion_formula():
    xs = _three_inputs()
    fusion = SoftmaxFusion(3)
    w = [0.5, -1.0, 2.0]
    fusion.weight.data = torch.tensor(w)
    total = sum(math.exp(v) for v in w)
    expected = sum(math.exp(v) / total * x for v, x in zip(w, xs))
    torch.testing.assert_close(fusion(xs), expected)


def test_sum_fusion_formula():
    xs = _three_inputs()
    torch.testing.assert_close(SumFusion(3)(xs), xs[0] + xs[1] + xs[2])
    assert not list(SumFusion(3).parameters())


def test_global_attention_fusion_formula():
    xs = _three_inputs()
    gate = torch.empty(2, 3, 1, 1)
    for b in range(2):
        for c in range(3):
            gate[b, c] = 1 / (1 + math.exp(-float(xs[0][b, c].max())))
    torch.testing.assert_close(GlobalAttentionFusion(3)(xs), xs[0] + xs[1] * gate + xs[2])
    with pytest.raises(ValueError, match="at least 2"):
        GlobalAttentionFusion(1)


@pytest.mark.parametrize("name", ["fpn", "nasfpn"])
def test_create_model_with_feature_network_round_trips(name, tmp_path):
    from scaledet.weights import save_weights

    model = scaledet.create_model("efficientdet_d0", num_classes=3, image_size=64, feature_network=name).eval()
    assert model.config["overrides"]["feature_network"] == name
    with torch.no_grad():
        detections = model([torch.rand(3, 50, 60)])
    assert detections[0]["boxes"].shape[1] == 4 and detections[0]["boxes"].dtype == torch.float32
    path = save_weights(model.state_dict(), tmp_path / "w.safetensors", model.config)
    again = scaledet.create_model("efficientdet_d0", pretrained=path).eval()
    assert again.variant.feature_network == name
    batch = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again.forward_features(batch)[0][0], model.forward_features(batch)[0][0])


def test_retinanet_r50_equals_torchvision_size():
    from torchvision.models.detection import retinanet_resnet50_fpn

    from scaledet.profiling import count_parameters

    ours = scaledet.create_model("retinanet_r50_fpn")
    reference = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=90)
    assert count_parameters(ours) == count_parameters(reference) == 34_047_374
    assert ({k: v.shape for k, v in ours.net.state_dict().items()}
            == {k: v.shape for k, v in reference.state_dict().items()})


def test_retinanet_contract_train_and_eval():
    torch.manual_seed(0)
    model = scaledet.create_model("retinanet_effb3_fpn", num_classes=3, image_size=64)
    assert model.config["overrides"] == {} and model.config["image_size"] == [64, 64]
    images = [torch.rand(3, 48, 64), torch.rand(3, 64, 40)]
    targets = [{"boxes": torch.tensor([[4.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model.train()(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "loss"}
    torch.testing.assert_close(losses["loss"], losses["classification"] + losses["bbox_regression"])
    losses["loss"].backward()
    with torch.no_grad():
        out = model.eval()(images)
    assert len(out) == 2 and all(set(d) == {"boxes", "scores", "labels"} for d in out)
    assert all((d["scores"][:-1] >= d["scores"][1:]).all() for d in out)
    with pytest.raises(ValueError, match="unknown RetinaNet option"):
        scaledet.create_model("retinanet_r50_fpn", fpn_channels=64)
    with pytest.raises(ValueError, match="labels must be in"):
        model.train()(images[:1], [{"boxes": targets[0]["boxes"], "labels": torch.tensor([7])}])


def test_retinanet_weights_round_trip_with_backbone_override(tmp_path):
    from scaledet.weights import save_weights

    model = scaledet.create_model("retinanet_r50_fpn", num_classes=3, image_size=64, backbone="tf_efficientnet_b0",
                                  class_names=["a", "b", "c"]).eval()
    path = save_weights(model.state_dict(), tmp_path / "r.safetensors", model.config)
    again = scaledet.create_model("retinanet_r50_fpn", pretrained=path).eval()
    assert again.config == model.config and again.config["overrides"] == {"backbone": "tf_efficientnet_b0"}
    batch = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again.forward_features(batch)["cls_logits"], model.forward_features(batch)["cls_logits"])


def test_unknown_feature_network_is_a_value_error():
    with pytest.raises(ValueError, match="unknown feature_network 'bogus'.*nasfpn"):
        scaledet.create_model("efficientdet_d0", feature_network="bogus", image_size=64)
