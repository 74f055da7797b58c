"""ONNX export: one graph with NMS inside and a dynamic batch; onnxruntime gives eager's detections."""


import onnx
import pytest
import torch

import scaledet
from scaledet.export import OnnxDetector, export_onnx
from scaledet.models.ops import batched_nms  # noqa: F401  (registers torch.ops.scaledet.batched_nms)
from test_optimize import assert_equal_detections, randomise_efficientdet


def _check_graph(path, dynamic_inputs):
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    for value in graph.graph.input[:dynamic_inputs]:
        assert value.type.tensor_type.shape.dim[0].dim_param  # symbolic batch dimension
    return [node.op_type for node in graph.graph.node]


@pytest.mark.parametrize("name", ["efficientdet_d0", "efficientdet_lite0"])
def test_efficientdet_onnx_equals_eager(name, tmp_path):
    model = randomise_efficientdet(scaledet.create_model(name, num_classes=20, image_size=256))
    path = export_onnx(model.train(), tmp_path / f"{name}.onnx")
    assert model.training  # the caller's model is left as it was given (it came back in eval mode)
    model.eval()
    ops = _check_graph(path, 2)
    # 12,276 anchors at 256 px: the k=5000 best of the anchors' maxima, then the best pairs among their 20 classes
    assert ops.count("NonMaxSuppression") == 1 and ops.count("TopK") == 2
    # the fusions are exported as constant-weight Mul / Add (no stack + ReduceSum); the model keeps its own
    assert "ReduceSum" not in ops
    fusions = [type(m).__name__ for m in model.network.modules() if hasattr(m, "frozen_weights")]
    assert fusions and "FrozenWeightedSum" not in fusions
    runner = OnnxDetector(path)
    assert runner.class_names == model.class_names and runner.config == model.config
    images = [torch.rand(3, 200, 256), torch.rand(3, 256, 170)]
    with torch.no_grad():
        reference = model(images)
    result = runner(images)
    assert [len(d["scores"]) for d in result] == [100, 100]
    assert all(d["labels"].dtype == torch.int64 for d in result)
    assert_equal_detections(reference, result, score_tol=1e-4, box_tol=1e-2)
    # the batch dimension is dynamic: one image gives that image's detections
    assert_equal_detections(reference[1:], runner(images[1:]), score_tol=1e-4, box_tol=1e-2)


def test_detr_onnx_equals_eager(tmp_path, caplog):
    model = scaledet.create_model("detr_r50", num_classes=5, image_size=(96, 128), num_queries=20).eval()
    path = export_onnx(model, tmp_path / "detr.onnx")
    assert not [r for r in caplog.records if "Skipping constant folding" in r.getMessage()]  # the optimiser's notes
    _check_graph(path, 3)
    runner = OnnxDetector(path)
    images = [torch.rand(3, 90, 120), torch.rand(3, 100, 80)]
    with torch.no_grad():
        reference = model(images)
    result = runner(images)
    assert [len(d["scores"]) for d in result] == [20, 20]
    assert_equal_detections(reference, result, score_tol=1e-4, box_tol=1e-2)


def test_batched_nms_op_matches_torchvision():
    from torchvision.ops import nms

    boxes = torch.rand(2, 300, 2) * 100
    boxes = torch.cat([boxes, boxes + torch.rand(2, 300, 2) * 30 + 1], dim=-1)
    scores = torch.rand(2, 300)
    keep = torch.ops.scaledet.batched_nms(boxes, scores, 7, 0.5)
    for image in range(2):
        assert torch.equal(keep[keep[:, 0] == image, 1], nms(boxes[image], scores[image], 0.5)[:7])


def test_export_rejects_bad_input(tmp_path):
    for opset in (13, 17, 99):  # torch's exporter wrote opset 18 for 17 and 99 and the command said 17 / 99
        with pytest.raises(ValueError, match=f"opset must be from 18 to .*, got {opset}"):
            export_onnx(scaledet.create_model("efficientdet_lite0", num_classes=2, image_size=64), tmp_path / "x.onnx",
                        opset=opset)
    with pytest.raises(ValueError, match="scaledet Detector"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    bogus = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.rand(1, 2),), str(bogus), dynamo=True)
    with pytest.raises(ValueError, match="not a scaledet ONNX export"):
        OnnxDetector(bogus)
