"""3x3 convs through NNPACK's Winograd kernels: same outputs as the usual conv, verdicts by measured
input size, measurements cached, and optimised ResNet families equal to eager with every conv routed."""

import importlib
import json

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import scaledet
from scaledet.inference.winograd import (
    WinogradConv2d,
    apply_winograd,
    measure_winograd,
    winograd_available,
    winograd_candidates,
)
from tests.test_optimize import assert_equal_detections

optimize_module = importlib.import_module("scaledet.inference.optimize")

pytestmark = pytest.mark.skipif(not winograd_available(), reason="this PyTorch build has no NNPACK")


def everywhere(measured: dict[str, list]) -> dict[str, list]:
    """The measurements with every verdict turned to 'NNPACK faster' (routes every measured size)."""
    return {name: [[row[0], True, *row[2:]] for row in rows] for name, rows in measured.items()}


def test_winograd_conv_equals_usual_conv():
    conv = nn.Conv2d(32, 48, 3, padding=1)
    x = torch.randn(2, 32, 20, 24).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = conv(x)
        assert apply_winograd(conv, {"": [[20 * 24, True, 1.0, 2.0]]}) == 1
        assert isinstance(conv, WinogradConv2d) and conv.uses_winograd(x)
        got = conv(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # Winograd's float error, not exact
    assert "nchw_weight" not in conv.state_dict()  # same state-dict keys as a plain conv
    with torch.enable_grad():  # training / autograd: always the usual path
        assert not conv.uses_winograd(x)
        assert torch.equal(conv(x), nn.Conv2d._conv_forward(conv, x, conv.weight, conv.bias))


def test_verdict_of_nearest_measured_size():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    apply_winograd(conv, {"": [[80 * 80, True, 1.0, 2.0], [20 * 20, False, 2.0, 1.0]]})
    with torch.no_grad():
        assert conv.uses_winograd(torch.zeros(1, 8, 80, 80))
        assert conv.uses_winograd(torch.zeros(1, 8, 100, 120))  # larger than any measured: the largest's
        assert conv.uses_winograd(torch.zeros(1, 8, 45, 45))  # nearer 80x80 than 20x20 (log scale)
        assert not conv.uses_winograd(torch.zeros(1, 8, 35, 35))
        assert not conv.uses_winograd(torch.zeros(1, 8, 5, 5))
        assert not conv.uses_winograd(torch.zeros(1, 8, 80, 80, dtype=torch.bfloat16))


def test_measure_records_each_input_size_and_leaves_outputs_alone():
    shared = nn.Conv2d(16, 16, 3, padding=1)
    strided = nn.Conv2d(16, 16, 3, stride=2, padding=1)
    net = nn.ModuleDict({"shared": shared, "strided": strided, "depthwise": nn.Conv2d(16, 16, 3, groups=16)})
    assert set(winograd_candidates(net)) == {"shared"}
    levels = [torch.randn(1, 16, 32, 32), torch.randn(1, 16, 8, 8)]
    outputs = []
    measured = measure_winograd(net, lambda: outputs.extend(shared(x) for x in levels), runs=1)
    with torch.no_grad():
        torch.testing.assert_close(outputs[0], shared(levels[0]), rtol=0, atol=0)  # hooks changed nothing
    assert [row[0] for row in measured["shared"]] == [32 * 32, 8 * 8]
    assert all(isinstance(row[1], bool) and row[2] > 0 and row[3] > 0 for row in measured["shared"])


def test_choices_are_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("SCALEDET_CACHE", str(tmp_path))
    monkeypatch.delenv("SCALEDET_OPTIMIZE_CACHE", raising=False)
    model = scaledet.create_model("retinanet_r50_fpn", num_classes=3, image_size=64).eval()
    first = scaledet.optimize(model)
    files = list((tmp_path / "optimize").glob("winograd-*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["key"]["threads"] == torch.get_num_threads() and stored["winograd"]
    monkeypatch.setattr(optimize_module, "measure_winograd", lambda *args: pytest.fail("measured again"))
    second = scaledet.optimize(model)
    assert second.winograd == first.winograd


@pytest.mark.parametrize("name", ["retinanet_r50_fpn", "detr_r50"])
def test_optimized_resnet_families_with_every_3x3_conv_routed_equal_eager(name, monkeypatch):
    options = {"num_queries": 20} if name == "detr_r50" else {}
    model = scaledet.create_model(name, num_classes=4, image_size=(96, 128), **options).eval()
    with torch.no_grad():
        for module in model.modules():  # non-trivial frozen statistics
            if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.8, 1.2)
        if name == "retinanet_r50_fpn":  # random heads score below the threshold: raise some logits
            model.net.head.classification_head.cls_logits.bias.normal_(-2.0, 1.0)
    measure = optimize_module.measure_winograd
    monkeypatch.setattr(optimize_module, "measure_winograd", lambda *args: everywhere(measure(*args, runs=1)))
    fast = scaledet.optimize(model)
    candidates = winograd_candidates(fast.model)
    assert fast.winograd == len(candidates) > 0
    assert all(isinstance(conv, WinogradConv2d) for conv in candidates.values())
    images = [torch.rand(3, 90, 120), torch.rand(3, 100, 80)]
    with torch.no_grad():
        assert_equal_detections(model(images), fast(images), score_tol=1e-4, box_tol=1e-2)
    plain = optimize_module.OptimizedDetector(model, winograd=False)
    assert plain.winograd == 0 and not any(isinstance(m, WinogradConv2d) for m in plain.modules())


def test_unreadable_cache_file_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("SCALEDET_CACHE", str(tmp_path))
    monkeypatch.delenv("SCALEDET_OPTIMIZE_CACHE", raising=False)
    model = scaledet.create_model("retinanet_r50_fpn", num_classes=3, image_size=64).eval()
    scaledet.optimize(model)
    (path,) = (tmp_path / "optimize").glob("winograd-*.json")
    path.write_text('{"key": {"proc')  # half a file, as a crashed or concurrent writer could leave
    again = scaledet.optimize(model)
    assert json.loads(path.read_text())["winograd"] == again.winograd_timings
    assert not list((tmp_path / "optimize").glob("*.tmp"))
