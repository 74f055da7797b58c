"""scaledet.optimize: folded BatchNorm, channels_last and fast post-processing give eager's detections."""

import dataclasses
import importlib
import json
import time
import warnings

import pytest
import torch
from torch import nn

import scaledet
from benchmarks.reference import spread_random_weights
from scaledet.inference.compare import detection_differences
from scaledet.inference.fold import fold_batchnorm
from scaledet.inference.processor import Processor
from scaledet.models.efficientdet.feature_network import FrozenWeightedSum
from scaledet.models.efficientdet.postprocess import max_over_classes, prefix_nms, top_candidates
from scaledet.models.efficientdet.topologies import GlobalAttentionFusion
from torchvision.ops import FrozenBatchNorm2d, batched_nms


def randomise_efficientdet(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics (so folding matters), spread class logits, moderate box codes."""
    net = model.network
    spread_random_weights(net, net.class_net.predict.pointwise, net.box_net.predict.pointwise, model.image_size)
    return model.eval()


def assert_equal_detections(reference, other, score_tol=1e-4, box_tol=1e-2):
    diff = detection_differences(reference, other, score_tol)
    assert diff["count_diff"] == 0 and diff["unmatched"] == 0, diff
    assert diff["max_score_diff"] <= score_tol and diff["max_box_diff"] <= box_tol, diff
    assert sum(len(d["scores"]) for d in reference) > 0


@pytest.mark.parametrize("name", ["efficientdet_d0", "efficientdet_lite0"])
def test_optimized_efficientdet_equals_eager(name):
    model = randomise_efficientdet(scaledet.create_model(name, num_classes=20, image_size=256))
    fast = scaledet.optimize(model)
    assert fast.folded >= 100  # backbone + BiFPN + unshared heads
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.model.network.modules())
    images = [torch.rand(3, 200, 256), torch.rand(3, 256, 170)]
    with torch.no_grad():
        reference, result = model(images), fast(images)
    assert [len(d["scores"]) for d in result] == [100, 100]
    assert_equal_detections(reference, result)
    assert fast.class_names == model.class_names and fast.config == model.config
    # the original is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.network.modules())


def test_optimized_keeps_attention_fusion():
    """NAS-FPN's global-attention fusion is not a weighted sum: it stays (an earlier optimize turned
    every fusion into a plain sum); the weighted ones are frozen."""
    model = randomise_efficientdet(scaledet.create_model("efficientdet_d0", num_classes=5, image_size=128,
                                                         feature_network="nasfpn"))
    fast = scaledet.optimize(model)
    modules = list(fast.model.modules())
    assert any(isinstance(m, GlobalAttentionFusion) for m in modules)
    assert any(isinstance(m, FrozenWeightedSum) for m in modules)
    images = [torch.rand(3, 128, 100)]
    with torch.no_grad():
        assert_equal_detections(model(images), fast(images))


def test_optimized_bf16_close_to_eager():
    model = randomise_efficientdet(scaledet.create_model("efficientdet_d0", num_classes=20, image_size=256))
    fast = scaledet.optimize(model, precision="bf16")
    images = [torch.rand(3, 256, 256)]
    with torch.no_grad():
        reference, result = model(images), fast(images)
    top = 10  # bf16 reorders near ties; the strongest detections agree
    assert torch.equal(reference[0]["labels"][:top], result[0]["labels"][:top])
    assert (reference[0]["scores"][:top] - result[0]["scores"][:top]).abs().max() < 0.05


def test_optimized_detr_equals_eager():
    model = scaledet.create_model("detr_r50", num_classes=5, image_size=(96, 128), num_queries=20).eval()
    with torch.no_grad():
        for module in model.backbone.modules():  # non-trivial frozen statistics
            if isinstance(module, FrozenBatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.8, 1.2)
    fast = scaledet.optimize(model)
    assert fast.folded == 53  # every ResNet-50 conv has its BN
    images = [torch.rand(3, 90, 120), torch.rand(3, 100, 80)]
    with torch.no_grad():
        reference, result = model(images), fast(images)
    assert_equal_detections(reference, result, score_tol=1e-4, box_tol=1e-2)


def test_fold_batchnorm_skips_shared_convs():
    conv = nn.Conv2d(3, 4, 3)
    net = nn.ModuleDict({"conv": conv, "a": nn.BatchNorm2d(4), "b": nn.BatchNorm2d(4)}).eval()
    x = torch.rand(1, 3, 8, 8)
    assert fold_batchnorm(net, lambda: (net["a"](conv(x)), net["b"](conv(x)))) == 0
    single = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)).eval()
    single[1].running_mean.fill_(0.3)
    single[1].running_var.fill_(2.0)
    expected = single(x)
    assert fold_batchnorm(single, lambda: single(x)) == 1
    assert isinstance(single[1], nn.Identity)
    torch.testing.assert_close(single(x), expected)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(single.train(), lambda: single(x))


def test_pointwise_routing_keeps_outputs_and_keys_on_small_and_large_inputs():
    from scaledet.inference.optimize import ONEDNN_POINTWISE_MIN_NUMEL, OneDnnPointwiseConv2d, route_pointwise_to_onednn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(48, 64, 1), nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 1, stride=2))
    plain = [conv.__class__ for conv in net]
    keys = list(net.state_dict())
    for shape in [(1, 48, 1, 1), (1, 48, 64, 64), (4, 48, 8, 8)]:  # SE vector, a large map, a small batch
        x = torch.rand(shape).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            expected = net(x)
            routed = route_pointwise_to_onednn(net)
            got = net(x)
            for conv, cls in zip(net, plain):
                conv.__class__ = cls
        assert routed == 1  # only the 1x1 stride-1 conv
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    route_pointwise_to_onednn(net)
    assert isinstance(net[0], OneDnnPointwiseConv2d) and type(net[1]) is nn.Conv2d and type(net[2]) is nn.Conv2d
    assert list(net.state_dict()) == keys and net[0].dilation == (1, 1)
    assert 48 * 64 * 64 > ONEDNN_POINTWISE_MIN_NUMEL > 48


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("num_classes", [1, 7, 90])
def test_top_candidates_equal_plain_topk(num_classes, fast):
    """The two-step search (anchors first; with ``fast`` also filtered) gives the plain top-k."""
    logits = torch.randn(2, 3000, num_classes)
    assert torch.equal(max_over_classes(logits), logits.amax(dim=-1))
    values, anchors, labels = top_candidates(logits, 500, fast=fast)
    ref_values, ref_flat = logits.reshape(2, -1).topk(500, dim=1)
    torch.testing.assert_close(values, ref_values, rtol=0, atol=0)
    assert torch.equal(anchors * num_classes + labels, ref_flat)


def test_prefix_nms_equals_full_nms():
    boxes = torch.rand(3000, 2) * 200
    boxes = torch.cat([boxes, boxes + torch.rand(3000, 2) * 60 + 1], dim=1)
    scores = torch.rand(3000).sort(descending=True).values
    labels = torch.randint(0, 3, (3000,))
    for max_det in (5, 100, 3000):
        expected = batched_nms(boxes, scores, labels, 0.5)[:max_det]
        assert torch.equal(prefix_nms(boxes, scores, labels, 0.5, max_det, chunk=50), expected)


def test_optimize_rejects_bad_input():
    model = scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=128).eval()
    with pytest.raises(ValueError, match="precision"):
        scaledet.optimize(model, precision="int4")
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        scaledet.optimize(model, precision="fp16")  # at once, not at the first call
    fast = scaledet.optimize(model)
    with pytest.raises(ValueError, match="inference-only"):
        fast([torch.rand(3, 64, 64)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    with pytest.raises(ValueError, match="inference-only"):
        fast.train()
    with pytest.raises(ValueError, match="0..255"):
        fast([torch.rand(3, 64, 64) * 255])
    with pytest.raises(ValueError, match="scaledet Detector"):
        scaledet.optimize(nn.Linear(2, 2))


@pytest.mark.slow
def test_optimized_compile_equals_eager():
    model = randomise_efficientdet(scaledet.create_model("efficientdet_lite0", num_classes=5, image_size=128))
    fast = scaledet.optimize(model, compile=True)
    images = [torch.rand(3, 128, 100)]
    with torch.no_grad():
        reference, result = model(images), fast(images)
    assert_equal_detections(reference, result, score_tol=1e-4, box_tol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_optimized_on_cuda(precision):
    model = randomise_efficientdet(scaledet.create_model("efficientdet_d0", num_classes=5, image_size=256)).cuda()
    fast = scaledet.optimize(model, precision=precision)
    images = [torch.rand(3, 256, 200, device="cuda")]
    with torch.no_grad():
        reference, result = model(images), fast(images)
    assert result[0]["boxes"].device.type == "cuda"
    top = 10 if precision == "fp32" else 5  # cuDNN may use TF32 even for the fp32 reference
    assert torch.equal(reference[0]["labels"][:top], result[0]["labels"][:top])
    tolerance = 1e-3 if precision == "fp32" else 0.05
    assert (reference[0]["scores"][:top] - result[0]["scores"][:top]).abs().max() < tolerance


def _processor(native_bf16: bool, kind_caps: dict | None = None) -> Processor:
    flags = {"avx2", "avx512f", "avx512_vnni"} | ({"avx512_bf16"} if native_bf16 else set())
    return Processor("Test CPU", frozenset(flags), "AVX512", kind_caps or {})


def test_bf16_without_native_bf16_warns_once_and_falls_back_to_fp32(monkeypatch):
    optimize_module = importlib.import_module("scaledet.inference.optimize")

    monkeypatch.setattr(optimize_module, "current_processor", lambda: _processor(native_bf16=False))
    monkeypatch.setattr(optimize_module, "_warned_emulated_bf16", False)
    model = scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=64).eval()
    with pytest.warns(UserWarning, match="emulated and slower than fp32"):
        assert scaledet.optimize(model, precision="bf16").precision == "fp32"
    cpu = torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert optimize_module.supported_precision("bf16", cpu) == "fp32"
        assert optimize_module.supported_precision("bf16", cpu, force=True) == "bf16"
        monkeypatch.setattr(optimize_module, "current_processor", lambda: _processor(native_bf16=True))
        assert optimize_module.supported_precision("bf16", cpu) == "bf16"


class FakeOptimized:
    """Stands in for OptimizedDetector in choose_precision: fp32 sleeps 20 ms, bf16 returns fp32's
    detections with scores moved by ``bf16_score_shift``."""

    bf16_score_shift = 0.0
    built: list[str] = []
    seen: list[tuple[int, int]] = []  # the image sizes called with

    def __init__(self, model, precision, compile=False):
        self.precision = precision
        FakeOptimized.built.append(precision)

    def __call__(self, images):
        FakeOptimized.seen.extend(tuple(image.shape[-2:]) for image in images)
        if self.precision == "fp32":
            time.sleep(0.02)
        scores = torch.tensor([0.9, 0.5]) + (self.bf16_score_shift if self.precision == "bf16" else 0.0)
        return [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), "scores": scores,
                 "labels": torch.tensor([0, 1])}]


def test_auto_precision_key_and_disk_cache(monkeypatch, tmp_path):
    optimize_module = importlib.import_module("scaledet.inference.optimize")
    monkeypatch.setenv("SCALEDET_CACHE", str(tmp_path))
    monkeypatch.delenv("SCALEDET_OPTIMIZE_CACHE", raising=False)
    monkeypatch.setattr(optimize_module, "OptimizedDetector", FakeOptimized)
    model = scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=64).eval()
    cpu = torch.device("cpu")
    monkeypatch.setattr(optimize_module, "current_processor", lambda: _processor(native_bf16=False))
    assert optimize_module.native_precisions(cpu) == ["fp32"]
    assert optimize_module.choose_precision(model) == "fp32"  # nothing to measure, nothing cached
    assert FakeOptimized.built == [] and not list(tmp_path.rglob("*.json"))
    key_avx512 = optimize_module.precision_cache_key(model, cpu, compile=False)
    monkeypatch.setattr(optimize_module, "current_processor", lambda: _processor(native_bf16=True))
    key = optimize_module.precision_cache_key(model, cpu, compile=False)
    assert key != key_avx512 and key["processor"]["kind"] == "avx512-bf16-vnni"
    # another generation with the same flags (an AMD family 25 and a family 26 EPYC) measures its own choice
    next_generation = dataclasses.replace(_processor(native_bf16=True), generation="family 26 model 2")
    with monkeypatch.context() as patched:
        patched.setattr(optimize_module, "current_processor", lambda: next_generation)
        assert optimize_module.precision_cache_key(model, cpu, compile=False) != key
    other_size = scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=96)
    assert optimize_module.precision_cache_key(other_size, cpu, False)["input_size"] == [96, 96]
    assert optimize_module.precision_cache_key(model, cpu, True) != key
    assert optimize_module.choose_precision(model, runs=2) == "bf16"  # faster, within tolerance
    files = list((tmp_path / "optimize").glob("precision-*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["precision"] == "bf16" and record["key"] == json.loads(json.dumps(key))
    assert record["measured"]["fp32"]["median_ms"] > record["measured"]["bf16"]["median_ms"]
    # the cached choice is used without measuring
    FakeOptimized.built.clear()
    record["precision"] = "fp32"
    files[0].write_text(json.dumps(record))
    assert optimize_module.choose_precision(model) == "fp32" and FakeOptimized.built == []
    # cache off: measured again (bf16 now outside the score tolerance), nothing written
    monkeypatch.setenv("SCALEDET_OPTIMIZE_CACHE", "0")
    monkeypatch.setattr(FakeOptimized, "bf16_score_shift", 2 * optimize_module.AUTO_SCORE_TOL)
    files[0].unlink()
    assert optimize_module.choose_precision(model, runs=1) == "fp32" and not files[0].exists()
    assert FakeOptimized.built == ["fp32", "bf16"]


def test_auto_choices_are_judged_per_weights_and_on_the_given_images(monkeypatch, tmp_path):
    """Whether bf16's detections agree with fp32's depends on the weights: a choice made for random weights
    must not be reused for trained ones of the same config; images given are what the choice judges."""
    optimize_module = importlib.import_module("scaledet.inference.optimize")
    monkeypatch.setenv("SCALEDET_CACHE", str(tmp_path))
    monkeypatch.delenv("SCALEDET_OPTIMIZE_CACHE", raising=False)
    monkeypatch.setattr(optimize_module, "OptimizedDetector", FakeOptimized)
    monkeypatch.setattr(optimize_module, "current_processor", lambda: _processor(native_bf16=True))
    model = scaledet.create_model("efficientdet_lite0", num_classes=3, image_size=64).eval()
    cpu = torch.device("cpu")
    key = optimize_module.precision_cache_key(model, cpu, compile=False)
    assert key["images"] == "noise" and len(key["weights"]) == 8
    winograd_keys = []
    with monkeypatch.context() as patched:  # the key the kernel timings are cached under, without measuring
        patched.setattr(optimize_module, "_cached_choice", lambda key, choice, use: winograd_keys.append(key) or {})
        optimize_module.winograd_choices(model)
        with torch.no_grad():
            next(model.parameters()).add_(0.5)  # "trained": the same config, other weights
        optimize_module.winograd_choices(model)
    assert winograd_keys[0] == winograd_keys[1] and "weights" not in winograd_keys[0]  # timings: any weights
    assert optimize_module.precision_cache_key(model, cpu, compile=False)["weights"] != key["weights"]
    images = [torch.rand(3, 40, 56), torch.rand(3, 32, 32)]
    with_images = optimize_module.precision_cache_key(model, cpu, False, images)
    assert with_images["images"] != "noise" and with_images != optimize_module.precision_cache_key(model, cpu, False)
    FakeOptimized.seen.clear()
    assert optimize_module.choose_precision(model, runs=1, images=images) == "bf16"
    assert set(FakeOptimized.seen) == {(40, 56), (32, 32)}  # timed on the first, agreement judged on both
    (record,) = [json.loads(path.read_text()) for path in (tmp_path / "optimize").glob("precision-*.json")]
    assert record["key"]["images"] == with_images["images"]
    with pytest.raises(ValueError, match="calibration images are for precision='int8' or 'auto'"):
        scaledet.optimize(model, precision="fp32", calibration=images)
