"""The Detector contract on a CUDA device; every test here is skipped on a machine without one.

For each registered model (the reduced sizes of tests/test_contract.py): detections on the GPU equal
the CPU's (TF32 off, so both run true fp32), and a mixed-precision training step (fp16 autocast +
GradScaler, what ``--amp`` does on CUDA) gives finite losses and a finite gradient on every trainable
parameter. Then ``scaledet train --device cuda --amp`` end to end for one EfficientDet and one DETR:
it trains, writes weights that reload, and evaluates. CI machines have no GPU; these run where a
session is lent one (docs/inference.md, "GPU").
"""

from __future__ import annotations

import json

import pytest
import torch

import scaledet
from scaledet.cli import main
from scaledet.data import write_shapes_coco

from tests.test_contract import NUM_CLASSES, TARGETS, build, check_detections, check_same, images, small_options
from tests.test_train_cli import TINY_EFFICIENTDET

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


@pytest.mark.parametrize("name", scaledet.list_models())
def test_cuda_detections_equal_cpu(name, true_fp32):
    model = build(name, small_options(name))
    inputs = images()
    with torch.no_grad():
        cpu = model(inputs)
        gpu = model.cuda()(on("cuda", inputs))
    assert all(d[key].device.type == "cuda" for d in gpu for key in d)
    check_detections(on("cpu", gpu), inputs, NUM_CLASSES)
    check_same(cpu, on("cpu", gpu), "cuda vs cpu", score_tol=1e-3, box_tol=0.05)


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
    options = dict(num_images=8, image_size=64, max_objects=2)
    train_json = write_shapes_coco(tmp_path / "train", "train", **options)
    val_json = write_shapes_coco(tmp_path / "val", "val", **options)
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"model": model_name, "image_size": image_size, "model_overrides": overrides}))
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
