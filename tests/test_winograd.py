"""3x3 convs through Winograd kernels (NNPACK's F(6x6, 3x3), our F(2x2, 3x3)): same outputs as the direct
conv, kernels by measured input size, measurements cached, and optimised ResNet families equal to eager
with every conv routed to each kernel."""

import importlib
import json

import pytest
import torch
from torch import nn

import scaledet
from scaledet.inference.winograd import (
    KERNELS,
    WinogradConv2d,
    apply_winograd,
    measure_winograd,
    nnpack_available,
    winograd_candidates,
)
from tests.fixtures import resnet_detector
from tests.test_optimize import assert_equal_detections

optimize_module = importlib.import_module("scaledet.inference.optimize")
WINOGRAD = [kernel for kernel in KERNELS if kernel != "direct" and (kernel != "nnpack" or nnpack_available())]


def everywhere(measured: dict[str, list], kernel: str) -> dict[str, list]:
    """The measurements with ``kernel`` chosen at every measured size."""
    return {name: [[row[0], kernel, row[2]] for row in rows] for name, rows in measured.items()}


@pytest.fixture
def one_thread():
    """NNPACK runs only where PyTorch runs one thread (:meth:`WinogradConv2d.kernel_for`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kernel", WINOGRAD)
@pytest.mark.parametrize("size", [(20, 24), (19, 25)])  # odd sizes: partial tiles
def test_winograd_conv_equals_direct_conv(kernel, size, one_thread):
    conv = nn.Conv2d(32, 48, 3, padding=1)
    x = torch.randn(2, 32, *size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = conv(x)
        assert apply_winograd(conv, {"": [[size[0] * size[1], kernel, {}]]}) == 1
        assert isinstance(conv, WinogradConv2d) and conv.kernel_for(x) == kernel
        got = conv(x)
        got_nchw = conv(x.contiguous())  # either memory format in
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # Winograd's float error, not exact
    torch.testing.assert_close(got_nchw, got, rtol=0, atol=0)
    assert "nchw_weight" not in conv.state_dict() and "f2x2_weight" not in conv.state_dict()
    with torch.enable_grad():  # training / autograd: always the direct path
        assert conv.kernel_for(x) == "direct"
        assert torch.equal(conv(x), nn.Conv2d._conv_forward(conv, x, conv.weight, conv.bias))


def test_kernel_of_nearest_measured_size(one_thread):
    conv = nn.Conv2d(8, 8, 3, padding=1)
    apply_winograd(conv, {"": [[80 * 80, "nnpack", {}], [40 * 40, "f2x2", {}], [10 * 10, "direct", {}]]})
    with torch.no_grad():
        assert conv.kernel_for(torch.zeros(1, 8, 80, 80)) == "nnpack"
        assert conv.kernel_for(torch.zeros(1, 8, 100, 120)) == "nnpack"  # larger than any measured: the largest's
        assert conv.kernel_for(torch.zeros(1, 8, 60, 60)) == "nnpack"  # nearer 80x80 than 40x40 (log scale)
        assert conv.kernel_for(torch.zeros(1, 8, 50, 50)) == "f2x2"
        assert conv.kernel_for(torch.zeros(1, 8, 15, 15)) == "direct"
        assert conv.kernel_for(torch.zeros(1, 8, 80, 80, dtype=torch.bfloat16)) == "direct"
        torch.set_num_threads(2)  # threads raised after optimising: NNPACK would compete with OpenMP
        assert conv.kernel_for(torch.zeros(1, 8, 80, 80)) == "direct"
        assert conv.kernel_for(torch.zeros(1, 8, 50, 50)) == "f2x2"


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
    for area, chosen, times in measured["shared"]:
        timed = {"direct", "f2x2"} | ({"nnpack"} if torch.get_num_threads() == 1 and nnpack_available() else set())
        assert set(times) == timed and all(ms > 0 for ms in times.values())  # NNPACK only on one thread
        assert chosen == "direct" or times[chosen] == min(times.values()) <= 0.9 * times["direct"]


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


@pytest.mark.parametrize("kernel", WINOGRAD)
@pytest.mark.parametrize("name", ["retinanet_r50_fpn", "detr_r50"])
def test_optimized_resnet_families_with_every_3x3_conv_routed_equal_eager(name, kernel, monkeypatch, one_thread):
    model = resnet_detector(name, (96, 128))
    measure = optimize_module.measure_winograd
    monkeypatch.setattr(optimize_module, "measure_winograd", lambda *args: everywhere(measure(*args, runs=1), kernel))
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
