"""RetinaNet behind the Detector contract: eval and training equal torchvision's ``RetinaNet``
forward, ``optimize()`` equals eager, the ONNX graph (NMS inside, dynamic batch) equals
eager in onnxruntime, and a weightless rebuild from the config preprocesses as the model does."""

import onnx
import pytest
import torch
from torch import nn

import scaledet
from scaledet.export import OnnxDetector, export_onnx
from scaledet.models.registry import build_for_processing
from test_optimize import assert_equal_detections

IMAGES = [torch.rand(3, 100, 128, generator=torch.Generator().manual_seed(1)),
          torch.rand(3, 128, 90, generator=torch.Generator().manual_seed(2))]
TARGETS = [{"boxes": torch.tensor([[4.0, 5.0, 60.0, 70.0], [30.0, 20.0, 50.0, 90.0]]), "labels": torch.tensor([2, 0])},
           {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


@pytest.fixture(scope="module")
def model():
    """ResNet-50 RetinaNet at 128 px with non-trivial BatchNorm statistics and spread class logits."""
    torch.manual_seed(0)
    model = scaledet.create_model("retinanet_r50_fpn", num_classes=3, image_size=128)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 0.1 - 0.05)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 0.2 + 0.9)
        model.net.head.classification_head.cls_logits.bias.normal_(-2.0, 1.0, generator=generator)
    return model.eval()


def test_eval_and_training_equal_torchvision(model):
    with torch.no_grad():
        ours, reference = model(IMAGES), model.net(IMAGES)
    assert [len(d["scores"]) for d in ours] == [100, 100]
    for det, ref in zip(ours, reference):
        assert set(det) == {"boxes", "scores", "labels"}
        assert all(torch.equal(det[key], ref[key]) for key in det)
    model.train()
    try:
        losses = model(IMAGES, TARGETS)
        expected = model.net(IMAGES, [{"boxes": t["boxes"], "labels": t["labels"]} for t in TARGETS])
        assert set(losses) == {"classification", "bbox_regression", "loss"}
        for key in expected:
            torch.testing.assert_close(losses[key], expected[key], rtol=0, atol=0)
        torch.testing.assert_close(losses["loss"], losses["classification"] + losses["bbox_regression"])
        flat = [{"boxes": torch.tensor([[4.0, 5.0, 4.0, 70.0]]), "labels": torch.tensor([1])}, TARGETS[1]]
        with pytest.raises(ValueError, match="positive width and height"):
            model(IMAGES, flat)
    finally:
        model.eval()


def test_optimized_equals_eager(model):
    fast = scaledet.optimize(model)
    assert fast.folded == 53  # every ResNet-50 conv has its BatchNorm
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    assert fast.config == model.config and fast.category_ids == model.category_ids
    with torch.no_grad():
        reference, result = model(IMAGES), fast(IMAGES)
    assert [len(d["scores"]) for d in result] == [100, 100]
    assert_equal_detections(reference, result)


def test_onnx_equals_eager(model, tmp_path):
    path = export_onnx(model, tmp_path / "retinanet.onnx")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert [node.op_type for node in graph.graph.node].count("NonMaxSuppression") == 1
    runner = OnnxDetector(path)
    assert runner.config == model.config and runner.class_names == model.class_names
    with torch.no_grad():
        reference = model(IMAGES)
    result = runner(IMAGES)
    assert [len(d["scores"]) for d in result] == [100, 100]
    assert all(d["labels"].dtype == torch.int64 for d in result)
    assert_equal_detections(reference, result)
    # the batch is dynamic; a wide image is padded to the same 128 x 128 square
    wide = [torch.rand(3, 40, 120)]
    assert model.preprocess(wide).inputs[0].shape == (1, 3, 128, 128)
    with torch.no_grad():
        assert_equal_detections(model(wide), runner(wide))


def test_weightless_rebuild_preprocesses_as_the_model(model):
    rebuilt = build_for_processing(model.config)
    assert next(rebuilt.parameters()).device.type == "meta"
    ours, theirs = model.preprocess(IMAGES), rebuilt.preprocess(IMAGES)
    assert torch.equal(ours.inputs[0], theirs.inputs[0]) and ours.meta == theirs.meta
    assert ours.image_sizes == theirs.image_sizes == [(100, 128), (128, 90)]
    anchors, per_level = rebuilt.anchors_for(ours.inputs[0].shape[-2:])
    assert anchors.shape == (sum(per_level), 4) and len(per_level) == 5


@pytest.mark.parametrize("classes", [91, 5])
def test_torchvision_state_dicts_load(tmp_path, classes):
    """torchvision's RetinaNet state dict (its COCO file's layout) loads under ``net.``; its 91-class COCO head
    predicts the category id itself (label i = COCO id i, named), another count gets ids 1..K."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None,
                                                                   num_classes=classes)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    ours = scaledet.load(tmp_path / "tv.pth", model="retinanet_r50_fpn")
    assert ours.num_classes == classes
    for name, tensor in reference.state_dict().items():
        assert torch.equal(ours.net.state_dict()[name], tensor), name
    if classes == 91:
        assert ours.category_ids[:2] == [0, 1] and ours.class_names[1] == "person"
    else:
        assert ours.category_ids == [1, 2, 3, 4, 5]
