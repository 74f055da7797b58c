"""The Detector contract on a CUDA device; every test here is skipped on a machine without one.

For each registered model (the reduced sizes of tests/test_contract.py): the raw network outputs on
the GPU equal the CPU's (TF32 off, so both run true fp32) and so do the detections, and a
mixed-precision training step (fp16 autocast + GradScaler, what ``--amp`` does on CUDA) gives finite
losses and a finite gradient on every trainable parameter. Then ``scaledet train --device cuda
--amp`` end to end for one EfficientDet and one DETR: it trains, writes weights that reload, and
evaluates. CI machines have no GPU; these run where a session is lent one (docs/inference.md, "GPU").
"""

from __future__ import annotations

import json

import pytest
import torch

import scaledet
from scaledet.cli import main
from scaledet.inference.compare import compare_detection_sets

from tests.test_contract import NUM_CLASSES, TARGETS, build, check_detections, images, small_options
from tests.test_train_cli import TINY_EFFICIENTDET, write_tiny_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def true_fp32():
    """cuDNN convolutions and matmuls without TF32 (10-bit mantissa), restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def on(device: str, items: list) -> list:
    """Tensors, or dicts of tensors, moved to ``device``."""
    return [{k: v.to(device) for k, v in item.items()} if isinstance(item, dict) else item.to(device)
            for item in items]


def tensors_of(outputs) -> list[torch.Tensor]:
    """Every tensor of a family's raw outputs (tensors, or tuples / lists / dicts of them), in a fixed order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for key in sorted(outputs) for t in tensors_of(outputs[key])]
    if isinstance(outputs, (list, tuple)):
        return [t for item in outputs for t in tensors_of(item)]
    return []


@pytest.mark.parametrize("name", scaledet.list_models())
def test_cuda_detections_equal_cpu(name, true_fp32):
    """The network's raw outputs on the GPU equal the CPU's to fp32 rounding, element by element;
    then the detections agree as sets. Random weights can saturate (a deep ResNet's scores all 1.0,
    boxes clipped) and which of exactly tied candidates top-k / NMS keeps is the device's choice, so
    the set comparison allows any number of ties: a post-processing error would move boxes or
    scores that are not tied (unexplained), and the raw outputs it starts from are proven equal above."""
    model = build(name, small_options(name))
    with torch.no_grad():
        cpu_batch = model.preprocess(images())
        cpu_raw = model.forward_features(*cpu_batch.inputs)
        cpu = model.postprocess(cpu_raw, cpu_batch)
        model.cuda()
        gpu_batch = model.preprocess(on("cuda", images()))
        gpu_raw = model.forward_features(*gpu_batch.inputs)
        gpu = model(on("cuda", images()))
    for index, (expected, got) in enumerate(zip(tensors_of(cpu_raw), tensors_of(gpu_raw), strict=True)):
        assert got.device.type == "cuda"
        scale = float(expected.abs().max()) if expected.is_floating_point() and expected.numel() else 1.0
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-3, atol=1e-4 * max(scale, 1.0),
                                   msg=lambda text: f"raw output {index}: {text}")
    assert all(d[key].device.type == "cuda" for d in gpu for key in d)
    check_detections(on("cpu", gpu), images(), NUM_CLASSES)
    comparison = compare_detection_sets(cpu, on("cpu", gpu), score_tol=1e-3, box_tol=0.05, max_tied_fraction=1.0)
    assert comparison.passed, f"cuda vs cpu: {comparison.summary()}"


@pytest.mark.parametrize("name", scaledet.list_models())
def test_cuda_mixed_precision_training_step(name):
    """As ``--amp`` trains on CUDA: fp16 autocast, GradScaler. The first loss scales (65536, then
    halved) may overflow the fp16 gradients; within a few halvings they must all be finite."""
    model = build(name, small_options(name)).cuda().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(16):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            losses = model(on("cuda", images()), on("cuda", TARGETS))
        assert all(torch.isfinite(v).all() for v in losses.values()), losses
        scaler.scale(losses["loss"]).backward()
        scaler.unscale_(optimizer)
        if all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
            break
        scaler.update()  # overflow: halve the scale and try again
    else:
        pytest.fail(f"fp16 gradients still overflow at loss scale {scaler.get_scale()}")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]} ({len(missing)} parameters)"


@pytest.mark.parametrize("model_name, overrides, image_size", [
    ("efficientdet_d0", TINY_EFFICIENTDET, 64),
    ("detr_r50", {"backbone": "resnet18", "hidden_dim": 32, "num_heads": 2, "ffn_dim": 64, "enc_layers": 1,
                  "dec_layers": 2, "num_queries": 12}, 64),
])
def test_train_command_on_cuda_with_amp(model_name, overrides, image_size, tmp_path, capsys):
    config, train_json, val_json = write_tiny_run(tmp_path, {"model": model_name, "image_size": image_size,
                                                             "model_overrides": overrides})
    out = tmp_path / "run"
    code = main(["train", "--config", str(config), "--train", str(train_json), "--val", str(val_json),
                 "--batch-size", "4", "--epochs", "2", "--device", "cuda", "--amp", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    assert "Average Precision" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0.0 <= metrics["AP"] <= 1.0
    state = torch.load(out / "last.pt", weights_only=True, map_location="cpu")
    weights = state["ema"] or state["model"]  # DETR's recipe keeps no EMA
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    model = scaledet.create_model(model_name, pretrained=out / "weights.safetensors").eval()
    with torch.no_grad():
        check_detections(model(images()), images(), model.num_classes)
